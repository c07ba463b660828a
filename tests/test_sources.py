"""inference.sources: every kind of argument predict.py takes, expanded into images in order."""
import cv2
import numpy as np
from PIL import Image

from inference.sources import Input, iter_inputs, record


def write_video(path, frames: int = 7, size=(64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 30 * i, np.uint8))
    writer.release()


def test_folders_globs_files_and_failures_in_order(tmp_path):
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    for name, colour in (("b.png", (0, 0, 255)), ("a.jpg", (255, 0, 0)), ("sub/c.bmp", (0, 255, 0))):
        Image.new("RGB", (20, 10), colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    items = list(iter_inputs([str(folder), str(folder / "*.png"), str(tmp_path / "missing.jpg"),
                              str(tmp_path / "empty"), str(tmp_path / "none*.jpg"), "ftp://example.invalid/x.jpg"]))
    assert [i.name for i in items[:4]] == [str(folder / "a.jpg"), str(folder / "b.png"), str(folder / "sub/c.bmp"),
                                          str(folder / "b.png")]
    assert all(i.error is None and i.image.shape == (10, 20, 3) for i in items[:4])
    assert items[0].image[0, 0].tolist()[0] > 200  # RGB order: a.jpg is red
    errors = [i.error for i in items[4:]]
    assert errors == [f"{tmp_path / 'missing.jpg'}: no such file or folder",
                      f"{tmp_path / 'empty'}: no images in this folder",
                      f"{tmp_path / 'none*.jpg'}: no file matches this pattern",
                      "ftp://example.invalid/x.jpg: only http and https URLs are fetched"]


def test_video_frames_with_stride_and_limit(tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video)
    frames = list(iter_inputs([str(video)], frame_stride=3))
    assert [f.frame for f in frames] == [0, 3, 6] and frames[0].image.shape == (48, 64, 3)
    assert [f.frame for f in iter_inputs([str(video)], frame_stride=2, max_frames=2)] == [0, 2]


def test_record_is_the_documented_json_object():
    item = Input("photo.jpg", image=np.zeros((10, 20, 3), np.uint8))
    assert record(item, [], 12.345) == {"input": "photo.jpg", "frame": None, "faces": [], "error": None,
                                        "ms": 12.35, "size": [20, 10]}
    assert "size" not in record(Input("x", error="x: broken"), [], 1.0)


def test_recursive_globs_do_not_follow_links_to_folders(tmp_path, monkeypatch):
    """Two links to a parent folder made glob.glob's ** run without end; one made each image
    come out many times. Each image now comes once, through its real folder."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a.png")
    Image.new("RGB", (8, 8)).save(root / "sub" / "b.png")
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    (root / "sub" / "up2").symlink_to(root, target_is_directory=True)
    names = [item.name for item in iter_inputs([str(root / "**" / "*.png")])]
    assert names == [str(root / "a.png"), str(root / "sub" / "b.png")]
    monkeypatch.chdir(tmp_path)
    assert [item.name for item in iter_inputs(["photos/**/*.png"])] == ["photos/a.png", "photos/sub/b.png"]
    assert [item.name for item in iter_inputs([str(root)])] == [str(root / "a.png"), str(root / "sub" / "b.png")]


def test_empty_input_and_impossible_webcam_are_one_error_each(tmp_path, monkeypatch):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)  # an empty argument used to mean every image under here
    items = list(iter_inputs(["", "  ", "99999999999999999999", "a.png"]))
    assert [i.error is None for i in items] == [False, False, False, True]
    assert "an empty input" in items[0].error and "no such webcam" in items[2].error
    assert items[3].image is not None  # the other inputs still run

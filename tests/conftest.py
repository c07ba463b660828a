"""The tests' fixtures: tiny ImageFolder datasets built in tmp_path, serve.py's model, the
inference tests' model, photos and web server, and the process state every test starts from.

Helpers that are not fixtures live in tests/helpers.py.
"""
import http.server
import logging
import os
import random
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ASTRONAUT, local_http_server, make_checkpoint, make_image_folder, tiny_model

# Two cores: keep torch from oversubscribing them while tests run.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _logger_levels() -> dict:
    return {name: logger.level for name, logger in logging.Logger.manager.loggerDict.items()
            if isinstance(logger, logging.Logger)}


def _foreign_handlers(logger: logging.Logger, before) -> list:
    """Handlers the test added (pytest's own capture handlers come and go by themselves)."""
    return [h for h in logger.handlers if h not in before and not type(h).__module__.startswith("_pytest")]


@pytest.fixture(autouse=True)
def process_state(monkeypatch):
    """Every test starts from, and leaves, the same process: torch's thread count, Python's,
    NumPy's and torch's random state, deterministic-algorithm mode, and logging (the root
    logger's level and handlers, every named logger's level). In-process train.py and test.py
    runs keep glibc's allocator as it is: `setup_backend` tunes it for the whole process
    (utils.misc.keep_freed_memory; tests/test_misc.py measures it in subprocesses)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    root = logging.getLogger()
    root_level, root_handlers, levels = root.level, list(root.handlers), _logger_levels()
    monkeypatch.setattr("utils.misc.keep_freed_memory", lambda: False)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])
    for handler in _foreign_handlers(root, root_handlers):
        root.removeHandler(handler)
    root.setLevel(root_level)
    for name, logger in logging.Logger.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))
            for handler in _foreign_handlers(logger, []):
                logger.removeHandler(handler)


@pytest.fixture
def tiny_data(tmp_path):
    return make_image_folder(tmp_path / "tiny", ["angry", "happy", "sad"], splits=("train", "val", "test"))


@pytest.fixture(scope="session")
def served_model(tmp_path_factory):
    """(tiny_model's file, an ONNX cache folder holding its export): made once for the server's tests."""
    from inference.export import cached_onnx

    folder = tmp_path_factory.mktemp("served")
    checkpoint = tiny_model(folder / "tiny.safetensors")
    cached_onnx(checkpoint, folder / "cache")
    return checkpoint, folder / "cache"


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
    from inference.recognizer import EmotionRecognizer

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

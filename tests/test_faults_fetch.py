"""Hostile servers: every download fails within its limit, with one line that says why.

A local http.server on 127.0.0.1 drips, stalls, lies about its Content-Length, redirects in a
loop or sends a gzip bomb; nothing here touches the network.
"""
import http.server
import io
import socket
import time
import zlib

import pytest
from PIL import Image

import predict
from common.errors import UserError, run_cli
from helpers import local_http_server, tiny_model
from inference.fetch import FetchLimits, fetch, fetch_image

LIMITS = FetchLimits(connect_timeout=1, read_timeout=0.5, total_timeout=1.5, max_bytes=1024 * 1024, max_redirects=3)
SLACK = 1.0  # seconds allowed past a limit on two busy cores


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def _gzip_bomb(megabytes: int) -> bytes:
    """A gzip stream of `megabytes` MiB of zeros (about a thousandth of that on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(megabytes)) + packer.flush()


class _Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    image = b""
    bomb = b""

    def log_message(self, *args):
        pass

    def _head(self, length=None, extra=()):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def _drip(self, data: bytes, pause: float, seconds: float) -> None:
        end = time.monotonic() + seconds
        for byte in data:
            if time.monotonic() > end:
                break
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(pause)

    def do_GET(self):
        try:
            if self.path == "/drip.jpg":  # a whole image, one byte every 50 ms: each read is quick
                self._head(len(self.image))
                self._drip(self.image, 0.05, 8)
            elif self.path == "/drip-headers.jpg":  # even the headers come a byte at a time
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self._drip(b"X-Padding: " + b"a" * 4000 + b"\r\n", 0.05, 8)
            elif self.path == "/stall.jpg":  # headers, then silence
                self._head(len(self.image))
                self.wfile.flush()
                time.sleep(5)
            elif self.path == "/silent.jpg":  # not even headers
                time.sleep(5)
            elif self.path == "/lie-long.jpg":  # announces more than it sends, then hangs up
                self._head(100_000)
                self.wfile.write(self.image[:100])
                self.close_connection = True
            elif self.path == "/lie-short.jpg":  # announces less than the image: it arrives cut
                self._head(100)
                self.wfile.write(self.image)
                self.close_connection = True
            elif self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/bomb.jpg":
                self._head(len(self.bomb), [("Content-Encoding", "gzip")])
                self.wfile.write(self.bomb)
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first, as it should
            pass


@pytest.fixture(scope="module")
def server():
    _Hostile.image = _jpeg()
    _Hostile.bomb = _gzip_bomb(64)
    with local_http_server(_Hostile) as url:
        yield url


@pytest.mark.parametrize("path, message, limit", [
    ("/drip.jpg", "the download took over 1.5 s and was stopped", LIMITS.total_timeout),
    ("/drip-headers.jpg", "the download took over 1.5 s and was stopped", LIMITS.total_timeout),
    ("/stall.jpg", "no answer within 0.5 s", LIMITS.read_timeout),
    ("/silent.jpg", "no answer within 0.5 s", LIMITS.read_timeout),
    ("/lie-long.jpg", "the server broke off the download", LIMITS.read_timeout),
    ("/lie-short.jpg", "not a readable image", LIMITS.read_timeout),
    ("/loop", "more than 3 redirects", LIMITS.read_timeout),
    ("/bomb.jpg", "passed the limit of 1.0 MB", LIMITS.read_timeout),
])
def test_hostile_server_fails_within_its_limit(server, path, message, limit):
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        fetch_image(server + path, LIMITS)
    assert time.monotonic() - start < limit + SLACK
    text = str(err.value)
    assert message in text and text.startswith(server + path) and "\n" not in text


def test_the_deadline_holds_whatever_the_read_timeout(server):
    """The issue's case: a read time-out longer than the whole limit does not stretch it."""
    limits = FetchLimits(connect_timeout=1, read_timeout=30, total_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(UserError, match="took over 1 s"):
        fetch(server + "/drip.jpg", limits)
    assert time.monotonic() - start < 1.0 + SLACK


def test_unreachable_port_is_one_line():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match="cannot connect") as err:
        fetch(f"http://127.0.0.1:{port}/x.jpg", LIMITS)
    assert "\n" not in str(err.value)


def test_predict_cli_stops_a_dripping_server(server, tmp_path, capsys):
    """predict.py --download-timeout bounds the download; the input fails, exit code 1."""
    args = predict.get_args_parser().parse_args(
        ["--params", server + "/drip.jpg", "--timeout", "3", "--download-timeout", "1", "--backend", "torch",
         "--detector", "none", "--threads", "1", "--checkpoint", str(tiny_model(tmp_path / "model.safetensors"))])
    start = time.monotonic()
    with pytest.raises(SystemExit) as stop:
        raise SystemExit(run_cli(predict.main, args))
    err = capsys.readouterr().err
    assert stop.value.code == 1 and time.monotonic() - start < 1.0 + 3  # model loading included
    assert err.strip().splitlines() == [f"error: {server}/drip.jpg: the download took over 1 s and was stopped"]

"""serve.py's API (inference/server.py) through FastAPI's test client, and serve.py itself in a process.

Every refusal has its status code and a one-sentence {"error": ...}; answers equal `predict.py
--json`'s on the same photo. A local http.server on 127.0.0.1 stands in for the web (the
private-address refusal is exactly what is checked; the other URL tests lift it): nothing here
touches the network.
"""
import hashlib
import http.server
import io
import json
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

import predict
import serve
from common.errors import UserError
from helpers import ROOT, check_record, local_http_server
from inference.fetch import FetchLimits
from inference.recognizer import EmotionRecognizer

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402  (after the skip: only with fastapi installed)

from inference.server import InferencePool, ServeOptions, create_app, serve_process  # noqa: E402

ASTRONAUT = ROOT / "Data" / "samples" / "astronaut.jpg"
LIMITS = dict(connect_timeout=1, read_timeout=0.5, total_timeout=1.5, max_bytes=1024 * 1024)
SLACK = 1.0  # seconds allowed past a limit on two busy cores


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, with almost no data: the cheapest bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def encoded(image: Image.Image, kind: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


class _Web(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Web.hits.append(self.path)
        try:
            if self.path == "/astronaut.jpg":
                body = ASTRONAUT.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/stall.jpg":  # headers, then silence
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.flush()
                time.sleep(4)
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def web():
    with local_http_server(_Web) as url:
        yield url


@pytest.fixture(scope="module")
def recognizer(served_model):
    checkpoint, cache = served_model
    return EmotionRecognizer(checkpoint, cache_dir=cache, threads=1, max_pixels=2_000_000)


def options(**changes) -> ServeOptions:
    fields = dict(limits=FetchLimits(allow_private=False, **LIMITS), max_pixels=2_000_000, workers=1, queue=4)
    fields.update(changes)
    return ServeOptions(**fields)


@pytest.fixture(scope="module")
def client(recognizer):
    with TestClient(create_app(recognizer, options())) as c:
        yield c


@pytest.fixture(scope="module")
def open_client(recognizer):
    """The same app, allowed to fetch from 127.0.0.1 (for the URL tests with a local server)."""
    with TestClient(create_app(recognizer, options(limits=FetchLimits(allow_private=True, **LIMITS)))) as c:
        yield c


def refused(response, status: int, words: str) -> str:
    """The error sentence of a refusal, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and words in body["error"], body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


# ---- answers --------------------------------------------------------------------------------------

def test_health_and_model(client, served_model):
    assert client.get("/health").json()["status"] == "ok"
    model = client.get("/model").json()
    assert model["classes"] == ["angry", "happy", "sad"] and model["img_size"] == 32 and model["grayscale"] is True
    assert model["sha256"] == hashlib.sha256(served_model[0].read_bytes()).hexdigest()
    assert model["limits"]["max_bytes"] == LIMITS["max_bytes"]


def test_live_sessions_follow_faces_and_smooth_them(recognizer):
    """?session=: the page's webcam. Faces keep their track across a session's frames, the
    probabilities are the moving average predict.py keeps for a video, sessions are independent
    and bounded, and a malformed id is refused."""
    import math

    bright = ASTRONAUT.read_bytes()
    dark = encoded(Image.fromarray((np.asarray(Image.open(ASTRONAUT).convert("RGB")) * 0.5).astype(np.uint8)), "JPEG")
    jpeg = {"Content-Type": "image/jpeg"}
    app = create_app(recognizer, options(smooth=0.5, sessions=2))
    with TestClient(app) as c:
        model = c.get("/model").json()
        assert model["sessions"]["smooth_s"] == 0.5 and len(model["palette"]) >= 6
        assert set(model["colours"]) == {"angry", "happy", "sad"} and model["colours"]["happy"].startswith("#")
        first = c.post("/predict?session=webcam-0001", content=bright, headers=jpeg).json()
        time.sleep(0.2)
        second = c.post("/predict?session=webcam-0001", content=dark, headers=jpeg).json()
        a, b = first["faces"][0], second["faces"][0]
        assert a["track"] == b["track"] == 1 and 0 <= first["time"] < second["time"]
        assert a["smoothed"] == a["probabilities"]  # a track's first frame is its own average
        alpha = 1 - math.exp(-(second["time"] - first["time"]) / 0.5)
        for k in a["probabilities"]:
            expected = a["probabilities"][k] + alpha * (b["probabilities"][k] - a["probabilities"][k])
            assert b["smoothed"][k] == pytest.approx(expected, abs=2e-3)  # times are rounded to 0.1 ms
        assert b["smoothed_emotion"] == max(b["smoothed"], key=b["smoothed"].get)
        plain = c.post("/predict", content=bright, headers=jpeg).json()
        assert "track" not in plain["faces"][0] and "time" not in plain
        assert c.post("/predict?session=webcam-0002", content=bright, headers=jpeg).json()["faces"][0]["track"] == 1
        c.post("/predict?session=webcam-0003", content=bright, headers=jpeg)
        assert list(app.state.sessions.live) == ["webcam-0002", "webcam-0003"]  # at most 2: the oldest went
        for bad in ("short", "x" * 65, "a/b/../../c", "space in it"):
            refused(c.post("/predict", params={"session": bad}, content=bright, headers=jpeg), 422, "session")


def test_a_session_takes_one_frame_at_a_time(recognizer):
    from inference.server import ApiError, Sessions
    sessions = Sessions(recognizer, options())
    image = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    faces, t = sessions.step("webcam-0001", image)
    assert faces[0].track == 1 and t >= 0
    sessions.live["webcam-0001"][3].acquire()  # as if a frame were running
    with pytest.raises(ApiError) as err:
        sessions.step("webcam-0001", image)
    assert err.value.status == 409
    sessions.live["webcam-0001"][3].release()
    assert sessions.step("webcam-0001", image)[0][0].track == 1


def test_upload_raw_and_url_equal_predict_cli(client, open_client, web, served_model, capsys):
    checkpoint, cache = served_model
    code = predict.main(predict.get_args_parser().parse_args(
        ["--params", str(ASTRONAUT), "--json", "--threads", "1", "--checkpoint", str(checkpoint),
         "--cache-dir", str(cache)]))
    cli = json.loads(capsys.readouterr().out)
    assert code == 0 and len(cli["faces"]) == 1
    data = ASTRONAUT.read_bytes()
    answers = {
        "astronaut.jpg": client.post("/predict", files={"file": ("astronaut.jpg", data, "image/jpeg")}),
        "upload": client.post("/predict", content=data, headers={"Content-Type": "image/jpeg"}),
        web + "/astronaut.jpg": open_client.post("/predict", json={"url": web + "/astronaut.jpg"}),
    }
    for name, response in answers.items():
        assert response.status_code == 200, response.text
        answer = response.json()
        check_record(answer, classes=["angry", "happy", "sad"])
        assert answer["input"] == name and answer["frame"] is None and answer["error"] is None
        assert {k: v for k, v in answer.items() if k not in ("input", "ms")} == \
            {k: v for k, v in cli.items() if k not in ("input", "ms")}


def test_photo_without_face(client):
    ramp = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))
    answer = client.post("/predict", content=encoded(Image.fromarray(ramp)), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200 and answer.json()["faces"] == [] and answer.json()["size"] == [160, 120]


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere: works offline
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "image/*", "application/json"}
    assert {"413", "415", "422", "503", "504"} <= set(spec["paths"]["/predict"]["post"]["responses"])


# ---- refusals -------------------------------------------------------------------------------------

def test_413_declared_upload_is_refused_before_reading(client):
    refused(client.post("/predict", content=b"\0" * (LIMITS["max_bytes"] + 1), headers={"Content-Type": "image/jpeg"}),
            413, "over the limit of 1.0 MB")
    refused(client.post("/predict", files={"file": ("big.jpg", b"\0" * (2 * LIMITS["max_bytes"]), "image/jpeg")}),
            413, "over the limit of 1.0 MB")


@pytest.mark.parametrize("body, kind, status, words", [
    (b"just some text", "image/jpeg", 415, "not an image"),
    (b"<html><body>a page</body></html>", "image/png", 415, "not an image"),
    (b"", "image/jpeg", 422, "empty"),
    (b"hello", "text/plain", 415, "Content-Type text/plain"),
    (b"hello", "", 415, "Content-Type missing"),
])
def test_415_and_422_not_an_image(client, body, kind, status, words):
    refused(client.post("/predict", content=body, headers={"Content-Type": kind} if kind else {}), status, words)


def test_422_truncated_image(client):
    data = ASTRONAUT.read_bytes()
    refused(client.post("/predict", files={"file": ("cut.jpg", data[: len(data) // 3], "image/jpeg")}),
            422, "cut.jpg: not a readable image")


def test_422_decompression_bombs_are_refused_by_the_pixel_limit(client):
    refused(client.post("/predict", content=png_header(50_000, 50_000), headers={"Content-Type": "image/png"}),
            422, "over the limit of 2,000,000 pixels")  # PIL's own bomb check, reworded
    refused(client.post("/predict", content=png_header(5000, 5000), headers={"Content-Type": "image/png"}),
            422, "5000x5000 pixels is over the limit of 2,000,000")
    bomb = encoded(Image.new("L", (3000, 3000)), optimize=True)  # 9 M pixels in a few kilobytes
    assert len(bomb) < 20_000
    refused(client.post("/predict", content=bomb, headers={"Content-Type": "image/png"}), 422, "over the limit")


@pytest.mark.parametrize("url, words", [
    ("file:///etc/passwd", "only http and https"),
    ("ftp://127.0.0.1/a.jpg", "only http and https"),
    ("http://127.0.0.1:9/a.jpg", "loopback"),
    ("http://localhost:9/a.jpg", "localhost is at 127.0.0.1, which is a loopback address"),
    ("http://[::1]:9/a.jpg", "loopback"),
    ("http://10.1.2.3/a.jpg", "private"),
    ("http://192.168.0.1/a.jpg", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://0.0.0.0:9/a.jpg", "unspecified"),
])
def test_400_urls_that_are_not_fetched(client, url, words):
    start = time.monotonic()
    refused(client.post("/predict", json={"url": url}), 400, words)
    assert time.monotonic() - start < 1  # refused before any connection


def test_400_a_connection_that_reaches_a_private_address(client, web, monkeypatch):
    """As after a redirect, or a name that resolves to another address when connecting: the
    connection itself is checked where it went, and nothing is asked of the local server."""
    import inference.fetch

    monkeypatch.setattr(inference.fetch, "check_public_host", lambda url: None)
    _Web.hits.clear()
    refused(client.post("/predict", json={"url": web + "/astronaut.jpg"}), 400, "127.0.0.1 is a loopback address")
    assert _Web.hits == []


@pytest.mark.parametrize("payload, words", [
    (b"{not json", "not valid JSON"),
    (b'{"link": "http://a/b.jpg"}', "needs a \"url\" string"),
    (b'["http://a/b.jpg"]', "needs a \"url\" string"),
])
def test_400_bad_json(client, payload, words):
    refused(client.post("/predict", content=payload, headers={"Content-Type": "application/json"}), 400, words)


def test_400_form_without_file(client):
    refused(client.post("/predict", data={"name": "x"}, files={"other": (None, "no file here")}), 400, "no file")


def test_504_slow_url_and_502_failing_one(open_client, web):
    start = time.monotonic()
    refused(open_client.post("/predict", json={"url": web + "/stall.jpg"}), 504, "no answer within 0.5 s")
    assert time.monotonic() - start < LIMITS["total_timeout"] + SLACK
    refused(open_client.post("/predict", json={"url": web + "/missing.jpg"}), 502, "HTTP 404")


def test_404_and_405_are_json(client):
    refused(client.get("/nowhere"), 404, "Not Found")
    refused(client.get("/predict"), 405, "Method Not Allowed")


# ---- concurrency ----------------------------------------------------------------------------------

class Held:
    """A recognizer whose predict waits until released, and records the thread it ran on."""

    def __init__(self, inner):
        self.inner, self.release, self.threads = inner, threading.Event(), []
        self.started = threading.Semaphore(0)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, image):
        self.threads.append(threading.current_thread().name)
        self.started.release()
        self.release.wait(10)
        return self.inner.predict(image)


def test_503_when_the_queue_is_full_and_the_model_runs_off_the_event_loop(recognizer):
    held = Held(recognizer)
    data = ASTRONAUT.read_bytes()
    with TestClient(create_app(held, options(workers=1, queue=1))) as c:
        post = lambda: c.post("/predict", content=data, headers={"Content-Type": "image/jpeg"})  # noqa: E731
        results = []
        first = threading.Thread(target=lambda: results.append(post()))
        first.start()
        assert held.started.acquire(timeout=10)  # the worker is busy
        second = threading.Thread(target=lambda: results.append(post()))
        second.start()
        deadline = time.monotonic() + 10
        while c.get("/health").json()["active"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the second waits in the queue
        busy = post()
        refused(busy, 503, "the server is busy")
        assert busy.headers["Retry-After"] == "1"
        held.release.set()
        first.join(10)
        second.join(10)
        assert [r.status_code for r in results] == [200, 200]
        assert c.get("/health").json()["active"] == 0
    assert held.threads and all(name.startswith("recognise") for name in held.threads)


def test_pool_releases_a_cancelled_waiter():
    import asyncio

    async def scenario():
        pool = InferencePool(workers=1, queue=1)
        gate = threading.Event()
        running = asyncio.ensure_future(pool.run(gate.wait, 5))
        waiting = asyncio.ensure_future(pool.run(time.sleep, 0))
        await asyncio.sleep(0.05)
        assert pool.active == 2
        waiting.cancel()  # its client went away before a worker took it
        await asyncio.sleep(0.05)
        assert pool.active == 1
        gate.set()
        await running
        await asyncio.sleep(0.05)
        assert pool.active == 0
        pool.close()

    asyncio.run(scenario())


# ---- serve.py ---------------------------------------------------------------------------------------

def test_serve_script_answers_over_http(served_model, tmp_path):
    checkpoint, cache = served_model
    with serve_process("--checkpoint", str(checkpoint), "--cache-dir", str(cache), "--workers", "2",
                       "--max-download-mb", "1", log=tmp_path / "serve.log") as (url, proc):
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url + "health", timeout=5).json()["status"] == "ok"
        with open(ASTRONAUT, "rb") as f:
            answer = requests.post(url + "predict", files={"file": f}, timeout=30).json()
        assert len(answer["faces"]) == 1
        too_big = requests.post(url + "predict", data=b"\0" * (3 << 20), headers={"Content-Type": "image/jpeg"},
                                timeout=10)
        assert too_big.status_code == 413 and "over the limit of 1.0 MB" in too_big.json()["error"]
        assert "passed the limit of 1.0 MB" in upload_without_end(url, 2 << 20)
        assert proc.poll() is None
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def read_answer(conn: socket.socket) -> bytes:
    """A server's answer on a raw socket, up to the end of its JSON body (or the connection's end)."""
    answer = b""
    while b"}" not in answer:
        data = conn.recv(65536)
        if not data:
            break
        answer += data
    return answer


def upload_without_end(url: str, size: int) -> str:
    """Send `size` bytes of a chunked upload that never ends and return the answer: the server must
    refuse while it reads, for it never gets the whole body."""
    host, port = url.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
        try:
            for _ in range(size // 65536):
                conn.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):  # refused before all of it was sent
            pass
        answer = read_answer(conn)
    status, _, rest = answer.decode("latin-1").partition("\r\n")
    assert " 413 " in status, answer[:300]
    return rest


def test_serve_script_refusals_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        serve.get_args_parser().parse_args(["--port", "70000"])
    assert stop.value.code == 2 and "argument --port" in capsys.readouterr().err
    with serve.listen("127.0.0.1", 0) as taken:
        assert taken.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # answers are not held back by Nagle
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            serve.listen("127.0.0.1", taken.getsockname()[1])


def test_workers_share_the_cores():
    assert serve.resolve_workers(None, None, cores=2) == (2, 2)
    assert serve.resolve_workers(1, None, cores=2) == (1, 2)
    assert serve.resolve_workers(None, None, cores=16) == (16, 2)
    assert serve.resolve_workers(4, None, cores=16) == (4, 8)
    assert serve.resolve_workers(None, None, cores=1) == (1, 1)
    assert serve.resolve_workers(3, 4, cores=2) == (3, 4)


def test_422_deeply_nested_json_is_not_a_server_error(client):
    """30,000 levels in under 64 KB made json.loads raise RecursionError: a 500 before."""
    body = b"[" * 30_000 + b"]" * 30_000
    refused(client.post("/predict", content=body, headers={"Content-Type": "application/json"}), 422,
            "nested too deeply")
    assert client.get("/health").status_code == 200


def test_a_client_leaving_mid_upload_is_one_info_line(recognizer, caplog):
    """A disconnect mid-upload was logged as a server error with two tracebacks."""
    import asyncio
    import logging

    app = create_app(recognizer, options())
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"image/jpeg"), (b"content-length", b"100000"), (b"host", b"test")],
             "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80)}
    messages = iter([{"type": "http.request", "body": b"\xff\xd8" + b"x" * 1000, "more_body": True},
                     {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages, {"type": "http.disconnect"})

    async def send(message):
        sent.append(message)

    with caplog.at_level(logging.INFO):
        asyncio.run(app(scope, receive, send))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("disconnected before its request was read" in r.getMessage() and r.exc_info is None
               for r in caplog.records)


def test_security_headers_and_the_pages_policy(client):
    import base64
    import hashlib
    import re as regex

    page = client.get("/")
    policy = page.headers["content-security-policy"]
    script = regex.search(r"<script>(.*?)</script>", page.text, regex.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy and "unsafe" not in policy
    for response in (page, client.get("/model"), client.get("/nowhere"), client.post("/predict", content=b"x")):
        assert response.headers["x-content-type-options"] == "nosniff", response.request.url
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "access-control-allow-origin" not in client.get("/model", headers={"Origin": "http://a.example"}).headers


def test_cross_origin_posts_are_refused_unless_allowed(recognizer, client):
    body = (ROOT / "Data" / "samples" / "astronaut.jpg").read_bytes()
    files = {"file": ("one.jpg", body, "image/jpeg")}
    refused(client.post("/predict", files=files, headers={"Origin": "http://evil.example"}), 403,
            "requests from pages of http://evil.example are refused")
    refused(client.post("/predict", files=files, headers={"Origin": "null"}), 403, "are refused")
    assert client.post("/predict", files=files, headers={"Origin": "http://testserver"}).status_code == 200  # itself
    assert client.post("/predict", files=files).status_code == 200  # curl and scripts send no Origin
    with TestClient(create_app(recognizer, options(cors_origins=("http://app.example",)))) as allowed:
        answer = allowed.post("/predict", files=files, headers={"Origin": "http://app.example"})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://app.example"
        preflight = allowed.options("/predict", headers={"Origin": "http://app.example",
                                                         "Access-Control-Request-Method": "POST",
                                                         "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]
        refused(allowed.post("/predict", files=files, headers={"Origin": "http://evil.example"}), 403, "refused")


def test_cors_origin_must_be_an_origin(capsys):
    from common.errors import run_cli
    with pytest.raises(SystemExit):
        run_cli(serve.main, serve.get_args_parser().parse_args(["--cors-origin", "https://app.example/path"]))
    assert "give a web origin" in capsys.readouterr().err


def test_stalling_urls_have_their_own_threads_and_never_starve_uploads(recognizer, web):
    """200 URL requests to a stalling server took every thread the server shared: an upload waited
    13 s. URL downloads now run on a small pool of their own; past it they are answered 503."""
    opts = options(limits=FetchLimits(allow_private=True, **LIMITS), fetch_workers=2, fetch_queue=1, workers=2)
    with TestClient(create_app(recognizer, opts)) as c:
        slow = [threading.Thread(target=lambda: c.post("/predict", json={"url": web + "/stall.jpg"}))
                for _ in range(3)]
        for thread in slow:
            thread.start()
        deadline = time.monotonic() + 5
        while sum(path == "/stall.jpg" for path in _Web.hits) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # two downloads stall on the fetch threads, the third waits
        time.sleep(0.2)
        busy = c.post("/predict", json={"url": web + "/stall.jpg"})
        assert busy.status_code == 503 and "URL downloads" in busy.json()["error"]
        assert busy.headers["retry-after"] == "1"
        start = time.monotonic()
        upload = c.post("/predict", content=ASTRONAUT.read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert upload.status_code == 200 and time.monotonic() - start < 2  # not behind the stalled downloads
        for thread in slow:
            thread.join(30)


def test_slow_clients_are_bounded_and_sigterm_is_prompt(served_model, tmp_path):
    """1,100 connections dripping headers exhausted the file descriptors and /health timed out; a
    half-sent JSON body was held for ever; SIGTERM then waited 99 s. Now: headers have a deadline,
    /health answers while hundreds of slow connections are open, a trickling JSON body gets 408,
    and SIGTERM ends the server in seconds."""
    import signal

    checkpoint, cache = served_model
    slow_count = 400
    serve.raise_open_files_limit(slow_count + 500)  # this test process holds the client ends
    with serve_process("--checkpoint", str(checkpoint), "--cache-dir", str(cache), "--header-timeout", "2",
                       "--download-timeout", "2", "--shutdown-timeout", "3", log=tmp_path / "serve.log") as (url, proc):
        host, port = url.split("//")[1].strip("/").split(":")
        slow = []
        for _ in range(slow_count):
            conn = socket.create_connection((host, int(port)), timeout=5)
            conn.sendall(b"GET /health HTTP/1.1\r\nHo")  # and never the rest
            slow.append(conn)
        start = time.monotonic()
        assert requests.get(url + "health", timeout=1).json()["status"] == "ok"
        assert time.monotonic() - start < 1
        with socket.create_connection((host, int(port)), timeout=10) as conn:  # a JSON body that stops
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"url\": ")
            answer = read_answer(conn).decode("latin-1")
        assert " 408 " in answer.split("\r\n")[0] and "took over 2 s to arrive" in answer
        time.sleep(1.5)  # past the header deadline: the slow connections are closed by the server
        closed = 0
        for conn in slow:
            conn.settimeout(0.2)
            try:
                closed += conn.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except socket.timeout:  # still open
                pass
        assert closed >= slow_count * 0.95, closed
        stopping = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]
        for conn in stopping:
            conn.sendall(b"GET /health HTTP/1.1\r\nHo")
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - start < 10
        for conn in slow + stopping:
            conn.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_a_busy_server_refuses_an_upload_before_reading_it(recognizer):
    """The 503 came only after each body had been read: 200 clients with 19 MB each held 5.3 GB.
    Now a full server answers 503 with Retry-After without taking a byte of the body."""
    import asyncio

    held = Held(recognizer)
    app = create_app(held, options(workers=1, queue=0))
    with TestClient(app) as c:
        first = threading.Thread(target=lambda: c.post("/predict", content=ASTRONAUT.read_bytes(),
                                                       headers={"Content-Type": "image/jpeg"}))
        first.start()
        assert held.started.acquire(timeout=10)  # the one place is taken
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"image/jpeg"), (b"content-length", str(19 << 20).encode()),
                             (b"host", b"test")], "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80)}
        pulled, sent = [], []

        async def receive():
            pulled.append(1)
            return {"type": "http.request", "body": b"\0" * (1 << 20), "more_body": True}

        async def send(message):
            sent.append(message)

        asyncio.run(app(scope, receive, send))
        held.release.set()
        first.join(30)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"retry-after"] == b"1"
    assert pulled == []  # not one chunk of the 19 MB was read

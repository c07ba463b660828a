"""serve.py's ASGI app: the HTTP API (POST /predict, GET /model, GET /health) and the web page (GET /).

    app = create_app(EmotionRecognizer(), ServeOptions())

POST /predict answers with the object `predict.py --json` prints for the same photo (one
recognizer, one `record`). The event loop only reads bodies and hands work on: decoding, detection
and classification run on a pool of `workers` threads, `queue` more requests may wait for one,
and past that a request is answered 503 with Retry-After. URL downloads wait on their own threads,
outside the pool, so a slow server holds no worker.

POST /predict?session=<id> is one frame of a live video (the page's webcam): the faces are
followed from the session's earlier frames and their probabilities smoothed over time, as
predict.py does for a video (inference/video.py); the server keeps a bounded number of
sessions and forgets one left idle.

Every refusal is a status code and {"error": "<one sentence>"}; docs/serve.md lists them.
"""
import asyncio
import base64
import contextlib
import ctypes
import hashlib
import io
import json
import logging
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Dict, Optional, Tuple

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.errors import UserError, first_line
from common.files import file_digest
from data.images import MAX_PIXELS, ImageTooLarge, decode_image
from inference.annotate import PALETTE, emotion_colours
from inference.fetch import MB, DownloadTimedOut, DownloadTooLarge, FetchLimits, UrlRefused, fetch
from inference.sources import Input, record
from inference.tracking import FaceTracker
from inference.video import FaceStream

ROOT = Path(__file__).resolve().parent.parent
PAGE = Path(__file__).with_name("serve_page.html")
MULTIPART_SLACK = 64 * 1024  # a form's boundaries and part headers, on top of the image itself
MAX_JSON_BYTES = 64 * 1024
log = logging.getLogger("serve")


class ApiError(Exception):
    """A refusal: the status code and the one sentence the client gets as {"error": ...}."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass(frozen=True)
class ServeOptions:
    """How much the server takes on.

    Attributes:
        limits: downloads of {"url": ...} (time, size, and whether private addresses may be
            fetched); `limits.max_bytes` also bounds uploads and `limits.total_timeout` the time
            to receive one.
        max_pixels: larger images are refused before they are decoded.
        workers: requests recognised at once, each on its own thread.
        queue: requests that may wait for a worker; one more is answered 503.
        fetch_workers, fetch_queue: {"url": ...} downloads at once, on threads of their own, and
            how many may wait; one more is answered 503.
        cors_origins: web origins (https://app.example) whose pages may call the API from a
            browser; none by default, and then a POST from any page of another origin is refused.
        smooth: live sessions: the time constant in seconds of each face's moving average.
        max_missed: live sessions: a face's track ends after this many frames without it.
        sessions: live sessions kept at once; a new one pushes out the least recently used.
        session_idle: seconds after which an unused session is forgotten.
    """

    limits: FetchLimits = field(default_factory=lambda: FetchLimits(allow_private=False))
    max_pixels: int = MAX_PIXELS
    workers: int = 1
    queue: int = 16
    cors_origins: Tuple[str, ...] = ()
    fetch_workers: int = 4
    fetch_queue: int = 8
    smooth: float = 0.5
    max_missed: int = 10
    sessions: int = 256
    session_idle: float = 120.0


SESSION_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


class Sessions:
    """The live video sessions (the page's webcam, one per browser tab): each its own tracker and
    smoother. At most `capacity` are kept (the least recently used goes first) and one unused for
    `idle` seconds is dropped, so clients cannot grow the server's memory. A session's frames are
    analysed one at a time: a frame sent while the previous one is still running is refused (409).
    """

    def __init__(self, recognizer, options: "ServeOptions"):
        self.recognizer, self.options = recognizer, options
        self.lock = threading.Lock()
        self.live: "OrderedDict[str, list]" = OrderedDict()  # id -> [stream, began, last used, busy lock]

    def __len__(self) -> int:
        return len(self.live)

    def step(self, session: str, image: np.ndarray) -> Tuple[list, float]:
        """This frame's faces with tracks and smoothed probabilities, and its time in the session."""
        now = time.monotonic()
        with self.lock:
            for key in [k for k, v in self.live.items() if now - v[2] > self.options.session_idle]:
                del self.live[key]
            entry = self.live.get(session)
            if entry is None:
                stream = FaceStream(self.recognizer, self.options.smooth,
                                    tracker=FaceTracker(max_missed=self.options.max_missed))
                entry = self.live[session] = [stream, now, now, threading.Lock()]
                while len(self.live) > self.options.sessions:
                    self.live.popitem(last=False)
            self.live.move_to_end(session)
            entry[2] = now
        if not entry[3].acquire(blocking=False):
            raise ApiError(409, "a frame of this session is still being analysed: send the next one when its "
                                "answer has come")
        try:
            t = time.monotonic() - entry[1]
            return entry[0].step(image, t), t
        finally:
            entry[3].release()


class InferencePool:
    """Runs blocking work on `workers` threads, with at most `queue` jobs waiting; more are refused.

    Admission is counted on the event loop's thread and released when a job ends (or is cancelled
    while it waits, as when its client goes away), so the count is exact without a lock.
    """

    def __init__(self, workers: int, queue: int, name: str = "recognise", what: str = "requests"):
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self.workers, self.capacity = workers, workers + queue
        self.what = what
        self.active = 0
        self.peak = 0
        self.admitted = 0  # requests let in to send their body, until they end

    @contextlib.contextmanager
    def admission(self):
        """Let a request in before a byte of its body is read, or refuse it (503, Retry-After):
        at most `capacity` bodies are read or held at once, however many clients send."""
        if self.admitted >= self.capacity:
            raise ApiError(503, f"the server is busy ({self.admitted} {self.what} running or waiting); try again "
                                "shortly", {"Retry-After": "1"})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, fn, *args):
        if self.active >= self.capacity:
            raise ApiError(503, f"the server is busy ({self.active} {self.what} running or waiting); try again "
                                "shortly", {"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        future = self.executor.submit(fn, *args)
        self.active += 1
        self.peak = max(self.peak, self.active)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self.active -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def decode(body: bytes, name: str, max_pixels: int):
    """Encoded image bytes -> RGB uint8 (H, W, 3), or the ApiError that says why not.

    415: not an image at all; 422: an image that cannot be used (cut short, damaged, or over the
    pixel limit: a decompression bomb is refused from its header, before it is decoded).
    """
    if not body:
        raise ApiError(422, f"{name}: the image is empty")
    try:
        return np.asarray(decode_image(body, max_pixels, name=name))
    except ImageTooLarge as err:
        raise ApiError(422, str(err)) from None
    except UserError as err:
        try:
            Image.open(io.BytesIO(body))  # reads the header only: is it an image format at all?
        except UnidentifiedImageError:
            raise ApiError(415, f"{name}: not an image (send JPEG, PNG, WebP, BMP, TIFF or GIF)") from None
        except Exception:  # a header PIL recognises but cannot parse: a damaged image
            pass
        raise ApiError(422, first_line(err)) from None


def model_info(recognizer) -> dict:
    """What GET /model answers: the model, its classes and input, the checkpoint's SHA-256."""
    meta = recognizer.meta
    return {"checkpoint": recognizer.checkpoint.name, "sha256": file_digest(recognizer.checkpoint),
            "model": meta.model, "classes": recognizer.classes, "img_size": recognizer.img_size,
            "grayscale": recognizer.grayscale, "temperature": recognizer.temperature, "tta": recognizer.tta,
            "detector": getattr(recognizer.detector, "name", type(recognizer.detector).__name__),
            "backend": recognizer.backend, "palette": PALETTE, "colours": emotion_colours(recognizer.classes)}


async def _read_body(request, limit: int, slack: int = 0) -> AsyncIterator[bytes]:
    """The request's body, chunk by chunk; ApiError 413 up front when its Content-Length is over
    `limit` + `slack` bytes, else as soon as that many have come (never buffered whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + slack:
        raise ApiError(413, f"the upload ({int(declared) / MB:.1f} MB) is over the limit of {limit / MB:.1f} MB")
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit + slack:
            raise ApiError(413, f"the upload passed the limit of {limit / MB:.1f} MB and was refused")
        yield chunk


async def _collect(chunks: AsyncIterator[bytes]) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
    return bytes(body)


async def _upload(request, options: ServeOptions) -> Tuple[bytes, str]:
    """(image bytes, name) from a multipart form (its first file) or a raw image body."""
    limit = options.limits.max_bytes
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        parser = MultiPartParser(request.headers, _read_body(request, limit, MULTIPART_SLACK), max_files=1,
                                 max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as err:
            raise ApiError(400, f"the multipart form cannot be read ({err.message})") from None
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise ApiError(400, "the multipart form has no file: send the image as a file field")
        upload = files[0]
        body = await upload.read()
        await form.close()
        if len(body) > limit:
            raise ApiError(413, f"the upload ({len(body) / MB:.1f} MB) is over the limit of {limit / MB:.1f} MB")
        return body, upload.filename or "upload"
    return await _collect(_read_body(request, limit)), "upload"


async def _download(request, limits: FetchLimits, fetches: "InferencePool") -> Tuple[bytes, str, float]:
    """(image bytes, URL, ms) for JSON {"url": ...}; the download runs on one of `fetches`' threads,
    apart from the threads the server's other work uses: stalling URLs never starve uploads."""
    try:  # a JSON body that trickles in is held no longer than an upload
        raw = await asyncio.wait_for(_collect(_read_body(request, MAX_JSON_BYTES)), limits.total_timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body took over {limits.total_timeout:g} s to arrive") from None
    except ApiError:
        raise ApiError(413, f"the JSON body is over {MAX_JSON_BYTES // 1024} KB; it holds only {{\"url\": ...}}") \
            from None
    try:
        payload = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the body is not valid JSON; send {\"url\": \"https://...\"}") from None
    except RecursionError:  # a small body nested thousands of levels deep: the parser's stack runs out
        raise ApiError(422, "the JSON body is nested too deeply; it holds only {\"url\": ...}") from None
    url = payload.get("url") if isinstance(payload, dict) else None
    if not isinstance(url, str) or not url:
        raise ApiError(400, "the JSON body needs a \"url\" string: {\"url\": \"https://...\"}")
    start = time.perf_counter()
    try:
        body, _ = await fetches.run(fetch, url, limits)
    except UrlRefused as err:
        raise ApiError(400, str(err)) from None
    except DownloadTimedOut as err:
        raise ApiError(504, str(err)) from None
    except DownloadTooLarge as err:
        raise ApiError(413, str(err)) from None
    except UserError as err:  # the other server failed: an HTTP error, a refused connection, ...
        raise ApiError(502, str(err)) from None
    return body, url, (time.perf_counter() - start) * 1000


async def _unless_gone(request, work):
    """Await `work`, but cancel it if the client disconnects first: a request still waiting for a
    worker then leaves the queue instead of being recognised for nobody."""
    async def gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    job, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not job.done():
        job.cancel()
        raise ApiError(499, "the client went away before its answer")  # nobody reads it; logged as such
    return job.result()


def _predict_schema() -> dict:
    """The request bodies POST /predict takes, for the OpenAPI page (the handler reads the body itself)."""
    binary = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": binary}, "required": ["file"]}},
        "image/*": {"schema": binary},
        "application/json": {"schema": {"type": "object", "properties": {"url": {"type": "string"}},
                                        "required": ["url"]}},
    }}, "parameters": [{
        "name": "session", "in": "query", "required": False,
        "schema": {"type": "string", "pattern": SESSION_ID.pattern},
        "description": "a live video's id (the page makes one per webcam start): faces get a track id, followed "
                       "from the session's earlier frames, and probabilities smoothed over time"}]}


ERRORS = {
    400: "a malformed request, or a URL that is not http(s) or is at a loopback, private or link-local address",
    408: "the upload did not arrive within the download time limit",
    409: "a frame sent for a live session (?session=) while its previous frame is still being analysed",
    413: "the image (uploaded or downloaded) is over the size limit",
    415: "not an image, or a Content-Type other than multipart/form-data, image/* or application/json",
    422: "an image cut short or damaged, over the pixel limit (a decompression bomb), or a malformed session id",
    502: "the URL's server failed (an HTTP error, a refused connection)",
    503: "every worker is busy and the queue is full: try again after Retry-After seconds",
    504: "the URL's server was too slow or did not answer",
}


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers: a connection that has not
    sent a whole request line and headers within `header_timeout` seconds of opening (or of its
    last answer, on a kept-alive connection) is closed. uvicorn has none, so a thousand clients
    dripping headers held a thousand connections, and their file descriptors, for ever."""

    header_timeout = 10.0
    _deadline = None  # the pending close, while a request's headers are awaited
    _awaiting = None  # the cycle that was current when the deadline was armed

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._awaiting = self.cycle
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def handle_events(self) -> None:
        super().handle_events()
        if self._deadline is not None and self.cycle is not self._awaiting:
            self._disarm()  # a new request's headers have all come

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._disarm()
            self._arm()  # the next request on this connection gets the same deadline

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


BIG_BODY = 4 * MB  # after a body this large, freed memory is handed back to the system


def release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim), so that a burst of large
    uploads does not leave the server holding their peak for good; nothing elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # musl has none
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def own_origin(request: Request) -> str:
    """scheme://host[:port] of this server, as the client addressed it (its Host header)."""
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def content_security_policy(page: str) -> str:
    """The page's policy: its one inline script and one inline style, by their SHA-256, and
    nothing from elsewhere; the API and the model's description from its own origin; photos and
    the webcam as blob: and data: images; no framing by any page."""
    def digest(tag: str) -> str:
        match = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        if match is None:
            return "'none'"
        return "'sha256-" + base64.b64encode(hashlib.sha256(match.group(1).encode("utf-8")).digest()).decode() + "'"
    return (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
            "connect-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(recognizer, options: ServeOptions = ServeOptions()):
    """The FastAPI app around one recognizer (loaded once, shared by the pool's threads)."""
    pool = InferencePool(options.workers, options.queue)
    fetches = InferencePool(options.fetch_workers, options.fetch_queue, "fetch", "URL downloads")
    info = model_info(recognizer)
    info["limits"] = {"max_bytes": options.limits.max_bytes, "max_pixels": options.max_pixels,
                      "download_timeout_s": options.limits.total_timeout}
    info["sessions"] = {"smooth_s": options.smooth, "max_missed": options.max_missed,
                        "max_sessions": options.sessions, "idle_s": options.session_idle}
    sessions = Sessions(recognizer, options)
    page = PAGE.read_bytes()
    page_policy = content_security_policy(page.decode("utf-8"))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.close()
        fetches.close()

    app = FastAPI(title="Facial expression recognition", lifespan=lifespan,
                  description="Every face in a photo, its box and the probability of each expression. "
                              "The answer to POST /predict is one line of `predict.py --json`.")
    app.state.pool = pool
    app.state.sessions = sessions

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Refuse a POST a page of another origin sends (a form or fetch the browser lets through
        without CORS), then give every answer the headers that stop sniffing and framing."""
        origin = request.headers.get("origin")
        if (request.method == "POST" and origin is not None and origin not in options.cors_origins
                and origin != own_origin(request)):
            response = JSONResponse({"error": f"requests from pages of {origin} are refused; "
                                              "serve.py --cors-origin ORIGIN allows one"}, 403)
        else:
            response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
        return response

    if options.cors_origins:  # added last, so it runs first: preflights are answered before the guard
        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["content-type"], max_age=600)

    def recognise(body: bytes, name: str, ms: float, session: Optional[str] = None) -> dict:
        start = time.perf_counter()
        image = decode(body, name, options.max_pixels)
        at = None
        try:
            if session is None:
                faces = recognizer.predict(image)
            else:
                faces, at = sessions.step(session, image)
        except UserError as err:
            raise ApiError(422, f"{name}: {first_line(err)}") from None
        return record(Input(name, image=image, time=at), faces, ms + (time.perf_counter() - start) * 1000)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": page_policy})

    @app.get("/health", summary="Liveness, and how many requests are running or waiting")
    async def health():
        return {"status": "ok", "active": pool.active, "peak": pool.peak, "capacity": pool.capacity,
                "workers": pool.workers, "admitted": pool.admitted}

    @app.get("/model", summary="The model served: classes, input size, grey or colour, the checkpoint's SHA-256")
    async def model():
        return info

    @app.post("/predict", openapi_extra=_predict_schema(),
              responses={code: {"description": text} for code, text in ERRORS.items()},
              summary="Every face in an image: a file upload, raw image bytes, or JSON {\"url\": ...}")
    async def predict(request: Request):
        session = request.query_params.get("session")
        if session is not None and not SESSION_ID.fullmatch(session):
            raise ApiError(422, "session: 8 to 64 letters, digits, - or _ (the page makes one per webcam start)")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            body, name, ms = await _download(request, options.limits, fetches)
        elif kind == "multipart/form-data" or kind.startswith("image/") or kind == "application/octet-stream":
            # Capacity first: a busy server refuses an upload before reading it, so memory grows with
            # the queue, not with the clients (200 clients sending 19 MB each held 5.3 GB before).
            with pool.admission():
                try:
                    body, name = await asyncio.wait_for(_upload(request, options), options.limits.total_timeout)
                except asyncio.TimeoutError:
                    raise ApiError(408, f"the upload took over {options.limits.total_timeout:g} s") from None
                try:
                    return await _unless_gone(request, pool.run(recognise, body, name, 0.0, session))
                finally:
                    big = len(body) >= BIG_BODY
                    del body
                    if big:
                        release_freed_memory()
        else:
            raise ApiError(415, f"Content-Type {kind or 'missing'}: send multipart/form-data, an image/* body, "
                                "or application/json {\"url\": ...}")
        return await _unless_gone(request, pool.run(recognise, body, name, ms, session))

    async def refused(_request, err: ApiError):
        return JSONResponse({"error": err.message}, err.status, headers=err.headers)

    async def http_error(_request, err: HTTPException):
        return JSONResponse({"error": str(err.detail)}, err.status_code, headers=getattr(err, "headers", None))

    async def invalid(_request, err: RequestValidationError):
        return JSONResponse({"error": f"invalid request ({first_line(err)})"}, 422)

    async def gone(request, _err: ClientDisconnect):
        # A client that leaves mid-upload is not a server error: one line, no traceback, nobody to answer.
        log.info("%s %s: the client disconnected before its request was read", request.method, request.url.path)
        return Response(status_code=400)

    async def bug(request, err: Exception):
        log.exception("%s %s failed", request.method, request.url.path, exc_info=err)
        return JSONResponse({"error": f"internal error ({type(err).__name__}); the server log has the details"}, 500)

    app.add_exception_handler(ApiError, refused)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ClientDisconnect, gone)
    app.add_exception_handler(Exception, bug)
    return app


@contextlib.contextmanager
def serve_process(*args, log: Path, timeout: float = 60.0):
    """`python3 serve.py --port 0 ARGS` in its own process, for tests and benchmarks; yields (its URL,
    the process) once it listens, and stops it afterwards. Its stderr goes to `log`."""
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--port", "0", *args], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=err)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        found = re.search(r" at (http://\S+/)$", line.strip())
        if not found:
            proc.kill()
            raise RuntimeError(f"serve.py did not start: {line!r} {log.read_text()[-2000:]}")
        yield found.group(1), proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

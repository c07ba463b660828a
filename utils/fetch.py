"""Downloading images from http(s) URLs, bounded in time, size and redirects.

`fetch` returns the body only when it is small enough and arrives in time; every failure is a
UserError whose message names the URL and says what went wrong.

The whole download has a deadline, however the server sends (or drips) its bytes: it runs in a
worker thread, and when the deadline passes the caller gets its error at once while the worker's
connection is shut, which ends the worker's blocked read. (A server that drips its headers keeps
that daemon thread until it stops; the caller still gets its error on time.)
"""
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple
from urllib.parse import urlsplit

from utils.errors import UserError, first_line

if TYPE_CHECKING:
    from PIL import Image

CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one download.

    Attributes:
        connect_timeout: seconds to wait for the connection.
        read_timeout: seconds to wait for each piece of the response.
        total_timeout: seconds for the whole download (stops servers that drip bytes).
        max_bytes: largest body accepted; the download stops as soon as it is exceeded.
        max_redirects: redirects followed before giving up.
    """

    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 60.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def fetch(url: str, limits: FetchLimits = FetchLimits()) -> Tuple[bytes, str]:
    """GET `url`; returns (body, the Content-Type the server declared or "").

    Raises:
        UserError: not http(s), a connection or HTTP error, a time-out (limits.read_timeout
            without a byte, or limits.total_timeout for the whole download), too many redirects,
            a body cut short, or a body larger than limits.max_bytes.
    """
    import requests

    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise UserError(f"{url}: only http and https URLs are fetched")
    download = _Download(url, limits, requests.Session())
    threading.Thread(target=download.run, name="fetch", daemon=True).start()
    if not download.done.wait(limits.total_timeout):
        download.abort()
        raise UserError(f"{url}: the download took over {limits.total_timeout:g} s and was stopped")
    if download.error is not None:
        raise download.error
    return download.result


class _Download:
    """One GET run by a worker thread: `result` or `error` once `done` is set; `abort` stops it."""

    def __init__(self, url: str, limits: FetchLimits, session):
        self.url, self.limits, self.session = url, limits, session
        self.done, self.aborted = threading.Event(), threading.Event()
        self.response = None
        self.result: Tuple[bytes, str] = (b"", "")
        self.error: Optional[UserError] = None

    def run(self) -> None:
        try:
            self.result = _get(self)
        except UserError as err:
            self.error = err
        except Exception as err:  # an unforeseen library error: still one line for the caller
            self.error = UserError(f"{self.url}: download failed ({first_line(err)})")
        finally:
            self.session.close()
            self.done.set()

    def abort(self) -> None:
        """Shut the connection the worker reads from, so that its blocked read returns now."""
        self.aborted.set()
        raw = getattr(self.response, "raw", None)
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass


def _get(download: _Download) -> Tuple[bytes, str]:
    """The download itself (in the worker thread); see `fetch`."""
    import requests

    url, limits, session = download.url, download.limits, download.session
    session.max_redirects = limits.max_redirects
    start = time.monotonic()
    try:
        # identity: an image gains nothing from compression, and a compressed body could be a bomb
        # (one that comes compressed anyway is still counted after decompression, against max_bytes)
        with session.get(url, stream=True, timeout=(limits.connect_timeout, limits.read_timeout),
                         headers={"User-Agent": "fer-predict/1.0", "Accept": "image/*",
                                  "Accept-Encoding": "identity"}) as response:
            download.response = response
            if response.status_code != 200:
                raise UserError(f"{url}: HTTP {response.status_code} {response.reason or ''}".rstrip())
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limits.max_bytes:
                raise UserError(f"{url}: {_mb(int(declared))} is over the download limit of "
                                f"{_mb(limits.max_bytes)} (--max-download-mb)")
            body = bytearray()
            for chunk in response.iter_content(CHUNK):
                body += chunk
                if len(body) > limits.max_bytes:
                    raise UserError(f"{url}: the download passed the limit of {_mb(limits.max_bytes)} and was "
                                    "stopped (--max-download-mb)")
                if time.monotonic() - start > limits.total_timeout or download.aborted.is_set():
                    raise UserError(f"{url}: the download took over {limits.total_timeout:g} s and was stopped")
            return bytes(body), response.headers.get("Content-Type", "")
    except requests.TooManyRedirects:
        raise UserError(f"{url}: more than {limits.max_redirects} redirects (a redirect loop?)") from None
    except requests.Timeout:
        raise UserError(f"{url}: no answer within {limits.read_timeout:g} s (timed out)") from None
    except requests.exceptions.ChunkedEncodingError:
        raise UserError(f"{url}: the server broke off the download (it sent less than it announced)") from None
    except requests.ConnectionError as err:
        if "timed out" in str(err).lower():  # a read time-out in mid-body arrives as a ConnectionError
            raise UserError(f"{url}: no answer within {limits.read_timeout:g} s (timed out)") from None
        raise UserError(f"{url}: cannot connect ({_reason(err)})") from None
    except requests.RequestException as err:
        raise UserError(f"{url}: download failed ({first_line(err)})") from None


def fetch_image(url: str, limits: FetchLimits = FetchLimits(), max_pixels: Optional[int] = None) -> "Image.Image":
    """Download `url` and decode it as an upright RGB image (see data.images.decode_image).

    Raises:
        UserError: as `fetch`, or the body is not a decodable image (an HTML page, say).
    """
    from data.images import MAX_PIXELS, ImageTooLarge, decode_image

    body, content_type = fetch(url, limits)
    try:
        return decode_image(body, max_pixels or MAX_PIXELS, name=url)
    except ImageTooLarge:
        raise
    except UserError:
        if content_type.lower().startswith("image/"):
            raise  # an image cut short or damaged: the decoder's words say which
        sent = f" (the server sent {content_type.split(';')[0]})" if content_type else ""
        raise UserError(f"{url}: the download is not an image{sent}") from None


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def _reason(err: Exception) -> str:
    """The operating system's words inside requests' nested connection errors, when there are any."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(err))
    return found.group(1).strip() if found else first_line(err)

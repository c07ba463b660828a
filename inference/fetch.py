"""Downloading images from http(s) URLs, bounded in time, size and redirects.

`fetch` returns the body only when it is small enough and arrives in time; every failure is a
UserError whose message names the URL and says what went wrong.

The whole download has a deadline, however the server sends (or drips) its bytes: it runs in a
worker thread, and when the deadline passes the caller gets its error at once while the worker's
connection is shut, which ends the worker's blocked read. (A server that drips its headers keeps
that daemon thread until it stops; the caller still gets its error on time.)

A server that fetches URLs for its clients sets `FetchLimits(allow_private=False)`: the host
name is resolved and refused when any of its addresses is loopback, private, link-local or
otherwise not public, and every connection (redirects included) is checked again at the address
it reached, so neither a redirect nor a name that resolves anew reaches the server's own network.
"""
import argparse
import functools
import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import urlsplit

import requests
from PIL import Image
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from common.errors import UserError, first_line, number
from data.images import MAX_PIXELS, ImageTooLarge, decode_image

CHUNK = 64 * 1024
MB = 1024 * 1024


class UrlRefused(UserError):
    """A URL that is not fetched: not http(s), or a host at a non-public address."""


class DownloadTimedOut(UserError):
    """The server did not answer, or not the whole body, within the time limits."""


class DownloadTooLarge(UserError):
    """The body is over the size limit."""


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one download.

    Attributes:
        connect_timeout: seconds to wait for the connection.
        read_timeout: seconds to wait for each piece of the response.
        total_timeout: seconds for the whole download (stops servers that drip bytes).
        max_bytes: largest body accepted; the download stops as soon as it is exceeded.
        max_redirects: redirects followed before giving up.
        allow_private: fetch from loopback, private and link-local addresses too; a server that
            fetches for its clients sets False (no server-side request forgery).
    """

    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 60.0
    max_bytes: int = 20 * MB
    max_redirects: int = 5
    allow_private: bool = True


def add_limit_args(p: argparse.ArgumentParser) -> None:
    """The size and time limits on images, as options with their defaults (shared by the scripts)."""
    default = FetchLimits()
    p.add_argument("--timeout", type=number(float, 0, low_open=True), default=default.read_timeout,
                   help="seconds to wait for a server (to connect, and for each piece of a download)")
    p.add_argument("--download-timeout", type=number(float, 0, low_open=True), default=default.total_timeout,
                   help="seconds for a whole download, however slowly the server sends")
    p.add_argument("--max-download-mb", type=number(float, 0, low_open=True), default=default.max_bytes / MB,
                   help="largest image accepted from a URL (serve.py: or uploaded)")
    p.add_argument("--max-pixels", type=number(int, 1), default=MAX_PIXELS, help="larger images are refused")


def limits_from_args(args: argparse.Namespace, **overrides) -> FetchLimits:
    """FetchLimits from the options of `add_limit_args`."""
    return FetchLimits(connect_timeout=args.timeout, read_timeout=args.timeout, total_timeout=args.download_timeout,
                       max_bytes=int(args.max_download_mb * MB), **overrides)


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def fetch(url: str, limits: FetchLimits = FetchLimits()) -> Tuple[bytes, str]:
    """GET `url`; returns (body, the Content-Type the server declared or "").

    Raises:
        UrlRefused: not http(s); with limits.allow_private False, a host at a non-public address.
        DownloadTimedOut: limits.read_timeout without a byte, or limits.total_timeout for the
            whole download.
        DownloadTooLarge: a body larger than limits.max_bytes.
        UserError: a connection or HTTP error, too many redirects, a body cut short.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused(f"{url}: only http and https URLs are fetched")
    session = requests.Session()
    if not limits.allow_private:
        session.trust_env = False  # a proxy from the environment would be the address checked
        for prefix in ("http://", "https://"):
            session.mount(prefix, _public_only_adapter()())
    download = _Download(url, limits, session)
    threading.Thread(target=download.run, name="fetch", daemon=True).start()
    if not download.done.wait(limits.total_timeout):
        download.abort()
        raise DownloadTimedOut(f"{url}: the download took over {limits.total_timeout:g} s and was stopped")
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
    url, limits, session = download.url, download.limits, download.session
    session.max_redirects = limits.max_redirects
    start = time.monotonic()
    if not limits.allow_private:
        check_public_host(url)
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
                raise DownloadTooLarge(f"{url}: {_mb(int(declared))} is over the download limit of "
                                f"{_mb(limits.max_bytes)} (--max-download-mb)")
            body = bytearray()
            for chunk in response.iter_content(CHUNK):
                body += chunk
                if len(body) > limits.max_bytes:
                    raise DownloadTooLarge(f"{url}: the download passed the limit of {_mb(limits.max_bytes)} and was "
                                    "stopped (--max-download-mb)")
                if time.monotonic() - start > limits.total_timeout or download.aborted.is_set():
                    raise DownloadTimedOut(f"{url}: the download took over {limits.total_timeout:g} s and was stopped")
            return bytes(body), response.headers.get("Content-Type", "")
    except UrlRefused as err:  # a connection checked where it went: a redirect, or a name that resolved anew
        raise UrlRefused(f"{url}: the connection reached a host it may not: {err}") from None
    except requests.TooManyRedirects:
        raise UserError(f"{url}: more than {limits.max_redirects} redirects (a redirect loop?)") from None
    except requests.Timeout:
        raise DownloadTimedOut(f"{url}: no answer within {limits.read_timeout:g} s (timed out)") from None
    except requests.exceptions.ChunkedEncodingError:
        raise UserError(f"{url}: the server broke off the download (it sent less than it announced)") from None
    except requests.ConnectionError as err:
        if "timed out" in str(err).lower():  # a read time-out in mid-body arrives as a ConnectionError
            raise DownloadTimedOut(f"{url}: no answer within {limits.read_timeout:g} s (timed out)") from None
        raise UserError(f"{url}: cannot connect ({_reason(err)})") from None
    except requests.RequestException as err:
        raise UserError(f"{url}: download failed ({first_line(err)})") from None


def fetch_image(url: str, limits: FetchLimits = FetchLimits(), max_pixels: Optional[int] = None) -> Image.Image:
    """Download `url` and decode it as an upright RGB image (see data.images.decode_image).

    Raises:
        UserError: as `fetch`, or the body is not a decodable image (an HTML page, say).
    """
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


def check_public_host(url: str) -> None:
    """Resolve the URL's host; refuse it when any of its addresses is not public.

    Raises:
        UrlRefused: no host, or an address that is loopback, private, link-local, multicast,
            reserved or unspecified.
        UserError: the name does not resolve.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise UrlRefused(f"{url}: the URL names no host")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as err:
        raise UserError(f"{url}: cannot resolve {host} ({first_line(err)})") from None
    for *_, address in found:
        try:
            check_public_address(host, address[0])
        except UrlRefused as err:
            raise UrlRefused(f"{url}: {err}") from None


NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address carries and is routed to, or None: IPv4-mapped
    (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), 6to4 (2002:AABB:CCDD::/48) and NAT64
    (64:ff9b::a.b.c.d, 64:ff9b:1::/48). Python calls most of these global whatever they carry,
    so a private IPv4 address would pass as public inside them."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in NAT64) or (ip in IPV4_COMPATIBLE and int(ip) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def check_public_address(host: str, address: str) -> None:
    """Raises UrlRefused, naming `host`, when `address` (where it resolved to) is not public."""
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 scope (fe80::1%eth0) is not part of it
    ip = embedded_ipv4(ip) or ip
    if ip.is_global and not ip.is_multicast:
        return
    kind = ("loopback" if ip.is_loopback else "link-local" if ip.is_link_local else
            "unspecified" if ip.is_unspecified else "private" if ip.is_private else "non-public")
    at = "" if host == str(ip) else f" is at {ip}, which"
    raise UrlRefused(f"{host}{at} is a {kind} address; only public addresses are fetched "
                     "(serve.py --allow-private-urls lifts this)")


@functools.lru_cache(maxsize=None)
def _public_only_adapter():
    """requests' adapter class whose every new connection (redirects included) is checked at the
    address it reached; made once, on first use."""
    def checked(base):
        class Checked(base):
            def _new_conn(self):
                sock = super()._new_conn()
                try:
                    check_public_address(self.host, sock.getpeername()[0])
                except UrlRefused:
                    sock.close()
                    raise
                return sock
        return Checked

    pools = {"http": type("PublicHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": checked(HTTPConnection)}),
             "https": type("PublicHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": checked(HTTPSConnection)})}

    class PublicOnlyAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

    return PublicOnlyAdapter


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def _reason(err: Exception) -> str:
    """The operating system's words inside requests' nested connection errors, when there are any."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(err))
    return found.group(1).strip() if found else first_line(err)

"""serve.py under hostile clients: many big uploads at once, URLs that stall, bodies that stop,
and connections that never finish their headers.

    python3 benchmarks/bench_hostile.py [--uploads 200 --upload-mb 19] [--stalls 50] [--slow-bodies 100]
        [--connections 1000] [--checkpoint M]

Starts serve.py on 127.0.0.1 (the default model unless --checkpoint). First, `--uploads` clients
each send `--upload-mb` MB at once (random bytes: each admitted one is read, then refused as not
an image): the server's resident memory (VmRSS) is sampled from /proc before, at its peak, and
after, with the answers' status codes. Then `--stalls` {"url": ...} requests to a local server that
sends headers and stalls, while one upload is timed; then `--slow-bodies` JSON requests whose body
stops half-way, with /health timed while they wait for their 408. Then N connections each send half a request line and stop:
GET /health is timed (5 tries) while they are open, then SIGTERM. Only this machine's loopback is
used; every loop is bounded. The figures go to docs/serve.md ("Hostile clients").
"""
import argparse
import http.server
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.server import serve_process  # noqa: E402
from serve import raise_open_files_limit  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def big_uploads(url: str, pid: int, clients: int, mb: int) -> None:
    body = os.urandom(mb << 20)
    idle = rss_mb(pid)
    codes, peak, done = Counter(), [idle], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(rss_mb(pid))
            time.sleep(0.05)

    def upload():
        try:
            codes[requests.post(url + "predict", data=body, headers={"Content-Type": "image/jpeg"},
                                timeout=120).status_code] += 1
        except requests.RequestException as err:
            codes[type(err).__name__] += 1

    watcher = threading.Thread(target=sample)
    watcher.start()
    threads = [threading.Thread(target=upload) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    done.set()
    watcher.join()
    time.sleep(1)
    print(f"{clients} uploads of {mb} MB at once ({time.monotonic() - start:.1f} s): answers {dict(codes)}; "
          f"server RSS idle {idle:.0f} MB, peak {max(peak):.0f} MB, after {rss_mb(pid):.0f} MB")


class _Stall(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # headers, then silence
        try:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            time.sleep(10)
        except (BrokenPipeError, ConnectionResetError):
            pass


def stalling_urls(url: str, requests_n: int) -> None:
    photo = (Path(__file__).resolve().parents[1] / "Data" / "samples" / "astronaut.jpg").read_bytes()
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stall)
    web.daemon_threads = True
    threading.Thread(target=web.serve_forever, daemon=True).start()
    stall = f"http://127.0.0.1:{web.server_address[1]}/stall.jpg"
    codes = Counter()

    def fetch():
        try:
            codes[requests.post(url + "predict", json={"url": stall}, timeout=120).status_code] += 1
        except requests.RequestException as err:
            codes[type(err).__name__] += 1

    threads = [threading.Thread(target=fetch) for _ in range(requests_n)]
    for t in threads:
        t.start()
    time.sleep(1)
    start = time.monotonic()
    upload = requests.post(url + "predict", data=photo, headers={"Content-Type": "image/jpeg"}, timeout=60)
    took = time.monotonic() - start
    for t in threads:
        t.join(120)
    web.shutdown()
    print(f"{requests_n} URL requests to a stalling server: answers {dict(codes)}; an upload meanwhile "
          f"{upload.status_code} in {1000 * took:.0f} ms")


def slow_bodies(url: str, host: str, port: int, n: int) -> None:
    conns = []
    for _ in range(n):
        conn = socket.create_connection((host, port), timeout=30)
        conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"url\": ")  # and never the rest
        conns.append(conn)
    start = time.monotonic()
    health = requests.get(url + "health", timeout=5).status_code
    took = time.monotonic() - start
    codes = Counter()
    for conn in conns:
        try:
            codes[conn.recv(64).split(b" ")[1].decode()] += 1
        except (OSError, IndexError):
            codes["no answer"] += 1
        conn.close()
    print(f"{n} JSON bodies that stop half-way: GET /health meanwhile {health} in {1000 * took:.0f} ms; "
          f"their answers {dict(codes)} after {time.monotonic() - start:.1f} s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--uploads", type=int, default=200)
    p.add_argument("--upload-mb", type=int, default=19)
    p.add_argument("--stalls", type=int, default=50)
    p.add_argument("--slow-bodies", type=int, default=100)
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args(argv)
    raise_open_files_limit(args.connections + 256)  # this process holds the client ends
    extra = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    with tempfile.TemporaryDirectory() as tmp, \
            serve_process(*extra, "--allow-private-urls", "--download-timeout", "5", log=Path(tmp) / "serve.log",
                          timeout=180) as (url, proc):
        host, port = url.split("//")[1].strip("/").split(":")
        if args.uploads:
            big_uploads(url, proc.pid, args.uploads, args.upload_mb)
        if args.stalls:
            stalling_urls(url, args.stalls)
        if args.slow_bodies:
            slow_bodies(url, host, int(port), args.slow_bodies)
        slow = []
        try:
            for _ in range(args.connections):
                conn = socket.create_connection((host, int(port)), timeout=5)
                conn.sendall(b"GET /health HTTP/1.1\r\nHo")  # and never the rest
                slow.append(conn)
            times, codes = [], []
            for _ in range(5):
                start = time.monotonic()
                codes.append(requests.get(url + "health", timeout=5).status_code)
                times.append(time.monotonic() - start)
            print(f"{len(slow)} slow connections open: GET /health {codes}, slowest {1000 * max(times):.0f} ms")
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            print(f"SIGTERM -> exit in {time.monotonic() - start:.2f} s")
        finally:
            for conn in slow:
                conn.close()


if __name__ == "__main__":
    main()

"""serve.py under clients that open connections and never finish their headers.

    python3 benchmarks/bench_slow_clients.py [--connections 1000] [--checkpoint M]

Starts serve.py on 127.0.0.1 (the default model unless --checkpoint), opens N connections that
each send half a request line and stop, then times GET /health (5 tries) while they are open,
and how long SIGTERM takes to end the server. Only this machine's loopback is used; every loop
is bounded. The figures go to docs/serve.md ("Slow clients").
"""
import argparse
import resource
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.server import serve_process  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # this process holds the client ends
    wanted = args.connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard),
                                                    hard))
    extra = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    with tempfile.TemporaryDirectory() as tmp, \
            serve_process(*extra, log=Path(tmp) / "serve.log", timeout=180) as (url, proc):
        host, port = url.split("//")[1].strip("/").split(":")
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

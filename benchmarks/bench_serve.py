"""Load on serve.py: concurrent clients send good photos mixed with bad inputs; latency, throughput,
error counts, the server's memory, and whether anything was lost or answered wrongly.

    python3 benchmarks/bench_serve.py                                  # default model; 1 2 8 32 clients, 3 rounds
    python3 benchmarks/bench_serve.py --clients 1 2 8 --bad-every 0    # good photos only: the latency figures
    python3 benchmarks/bench_serve.py --server-args "--workers 2"       # any serve.py options
    python3 benchmarks/bench_serve.py --hostile                        # hostile clients: benchmarks/bench_hostile.py

The server runs on 127.0.0.1 (`serve.py --port 0 --max-download-mb 2`). The good photo is the
640x480 astronaut (one face); with --bad-every K every K-th request is instead, in turn, a
truncated JPEG (422), a 2.5 MB upload over the 2 MB limit (413), a decompression bomb (a 64 M
pixel PNG of 0.1 MB, 422) or an HTML page sent as an image (415). Each level sends --requests
requests from N clients (threads with keep-alive sessions); a 503 is retried after its
Retry-After, and counted. A good answer is right when its faces equal the answer the idle server
gave before the load. Latency is per good request, from the client's first send to its answer.
Memory is the server's resident set (VmRSS) after each level and its peak (VmHWM).
"""
import argparse
import io
import itertools
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.photos import astronaut_640x480  # noqa: E402
from inference.server import serve_process  # noqa: E402

LIMIT_MB = 2


def payloads() -> dict:
    """kind -> (body, Content-Type, expected status)."""
    buffer = io.BytesIO()
    Image.fromarray(astronaut_640x480()).save(buffer, "JPEG", quality=92)
    good = buffer.getvalue()
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, "PNG", optimize=True)
    rng = np.random.default_rng(0)
    return {
        "good": (good, "image/jpeg", 200),
        "truncated": (good[: len(good) // 3], "image/jpeg", 422),
        "oversized": (rng.integers(0, 256, int((LIMIT_MB + 0.5) * 2 ** 20), dtype=np.uint8).tobytes(), "image/jpeg", 413),
        "bomb": (bomb.getvalue(), "image/png", 422),
        "not an image": (b"<!doctype html><html><body>" + b"a page, not a photo " * 200 + b"</body></html>",
                         "image/jpeg", 415),
    }


def server_memory(pid: int) -> dict:
    """The server's resident and peak resident memory in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[key].split()[0]) / 1024, 1) for k, key in (("rss_mb", "VmRSS"), ("peak_mb", "VmHWM"))}


def post(session, url: str, body: bytes, kind: str):
    """(status, answer, 503s seen): retries 503s after their Retry-After."""
    busy = 0
    while True:
        response = session.post(url + "predict", data=body, headers={"Content-Type": kind}, timeout=120)
        if response.status_code != 503:
            return response.status_code, response.json(), busy
        busy += 1
        time.sleep(float(response.headers.get("Retry-After", "1")))


def level(url: str, clients: int, total: int, bad_every: int, data: dict, reference) -> dict:
    """`total` requests from `clients` threads; the statistics of one level."""
    bad_kinds = [k for k in data if k != "good"]
    index, lock, rows = itertools.count(), threading.Lock(), []

    def client():
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(index)
                if i >= total:
                    return
                kind = bad_kinds[(i // bad_every) % len(bad_kinds)] if bad_every and i % bad_every == bad_every - 1 \
                    else "good"
                body, content_type, expected = data[kind]
                start = time.perf_counter()
                try:
                    status, answer, busy = post(session, url, body, content_type)
                except (requests.RequestException, ValueError) as err:  # lost: no answer, or not JSON
                    rows.append((kind, f"lost: {type(err).__name__}", False, 0.0, 0))
                    continue
                ms = (time.perf_counter() - start) * 1000
                right = status == expected and (kind != "good" or answer["faces"] == reference)
                rows.append((kind, status, right, ms, busy))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    good = [ms for kind, status, right, ms, _ in rows if kind == "good" and status == 200]
    statuses = {}
    for _, status, _, _, _ in rows:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"clients": clients, "requests": len(rows), "good": sum(k == "good" for k, *_ in rows),
            "p50_ms": round(statistics.median(good), 1) if good else None,
            "p95_ms": round(float(np.percentile(good, 95)), 1) if good else None,
            "good_per_s": round(len(good) / wall, 1), "requests_per_s": round(len(rows) / wall, 1),
            "statuses": dict(sorted(statuses.items())), "retried_503": sum(r[4] for r in rows),
            "wrong_or_lost": sum(not r[2] for r in rows)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model to serve (default: the project's default model)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 8, 32])
    p.add_argument("--requests", type=int, default=200, help="requests per level")
    p.add_argument("--rounds", type=int, default=3, help="every level this many times (memory must stay flat)")
    p.add_argument("--bad-every", type=int, default=4, help="every K-th request is a bad input (0: none)")
    p.add_argument("--warmup", type=int, default=20, help="good requests before the first level")
    p.add_argument("--server-args", default="", help="more serve.py options, as one string")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--hostile", action="store_true",
                   help="instead: big uploads, stalling URLs, bodies that stop, slow headers "
                        "(benchmarks/bench_hostile.py with its defaults)")
    args = p.parse_args()
    if args.hostile:
        from benchmarks.bench_hostile import main as hostile
        hostile(["--checkpoint", args.checkpoint] if args.checkpoint else [])
        return

    data = payloads()
    server_args = ["--max-download-mb", str(LIMIT_MB), *shlex.split(args.server_args)]
    if args.checkpoint:
        server_args += ["--checkpoint", args.checkpoint]
    log = Path(tempfile.mkdtemp(prefix="bench_serve_")) / "serve.log"
    report = {"server args": server_args, "levels": [], "memory after each round": []}
    with serve_process(*server_args, log=log, timeout=300) as (url, proc):
        report["model"] = requests.get(url + "model", timeout=10).json()
        with requests.Session() as session:
            answers = [post(session, url, data["good"][0], "image/jpeg")[1] for _ in range(args.warmup)]
        reference = answers[-1]["faces"]
        report["reference faces"] = [{"box": f["box"], "emotion": f["emotion"]} for f in reference]
        report["memory after warm-up"] = server_memory(proc.pid)
        for round_ in range(1, args.rounds + 1):
            for clients in args.clients:
                row = {"round": round_, **level(url, clients, args.requests, args.bad_every, data, reference),
                       **server_memory(proc.pid)}
                report["levels"].append(row)
                print(json.dumps(row), flush=True)
            report["memory after each round"].append(server_memory(proc.pid)["rss_mb"])
        health = requests.get(url + "health", timeout=10)
        report["healthy at the end"] = health.status_code == 200 and health.json()["status"] == "ok"
        report["server still running"] = proc.poll() is None
    rss = report["memory after each round"]
    report["memory growth after round 1 (MB)"] = round(rss[-1] - rss[0], 1)
    report["wrong or lost"] = sum(r["wrong_or_lost"] for r in report["levels"])
    report["server log has a traceback"] = "Traceback" in log.read_text()
    print(json.dumps({k: v for k, v in report.items() if k != "levels"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

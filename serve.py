"""An HTTP API and a web page for expression recognition, on the same code as predict.py.

    python3 serve.py                                  # http://127.0.0.1:8000/
    python3 serve.py --host 0.0.0.0 --port 8080 --checkpoint runs/dan/best.safetensors --workers 2

Open the URL for the page (drop a photo or turn on the webcam); POST /predict answers with what
`predict.py --json` prints for the same photo; /docs is the API's own page. See docs/serve.md.
"""
import argparse
import logging
import os
import re
import socket
import sys

import uvicorn

from common.errors import ArgumentParser, UserError, number, run_cli
from inference.detectors import DETECTORS
from inference.fallback import add_fallback_args, fallback_from_args
from inference.fetch import add_limit_args, limits_from_args
from inference.recognizer import DEFAULT_CHECKPOINT, ROOT, EmotionRecognizer
from inference.server import HeaderDeadline, ServeOptions, create_app


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Serve expression recognition over HTTP, with a web page.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=number(int, 0, 65535), default=8000, help="port to listen on")
    p.add_argument("--checkpoint", default=None,
                   help=f"model file: .safetensors, .pth or an exported .onnx "
                        f"(default {DEFAULT_CHECKPOINT.relative_to(ROOT)})")
    p.add_argument("--detector", default="auto", choices=sorted(DETECTORS), help="face detector (as predict.py)")
    add_fallback_args(p)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average each face's prediction with its mirror image's, as predict.py does "
                        "(default: on, so that both answer alike; --no-tta for one pass)")
    p.add_argument("--workers", type=number(int, 1), default=None,
                   help="requests recognised at once (default: one per CPU core)")
    p.add_argument("--threads", type=number(int, 1), default=None,
                   help="CPU threads per request for the model (default: twice the cores divided among the "
                        "workers, at most all of them)")
    p.add_argument("--queue", type=number(int, 0), default=16,
                   help="requests that may wait for a worker; one more is answered 503 with Retry-After")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="fetch {\"url\": ...} from loopback, private and link-local addresses too (by default "
                        "only public ones: clients cannot make the server reach its own network)")
    p.add_argument("--fetch-workers", type=number(int, 1), default=4,
                   help="{\"url\": ...} downloads at once, on threads of their own (a stalling site never holds "
                        "up uploads)")
    p.add_argument("--fetch-queue", type=number(int, 0), default=8,
                   help="URL downloads that may wait for one of those threads; one more gets 503")
    p.add_argument("--max-connections", type=number(int, 1), default=2048,
                   help="open connections (and requests) at once; past it new requests get 503")
    p.add_argument("--header-timeout", type=number(float, 0, low_open=True), default=10.0,
                   help="seconds a connection has to send a request's headers, then it is closed")
    p.add_argument("--keep-alive", type=number(float, 0, low_open=True), default=5.0,
                   help="seconds an idle connection is kept open between requests")
    p.add_argument("--shutdown-timeout", type=number(float, 0, low_open=True), default=5.0,
                   help="seconds running requests get to finish after SIGTERM or Ctrl-C")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (https://app.example) whose pages may call the API from a browser; "
                        "repeat for more; none by default, and then POSTs from other sites' pages are refused")
    p.add_argument("--smooth", type=number(float, 0), default=0.5,
                   help="live sessions (the page's webcam): time constant in seconds of each face's moving "
                        "average of probabilities (0: none)")
    p.add_argument("--max-missed", type=number(int, 0), default=10,
                   help="live sessions: a face's track ends after this many frames without it")
    p.add_argument("--max-sessions", type=number(int, 1), default=256,
                   help="live sessions kept at once (the least recently used is dropped first)")
    p.add_argument("--cache-dir", default=None, help="ONNX export cache (default $FER_CACHE_DIR or ~/.cache/fer)")
    add_limit_args(p)
    return p


def resolve_workers(workers, threads, cores=None):
    """(workers, threads per worker's model). By default a worker per core, so that requests
    overlap (one decodes or detects while another is classified), and each worker's model may use
    twice its share of the cores: a worker alone (one client) runs the mirrored pair of flip TTA on
    two cores, and a full pool oversubscribes the cores twice at most (ONNX Runtime's idle threads
    do not spin). docs/serve.md (Speed) measures this against one thread per worker."""
    cores = cores or os.cpu_count() or 1
    workers = workers or cores
    return workers, threads or max(1, min(cores, 2 * cores // workers))


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the start-up line is printed, so the URL printed is real
    (with --port 0, the port the system chose)."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except (OSError, OverflowError) as err:
        raise UserError(f"cannot listen on {host}:{port} ({getattr(err, 'strerror', None) or err}); "
                        "choose another --port or --host") from None
    # Connections accepted from it inherit this. asyncio sets it only on sockets made with
    # proto=IPPROTO_TCP, which create_server's are not: without it, Nagle's algorithm and the
    # client's delayed ACK held every answer on a kept-alive connection for 40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def check_origins(origins):
    """Each --cors-origin as a browser sends it: scheme://host[:port], nothing after."""
    for origin in origins:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise UserError(f"--cors-origin {origin!r}: give a web origin such as https://app.example "
                            "(scheme and host, no path)")
    return origins


def raise_open_files_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files towards `wanted` (at most the hard limit): the
    default 1,024 runs out under a thousand idle connections, and then nothing can be accepted."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    workers, threads = resolve_workers(args.workers, args.threads)
    recognizer = EmotionRecognizer(args.checkpoint, detector=args.detector, threads=threads, cache_dir=args.cache_dir,
                                   max_pixels=args.max_pixels, tta=args.tta, fallback=fallback_from_args(args))
    options = ServeOptions(limits=limits_from_args(args, allow_private=args.allow_private_urls),
                           max_pixels=args.max_pixels, workers=workers, queue=args.queue,
                           cors_origins=tuple(check_origins(args.cors_origin)), fetch_workers=args.fetch_workers,
                           fetch_queue=args.fetch_queue, smooth=args.smooth, max_missed=args.max_missed,
                           sessions=args.max_sessions)
    app = create_app(recognizer, options)
    sock = listen(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {recognizer.checkpoint} ({recognizer.meta.model}, {len(recognizer.classes)} classes, "
          f"{recognizer.img_size} px, {'grey' if recognizer.grayscale else 'colour'} faces; {workers} worker(s) x "
          f"{threads} thread(s)) at http://{host}:{sock.getsockname()[1]}/", flush=True)
    raise_open_files_limit(args.max_connections + 256)  # each connection is a file descriptor
    protocol = type("Protocol", (HeaderDeadline,), {"header_timeout": args.header_timeout})
    config = uvicorn.Config(app, log_level="warning", http=protocol, limit_concurrency=args.max_connections,
                            timeout_keep_alive=args.keep_alive, timeout_graceful_shutdown=args.shutdown_timeout)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))

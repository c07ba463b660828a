"""What glibc malloc's defaults cost CPU training: step time and page faults with and without
`utils.misc.keep_freed_memory` (train.py, test.py and benchmarks.bench turn it on for the CPU).

    python3 benchmarks/bench_malloc.py                      # DAN and ResNet-18 at 112 px, DAN and EfficientNet-B3 at 224
    python3 benchmarks/bench_malloc.py --setups dan:112 --rounds 5

mallopt settings hold for a whole process, so every measurement is a fresh process, the two
settings alternating round after round; each line is the median over rounds.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model: str, size: int, batch: int, steps: int, threads: int) -> dict:
    """One process: build, warm up, then time `steps` training steps (forward, losses, backward, SGD)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.bench_step_profile import Setup
    from utils.misc import keep_freed_memory

    torch.set_num_threads(threads)
    tuned = keep_freed_memory()  # does nothing with FER_MALLOC_TUNING=0; before the model is built
    setup = Setup(model, size, batch, "channels_last")
    for _ in range(2):
        setup.run()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        setup.run()
    seconds = (time.perf_counter() - start) / steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"tuned": tuned, "ms_per_step": 1000 * seconds,
            "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
            "kernel_ms_per_step": 1000 * (after.ru_stime - before.ru_stime) / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setups", nargs="+", default=["dan:112", "resnet18:112", "dan:224", "efficientnet_b3:224"],
                   help="model:size pairs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        model, size = args.child.split(":")
        print(json.dumps(measure(model, int(size), args.batch_size, args.steps, args.threads)))
        return
    results = {}
    for _ in range(args.rounds):
        for setup in args.setups:
            for tuning in ("0", "1"):
                run = subprocess.run([sys.executable, __file__, "--child", setup, "--batch-size", str(args.batch_size),
                                      "--steps", str(args.steps), "--threads", str(args.threads)],
                                     env={**os.environ, "FER_MALLOC_TUNING": tuning}, capture_output=True, text=True,
                                     check=True)
                results.setdefault((setup, tuning), []).append(json.loads(run.stdout.strip().splitlines()[-1]))
    print(f"batch {args.batch_size}, {args.threads} threads, median of {args.rounds} processes of {args.steps} steps\n")
    print("| model, size | glibc malloc | ms per step | minor faults per step | kernel ms per step | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    table = []
    for setup in args.setups:
        base = statistics.median(r["ms_per_step"] for r in results[(setup, "0")])
        for tuning, label in (("0", "default"), ("1", "keep_freed_memory")):
            runs = results[(setup, tuning)]
            row = {"setup": setup, "malloc": label,
                   **{k: statistics.median(r[k] for r in runs) for k in
                      ("ms_per_step", "minor_faults_per_step", "kernel_ms_per_step")}}
            row["speedup"] = base / row["ms_per_step"]
            table.append(row)
            print(f"| {setup.replace(':', ', ')} px | {label} | {row['ms_per_step']:.0f} | "
                  f"{row['minor_faults_per_step']:,.0f} | {row['kernel_ms_per_step']:.0f} | {row['speedup']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": table}, indent=1))


if __name__ == "__main__":
    main()

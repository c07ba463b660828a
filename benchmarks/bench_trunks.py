"""What a trunk costs per face: DAN on ResNet-18 and on dlib's face-recognition ResNet, through
ONNX Runtime at batch 1, as predict.py runs them (BatchNorms and scales folded, heads merged).

    python3 benchmarks/bench_trunks.py [--threads 1 2] [--runs 200]

Random weights (speed does not depend on them). Each model is exported once, warmed up, then
timed `--runs` times; the median and the 10th-90th percentile spread are printed per thread
count, with the multiply-accumulates of one face. Run it on an idle machine: docs/speed.md.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import ort_session, write_onnx  # noqa: E402
from networks import build_model, fuse  # noqa: E402

# (label, model name, model arguments, input side)
MODELS = (
    ("DAN, ResNet-18 trunk, 112 px (the shipped models)", "dan", {}, 112),
    ("DAN, ResNet-18 trunk, 224 px (the paper's size)", "dan", {}, 224),
    ("DAN, face_resnet trunk, 150 px", "dan", {"trunk": "face_resnet"}, 150),
    ("plain classifier, face_resnet trunk, 150 px", "face_resnet", {}, 150),
    ("plain classifier, ResNet-18 trunk, 112 px", "resnet18", {}, 112),
)


def macs(model: torch.nn.Module, size: int) -> float:
    """Multiply-accumulates of convolutions and linear layers for one face (forward hooks)."""
    total = [0]

    def conv_hook(m, _, out):
        total[0] += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, _, out):
        total[0] += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total[0]


def time_session(session, size: int, runs: int) -> list:
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    name = session.get_inputs()[0].name
    for _ in range(max(10, runs // 10)):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    torch.manual_seed(0)
    print("| model | MACs per face | params | " + " | ".join(f"ORT {t} thread(s): median (p10-p90) ms"
                                                           for t in args.threads) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in args.threads) + " |")
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, options, size in MODELS:
            model = build_model(name, num_classes=8, **options).eval()
            params = sum(p.numel() for p in model.parameters())
            fused = fuse(model)
            path = write_onnx(fused, Path(tmp) / f"{name}-{size}.onnx", size)
            cells = []
            for threads in args.threads:
                times = sorted(time_session(ort_session(path, threads), size, args.runs))
                p10, p90 = times[len(times) // 10], times[len(times) * 9 // 10]
                cells.append(f"{statistics.median(times):.2f} ({p10:.2f}-{p90:.2f})")
            print(f"| {label} | {macs(model, size) / 1e9:.2f} G | {params / 1e6:.1f} M | " + " | ".join(cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()

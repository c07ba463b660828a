"""Where a CPU training step's time goes: DAN against plain ResNet-18, phase by phase, and each
convolution shape's speed in multiply-adds per second.

    python3 benchmarks/bench_step_profile.py                   # 112 px, batch 32, channels_last
    python3 benchmarks/bench_step_profile.py --size 224 --layout nchw --json runs/profile.json

Phases (forward with the losses, backward, SGD step) are timed in interleaved rounds, so a change
in the machine's load hits both models alike; each figure is the median step. The convolution
table comes from torch.profiler over DAN's steps, grouped by input and weight shape; multiply-adds
are counted from the shapes the layers saw, so "GMAC/s" compares the heads' small convolutions
with the trunk's on equal terms. docs/speed.md reads these figures.
"""
import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.bench import _timed  # noqa: E402
from networks import build_criterion, build_model  # noqa: E402
from utils.engine import TrainStep  # noqa: E402
from utils.misc import keep_freed_memory  # noqa: E402

PHASES = ("forward", "backward", "optimizer", "step")
Shapes = Tuple[Tuple[int, ...], Tuple[int, ...]]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds of --steps steps per model")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


class HeadsNCHW(nn.Module):
    """DAN with a channels_last trunk and NCHW heads: the trunk's map is converted once."""

    def __init__(self, dan: nn.Module):
        super().__init__()
        self.dan = dan

    def forward(self, x: torch.Tensor):
        return self.dan.forward_head(self.dan.forward_features(x).contiguous())


class Setup:
    """One model with its criterion and SGD, and one fixed batch."""

    def __init__(self, model: str, size: int, batch: int, layout: str, heads_nchw: bool = False):
        torch.manual_seed(0)
        net = build_model(model, num_classes=7)
        self.step = TrainStep(HeadsNCHW(net) if heads_nchw else net, build_criterion(model, net))
        self.x = torch.randn(batch, 3, size, size)
        if layout == "channels_last":
            self.step = self.step.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        if heads_nchw:
            net.heads.to(memory_format=torch.contiguous_format)
        self.y = torch.randint(0, 7, (batch,))
        self.optimizer = torch.optim.SGD(self.step.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def run(self) -> Tuple[float, float, float]:
        """One training step; seconds of its forward (with the losses), backward and SGD step."""
        t0 = time.perf_counter()
        _, _, loss = self.step(self.x, self.y)
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        self.optimizer.step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2


def phase_times(setups: Dict[str, Setup], rounds: int, steps: int) -> Dict[str, Dict[str, float]]:
    """Median milliseconds per phase and for the whole step, per model."""
    for s in setups.values():
        for _ in range(2):
            s.run()
    samples: Dict[str, List[Tuple[float, ...]]] = defaultdict(list)
    for _ in range(rounds):
        for name, s in setups.items():
            for _ in range(steps):
                parts = s.run()
                samples[name].append((*parts, sum(parts)))
    return {name: {phase: 1000 * statistics.median(column) for phase, column in zip(PHASES, zip(*rows))}
            for name, rows in samples.items()}


def conv_macs_per_call(model: nn.Module, run: Callable[[], object]) -> Dict[Shapes, Tuple[int, int]]:
    """Multiply-adds of one call of each convolution, forward and backward, keyed by (input shape,
    weight shape). The backward computes the weight's gradient, and the input's unless the input is
    the image (the first convolution)."""
    macs: Dict[Shapes, Tuple[int, int]] = {}

    def hook(module: nn.Conv2d, inputs, output) -> None:
        w = module.weight
        forward = output.numel() * w.shape[1] * w.shape[2] * w.shape[3]  # (Cin / groups) * kh * kw each
        macs[(tuple(inputs[0].shape), tuple(w.shape))] = (forward, forward * (1 + inputs[0].requires_grad))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return macs


def conv_table(setup: Setup, steps: int) -> List[Dict]:
    """Per convolution shape: calls, forward and backward ms per step and GMAC/s of each."""
    macs = conv_macs_per_call(setup.step, setup.run)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            setup.run()
    rows: Dict[Shapes, Dict] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key == "aten::mkldnn_convolution":  # (input, weight, bias, ...)
            key, phase = (tuple(event.input_shapes[0]), tuple(event.input_shapes[1])), "forward"
        elif event.key == "aten::convolution_backward":  # (grad_output, input, weight, ...)
            key, phase = (tuple(event.input_shapes[1]), tuple(event.input_shapes[2])), "backward"
        else:
            continue
        if key not in macs:
            continue
        row = rows.setdefault(key, {"input": list(key[0]), "weight": list(key[1]),
                                    "calls": event.count // steps, "forward_mac_per_call": macs[key][0],
                                    "backward_mac_per_call": macs[key][1]})
        ms = event.cpu_time_total / 1000 / steps  # profiler times are in microseconds
        work = row[f"{phase}_mac_per_call"] * row["calls"]
        row[f"{phase}_ms"] = ms
        row[f"{phase}_gmac_s"] = work / (ms / 1000) / 1e9
    return sorted(rows.values(), key=lambda r: -(r.get("forward_ms", 0) + r.get("backward_ms", 0)))


def _median_ms(fn: Callable[[], object], rounds: int, calls: int = 4) -> float:
    """Median over `rounds` of the mean time of `calls` calls, after one untimed call."""
    fn()
    times = _timed(lambda: [fn() for _ in range(calls)], rounds, torch.device("cpu"))
    return 1000 * statistics.median(times) / calls


def head_conv_forms(batch: int, side: int, layout: str, rounds: int) -> List[Dict]:
    """One head's 3x3, 1x3 and 3x1 convolutions (256 -> 512 channels on the trunk's side x side
    map), forward and backward, as DAN runs them (oneDNN) and as matrix products over one shared
    im2col (the 1x3 and 3x1 taps are slices of the 3x3's columns, so no zero-padded kernels);
    and the matrix product's own speed at that shape."""
    c_in, c_out, n = 256, 512, batch * side * side
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(batch, c_in, side, side).contiguous(memory_format=fmt).requires_grad_()
    kernels = {k: torch.randn(c_out, c_in, *k).contiguous(memory_format=fmt).requires_grad_()
               for k in ((3, 3), (1, 3), (3, 1))}
    grads = torch.randn(batch, c_out, side, side).contiguous(memory_format=fmt)
    # Taps (row, column) of the 3x3 window, ordered so that the middle row is taps 0-2 and the
    # middle column taps 2-4: each is then a contiguous run of the im2col's columns.
    taps = [(1, 0), (1, 2), (1, 1), (0, 1), (2, 1), (0, 0), (0, 2), (2, 0), (2, 2)]

    def onednn_outputs():
        return [torch.nn.functional.conv2d(x, w, padding=(k[0] // 2, k[1] // 2)) for k, w in kernels.items()]

    def im2col_outputs():
        padded = torch.nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (B, H+2, W+2, C)
        cols = torch.cat([padded[:, i:i + side, j:j + side] for i, j in taps], dim=3).reshape(n, 9 * c_in)
        w33 = torch.stack([kernels[(3, 3)][:, :, i, j] for i, j in taps], 1).reshape(c_out, -1)
        w13 = torch.stack([kernels[(1, 3)][:, :, 0, j] for j in (0, 2, 1)], 1).reshape(c_out, -1)
        w31 = torch.stack([kernels[(3, 1)][:, :, i, 0] for i in (1, 0, 2)], 1).reshape(c_out, -1)
        return [cols @ w33.t(), cols[:, :3 * c_in] @ w13.t(), cols[:, 2 * c_in:5 * c_in] @ w31.t()]

    with torch.no_grad():  # the two forms compute the same thing
        for ref, out in zip(onednn_outputs(), im2col_outputs()):
            ref = ref.permute(0, 2, 3, 1).reshape(n, c_out)
            assert torch.allclose(ref, out, rtol=1e-3, atol=1e-3 * float(ref.abs().max())), "im2col form differs"
    flat_grads = grads.permute(0, 2, 3, 1).reshape(n, c_out)
    a, b = torch.randn(n, 9 * c_in), torch.randn(9 * c_in, c_out)
    head_work = 3 * n * c_out * 15 * c_in  # 9 + 3 + 3 taps; forward, then the input's and weight's gradients

    def train(outputs: Callable[[], List[torch.Tensor]], output_grads: torch.Tensor) -> None:
        torch.autograd.backward(outputs(), [output_grads] * 3)
        for t in (x, *kernels.values()):
            t.grad = None

    rows = []
    for name, fn, work in (("head's three convolutions, oneDNN (as DAN)",
                            lambda: train(onednn_outputs, grads), head_work),
                           ("head's three convolutions, shared im2col + matrix products",
                            lambda: train(im2col_outputs, flat_grads), head_work),
                           (f"matrix product alone, {n}x{9 * c_in} by {9 * c_in}x{c_out}", lambda: a @ b,
                            n * 9 * c_in * c_out)):
        ms = _median_ms(fn, rounds)
        rows.append({"name": name, "ms": ms, "gmac_s": work / (ms / 1000) / 1e9})
    return rows


def format_report(phases: Dict[str, Dict[str, float]], convs: List[Dict], forms: List[Dict]) -> str:
    lines = ["| phase | DAN ms | ResNet-18 ms | DAN - ResNet-18 | DAN / ResNet-18 |", "|---|---:|---:|---:|---:|"]
    dan, res = phases["dan"], phases["resnet18"]
    for phase in PHASES:
        lines.append(f"| {phase} | {dan[phase]:.1f} | {res[phase]:.1f} | {dan[phase] - res[phase]:.1f} | "
                     f"{dan[phase] / res[phase]:.3f} |")
    if "dan, heads NCHW" in phases:
        mixed = phases["dan, heads NCHW"]["step"]
        lines.append(f"| step, DAN's heads in NCHW | {mixed:.1f} | {res['step']:.1f} | {mixed - res['step']:.1f} | "
                     f"{mixed / res['step']:.3f} |")
    lines += ["", "| DAN convolution: input -> weight | calls | forward ms | GMAC/s | backward ms | GMAC/s |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in convs:
        shape = "x".join(map(str, r["input"])) + " -> " + "x".join(map(str, r["weight"]))
        lines.append(f"| {shape} | {r['calls']} | {r.get('forward_ms', 0):.2f} | {r.get('forward_gmac_s', 0):.0f} | "
                     f"{r.get('backward_ms', 0):.2f} | {r.get('backward_gmac_s', 0):.0f} |")
    lines += ["", "| forward and backward | ms | GMAC/s |", "|---|---:|---:|"]
    lines += [f"| {r['name']} | {r['ms']:.2f} | {r['gmac_s']:.0f} |" for r in forms]
    return "\n".join(lines)


def main(args) -> Dict:
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as train.py on the CPU
    setups = {name: Setup(name, args.size, args.batch, args.layout) for name in ("dan", "resnet18")}
    if args.layout == "channels_last":
        setups["dan, heads NCHW"] = Setup("dan", args.size, args.batch, args.layout, heads_nchw=True)
    phases = phase_times(setups, args.rounds, args.steps)
    convs = conv_table(setups["dan"], args.steps)
    side = setups["dan"].step.model.forward_features(setups["dan"].x).shape[-1]
    forms = head_conv_forms(args.batch, side, args.layout, args.rounds)
    print(f"{args.size} px, batch {args.batch}, {args.layout}, {args.threads} threads, "
          f"median of {args.rounds * args.steps} steps\n")
    print(format_report(phases, convs, forms))
    report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "phases_ms": phases, "convolutions": convs, "head_convolution_forms": forms}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())

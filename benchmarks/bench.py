"""How fast training and inference are: one table, every figure measured in the same run.

    python3 -m benchmarks.bench                                   # this machine (CUDA if present)
    python3 -m benchmarks.bench --data /path/to/fer2013 --json runs/bench-cpu.json
    python3 -m benchmarks.bench --device cuda --compile           # a GPU, torch.compile included
    python3 -m benchmarks.bench --quick                           # tiny sizes in seconds: proves it runs
    python3 -m benchmarks.bench --compare before.json after.json  # two --json runs side by side

Sections, each printed as a markdown table:

- training: images/s of a full training step (forward, DAN's losses, backward, SGD) as train.py
  runs it, for DAN, EfficientNet-B3 and ResNet-18 at each size: the model step alone (one batch
  already on the device, already augmented) and with the data pipeline (batches sliced from
  the in-memory uint8 cache and augmented on the device, train.py's default for small
  datasets), and their ratio; DAN's step time over ResNet-18's;
- speed-ups: DAN training with data, each optimisation added to the one before (bf16
  autocast, channels_last, heads run together, torch.compile with --compile);
- data pipeline alone: decode + augment in images/s, streamed through 0..k DataLoader workers,
  and sliced from the cache;
- inference: DAN per face at batch 1 (median and 90th percentile ms) and batch 32 (images/s):
  PyTorch eager, PyTorch with `networks.fuse`, ONNX Runtime on the CPU (unfused and fused
  export, fp32 and int8);
- accuracy (with a trained checkpoint and a val split): PyTorch, the fused export in ONNX
  Runtime, and its int8 quantisation, on the whole val split.

Peak memory is what a measurement adds: the CUDA allocator's peak for GPU rows, the process's
peak resident memory (VmHWM, reset per measurement) for CPU rows. Weights do not change the
speed, so speed rows use random weights; only the accuracy rows read the checkpoint.
"""
import argparse
import ctypes
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from common.errors import UserError, run_cli
from data.datasets import FaceFolder
from data.loading import Batches, ShardedSampler, TensorCache
from data.transforms import PRESETS, Normalize, TrainAugment
from inference.export import model_proto, quantize_int8
from inference.runtime import session_options
from networks import build_criterion, build_model, fuse, model_spec
from networks.dan import group_heads
from utils.checkpoint import load_model
from utils.distributed import DistInfo
from utils.engine import Optimisation, Precision, Runtime, TrainInputs, TrainStep, train_one_epoch
from utils.misc import cpu_count, resolve_device, setup_backend, setup_logging

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench")
CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
MODELS = ("dan", "efficientnet_b3", "resnet18")
QUIET = DistInfo(rank=1, world_size=1)  # a process that is not rank 0 draws no progress bar


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark training and inference speed.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", default=None, help="also write every figure and the machine's description here")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps: seconds, not minutes")
    p.add_argument("--data", default=None,
                   help="a dataset folder with train/ (and val/ for the accuracy rows); default Data/fer2013 "
                        "if present, else generated images")
    p.add_argument("--checkpoint", default=str(ROOT / "Data" / "dan_fer2013.safetensors"),
                   help="trained model for the accuracy rows (skipped when missing)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="training image sizes (default 112 224)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 32 on CPU, 256 on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="training steps per timing (default 2 CPU, 20 CUDA)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timings per training row, interleaved between rows; rows give the median (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 10 CUDA)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for training (0: one per core; 1 with --quick)")
    p.add_argument("--infer-threads", type=int, default=0, help="CPU threads for inference rows (0: 2; 1 with --quick)")
    p.add_argument("--infer-size", type=int, nargs="+", default=None,
                   help="inference image sizes (default 224, the issue's target, and 112, the shipped model)")
    p.add_argument("--compile", action="store_true", help="add torch.compile to the speed-up rows")
    p.add_argument("--compare", nargs="+", metavar="JSON", default=None,
                   help="measure nothing: set side by side the --json reports of earlier runs (the first is the base)")
    p.add_argument("--skip", nargs="*", default=[], choices=["training", "speedups", "data", "inference", "accuracy"],
                   help="sections to leave out")
    return p


@dataclass
class Settings:
    """What one run measures: training sizes and batch, `repeats` timings of `steps` steps after
    `warmup`, a pool of `pool` decoded images, inference sizes and batch with `latency_runs`
    batch-1 calls and `throughput_runs` batch calls, DataLoader worker counts to try."""

    device: torch.device
    quick: bool
    sizes: List[int]
    infer_sizes: List[int]
    batch: int
    infer_batch: int
    steps: int
    warmup: int
    repeats: int
    pool: int
    latency_runs: int
    throughput_runs: int
    workers: List[int]


def _given(value, default):
    return default if value is None else value


def settings_for(args, device: torch.device) -> Settings:
    """Sizes, batches and repetitions for this device; --quick shrinks everything."""
    if args.batch_size is not None and args.batch_size < 2:
        raise UserError("--batch-size must be at least 2 (BatchNorm trains on more than one image)")
    if min(_given(args.steps, 1), _given(args.repeats, 1)) < 1 or _given(args.warmup, 0) < 0:
        raise UserError("--steps and --repeats must be at least 1, --warmup at least 0")
    if any(size < 32 for size in (args.sizes or []) + (args.infer_size or [])):
        raise UserError("image sizes must be at least 32 (the backbones downsample 32x)")
    cuda = device.type == "cuda"
    if args.quick:
        return Settings(device, True, args.sizes or [64], args.infer_size or [64], _given(args.batch_size, 4), 4,
                        _given(args.steps, 2), _given(args.warmup, 2), _given(args.repeats, 1), 16, 3, 1, [0, 1])
    cores = cpu_count()
    workers = sorted({0, 1, min(2, cores), min(4, cores), min(8, cores)}) if cuda else sorted({0, 1, min(2, cores)})
    return Settings(device, False, args.sizes or [112, 224], args.infer_size or [224, 112],
                    _given(args.batch_size, 256 if cuda else 32), 32, _given(args.steps, 20 if cuda else 2),
                    _given(args.warmup, 10 if cuda else 2), _given(args.repeats, 3), 2048 if cuda else 512, 50, 5,
                    workers)


# ---- measuring -------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_memory() -> None:
    gc.collect()
    try:  # give freed heap back to the system so the next peak starts from what is really in use
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def peak_memory(device: torch.device, out: Dict[str, float]):
    """Set out["peak_mib"] to the memory added at the peak of the block: the CUDA allocator's on a
    GPU, else the process's resident set (Linux: VmHWM after resetting it through clear_refs)."""
    _release_memory()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield
        _sync(device)
        out["peak_mib"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    start = _rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
    except OSError:
        start = None
    yield
    peak = _rss_kib("VmHWM")
    out["peak_mib"] = (peak - start) / 1024 if start is not None and peak is not None else float("nan")


def _timed(fn: Callable[[], None], runs: int, device: torch.device) -> List[float]:
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


# ---- data ------------------------------------------------------------------------------------

def write_synthetic_dataset(root: Path, per_class: int, seed: int = 0) -> Path:
    """Grey 48x48 JPEGs (smooth random shapes, as FER2013's size and format) under root/train/<class>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in CLASSES:
        folder = root / "train" / c
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coarse = Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8))
            fine = np.asarray(coarse.resize((48, 48), Image.BICUBIC), dtype=np.int16)
            noisy = np.clip(fine + rng.normal(0, 8, fine.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def subset(dataset: FaceFolder, n: int) -> FaceFolder:
    """Keep n samples spread evenly over the (class-sorted) list, in place."""
    step = max(1, len(dataset.samples) // n)
    dataset.samples = dataset.samples[::step][:n]
    return dataset


class Repeat:
    """Exactly `steps` batches from `batches`, epoch after epoch; len() is what train_one_epoch reads."""

    def __init__(self, batches, steps: int):
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator:
        done, epoch = 0, 0
        while True:
            if hasattr(self.batches, "sampler"):
                self.batches.sampler.set_epoch(epoch)
            for batch in self.batches:
                yield batch
                done += 1
                if done == self.steps:
                    return
            epoch += 1


class Pools:
    """Decoded training images per size, cached on the device like train.py's TensorCache."""

    def __init__(self, root: Path, n: int, device: torch.device):
        self.root, self.n, self.device = root, n, device
        self._caches: Dict[int, TensorCache] = {}

    def dataset(self, size: int, n: Optional[int] = None) -> FaceFolder:
        return subset(FaceFolder([self.root], "train", size), n or self.n)

    def cache(self, size: int) -> TensorCache:
        if size not in self._caches:
            self._caches[size] = TensorCache(self.dataset(size), self.device, min(4, cpu_count()),
                                             desc=f"decoding {size} px")
        return self._caches[size]


# ---- training --------------------------------------------------------------------------------

@dataclass
class TrainSetup:
    """One way to train: model, image size and the optimisations switched on."""

    model: str
    size: int
    amp: bool = False
    channels_last: bool = False
    grouped: bool = False
    compile: bool = False


class Trainer:
    """One training setup, built once and timed many times with train.py's training loop
    (utils.engine.train_one_epoch).

    With data, batches are sliced from the in-memory uint8 cache and augmented on the device;
    without, one batch already augmented on the device is fed again and again: the model step
    alone. `memory["peak_mib"]` is the peak added while building it and running the warm-up steps.
    """

    def __init__(self, setup: TrainSetup, pools: Pools, s: Settings, with_data: bool):
        self.setup, self.s, self.memory = setup, s, {}
        cache = pools.cache(setup.size)
        augment = TrainAugment(PRESETS["rafdb"], Normalize())
        with peak_memory(s.device, self.memory):
            torch.manual_seed(0)
            options = dict(model_spec(setup.model).options)
            model = build_model(setup.model, num_classes=len(CLASSES), **options)
            if setup.grouped:
                model = group_heads(model)
            self.step = TrainStep(model, build_criterion(setup.model, model)).to(s.device)
            if setup.channels_last:
                self.step = self.step.to(memory_format=torch.channels_last)
            if setup.compile:
                self.step.model = torch.compile(model)
            self.optimizer = torch.optim.SGD(self.step.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: 1.0)
            self.precision = Precision.choose(s.device, True) if setup.amp else Precision()
            self.scaler = torch.amp.GradScaler(s.device.type, enabled=self.precision.needs_scaler)
            if with_data:
                sampler = ShardedSampler(len(cache.labels), True, seed=0)
                self.batches, self.augment = Batches(None, sampler, s.batch, cache, drop_last=True), augment
            else:
                idx = torch.arange(s.batch, device=cache.device) % len(cache.labels)
                fixed = (augment(cache.images[idx]), cache.labels[idx], cache.sources[idx], idx)
                self.batches, self.augment = [fixed], (lambda images: images)
            self.run(s.warmup)

    def run(self, steps: int) -> None:
        train_one_epoch(self.step, Repeat(self.batches, steps),
                        Optimisation(self.optimizer, self.scheduler, self.scaler), TrainInputs(self.augment),
                        Runtime(self.s.device, self.precision, self.setup.channels_last, QUIET), desc="bench")

    def images_per_s(self) -> float:
        return self.s.steps * self.s.batch / _timed(lambda: self.run(self.s.steps), 1, self.s.device)[0]


def interleaved_rates(trainers: Sequence[Trainer], s: Settings) -> List[List[float]]:
    """images/s of each trainer in each of s.repeats rounds ([trainer][round]). Every round times
    each trainer once, so a change in the machine's load hits all of them alike, and ratios are
    taken within a round."""
    for t in trainers:  # building each one trimmed the heap (peak_memory): fault the memory back in, untimed
        t.run(1)
    rounds = [[t.images_per_s() for t in trainers] for _ in range(s.repeats)]
    return [list(rates) for rates in zip(*rounds)]


def _median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def training_rows(pools: Pools, s: Settings) -> List[Dict]:
    """Per size: each model's step alone and with data (train.py's settings), plus DAN and
    ResNet-18 in NCHW, the layout of DAN's reference code, for the step-time ratio in its terms."""
    rows, cuda = [], s.device.type == "cuda"
    for size in s.sizes:
        keys = [(model, with_data, True) for model in MODELS for with_data in (False, True)]
        keys += [("dan", False, False), ("resnet18", False, False)]
        trainers = [Trainer(TrainSetup(model, size, amp=cuda, channels_last=cl), pools, s, with_data)
                    for model, with_data, cl in keys]
        rates = dict(zip(keys, interleaved_rates(trainers, s)))
        memory = {key: t.memory for key, t in zip(keys, trainers)}
        del trainers
        for model in MODELS:
            alone, full = rates[(model, False, True)], rates[(model, True, True)]
            rows.append({"section": "training", "name": f"{model} {size} px: model step alone",
                         "images_per_s": statistics.median(alone), "images_per_s_each": alone,
                         **memory[(model, False, True)]})
            rows.append({"section": "training", "name": f"{model} {size} px: with data",
                         "images_per_s": statistics.median(full), "images_per_s_each": full,
                         **memory[(model, True, True)], "ratio": _median_ratio(full, alone),
                         "ratio_of": "with data / step alone"})
            log.info("training %s %d px: %.1f images/s alone, %.1f with data", model, size,
                     statistics.median(alone), statistics.median(full))
        rows.append({"section": "training", "name": f"DAN / ResNet-18 step time, {size} px",
                     "ratio": _median_ratio(rates[("resnet18", False, True)], rates[("dan", False, True)]),
                     "ratio_of": "time per image, model step alone"})
        for model in ("dan", "resnet18"):
            alone = rates[(model, False, False)]
            rows.append({"section": "training", "name": f"{model} {size} px: model step alone, NCHW",
                         "images_per_s": statistics.median(alone), "images_per_s_each": alone,
                         **memory[(model, False, False)]})
        rows.append({"section": "training", "name": f"DAN / ResNet-18 step time, {size} px, NCHW (the reference's layout)",
                     "ratio": _median_ratio(rates[("resnet18", False, False)], rates[("dan", False, False)]),
                     "ratio_of": "time per image, model step alone"})
    return rows


def speedup_rows(pools: Pools, s: Settings, use_compile: bool) -> List[Dict]:
    """DAN training with data, one optimisation added at a time (at the largest size on a GPU,
    the smallest on the CPU)."""
    size = max(s.sizes) if s.device.type == "cuda" else min(s.sizes)
    changes = [("fp32, NCHW, heads one after another", {})]
    if s.device.type == "cuda":  # train.py trains in fp32 on the CPU
        changes.append((f"+ {_amp_name(s.device)} autocast", {"amp": True}))
    changes += [("+ channels_last", {"channels_last": True}), ("+ heads run together (GroupedDAN)", {"grouped": True})]
    if use_compile:
        changes.append(("+ torch.compile", {"compile": True}))
    setups, options = [], {}
    for _, change in changes:
        options.update(change)
        setups.append(TrainSetup("dan", size, **options))
    trainers = [Trainer(setup, pools, s, with_data=True) for setup in setups]
    rates = interleaved_rates(trainers, s)
    rows = []
    for i, ((name, _), trainer) in enumerate(zip(changes, trainers)):
        row = {"section": "speedups", "name": f"DAN {size} px: {name}", "images_per_s": statistics.median(rates[i]),
               "images_per_s_each": rates[i], **trainer.memory, "vs_baseline": _median_ratio(rates[i], rates[0])}
        if i:
            row["ratio"], row["ratio_of"] = _median_ratio(rates[i], rates[i - 1]), "vs the row above"
        rows.append(row)
        log.info("speed-ups %s: %.1f images/s", name, row["images_per_s"])
    return rows


# ---- data pipeline ---------------------------------------------------------------------------

def data_rows(pools: Pools, s: Settings) -> List[Dict]:
    """Decode + augment, no model: streamed through DataLoader workers, and from the cache.

    Each figure is the median over s.repeats passes over the images, after one pass that
    starts the workers.
    """
    size, rows = min(s.sizes), []
    augment = TrainAugment(PRESETS["rafdb"], Normalize())
    dataset = pools.dataset(size, s.pool * (1 if s.quick else 2))
    sampler = ShardedSampler(len(dataset), True, seed=0)

    def rate(batches) -> float:
        def one_pass():
            for images, _, _, _ in batches:
                augment(images.to(s.device, non_blocking=True))
        one_pass()
        return len(dataset) / statistics.median(_timed(one_pass, s.repeats, s.device))

    for workers in s.workers:
        batches = Batches(dataset, sampler, s.batch, None, workers, pin_memory=s.device.type == "cuda")
        plural = "" if workers == 1 else "s"
        rows.append({"section": "data", "name": f"{size} px: decode + augment, {workers} DataLoader worker{plural}",
                     "images_per_s": rate(batches)})
        del batches  # stops its persistent workers
        gc.collect()
    start = time.perf_counter()
    cache = TensorCache(dataset, s.device, max(s.workers), desc="caching")
    rows.append({"section": "data", "name": f"{size} px: fill the in-memory cache ({max(s.workers)} workers), once",
                 "images_per_s": len(dataset) / (time.perf_counter() - start)})
    rows.append({"section": "data", "name": f"{size} px: cached, slice + augment (train.py's default for small sets)",
                 "images_per_s": rate(Batches(dataset, sampler, s.batch, cache))})
    return rows


# ---- inference -------------------------------------------------------------------------------

def write_onnx(model: nn.Module, path: Path, size: int) -> Path:
    """Write a DAN (plain or fused) as ONNX, as predict.py's export does (without metadata)."""
    import onnx

    onnx.save(model_proto(model.cpu().eval(), size), str(path))
    return path


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def _inference_row(name: str, make: Callable[[], Callable], s: Settings, size: int, device: torch.device) -> Dict:
    """Build a predictor (x numpy or tensor -> outputs), then time batch 1 and batch `infer_batch`."""
    result: Dict[str, float] = {}
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    many = rng.standard_normal((s.infer_batch, 3, size, size), dtype=np.float32)
    with peak_memory(device, result):
        predict = make()
        for _ in range(3):
            predict(one)
        latency = _timed(lambda: predict(one), s.latency_runs, device)
        predict(many)
        rate = _timed(lambda: predict(many), s.throughput_runs, device)
    latency_ms = sorted(1000 * t for t in latency)
    return {"section": "inference", "name": f"DAN {size} px: {name}", **result,
            "ms_median": statistics.median(latency_ms),
            "ms_p90": latency_ms[min(len(latency_ms) - 1, int(0.9 * len(latency_ms)))],
            "images_per_s": s.infer_batch / statistics.median(rate)}


def _amp_name(device: torch.device) -> str:
    """bf16 where the GPU has it, else fp16 (with a GradScaler in training), as train.py chooses."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[Precision.choose(device, True).dtype]


def _torch_predictor(model: nn.Module, device: torch.device, amp: bool) -> Callable:
    dtype = Precision.choose(device, amp).dtype

    def predict(x: np.ndarray):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=amp):
            return model(torch.from_numpy(x).to(device))
    return predict


def _ort_predictor(path: Path, threads: int) -> Callable:
    session = ort_session(path, threads)
    return lambda x: session.run(None, {"input": x})


def _dan(state: Dict[str, torch.Tensor]) -> nn.Module:
    """A DAN with these weights, as loading a checkpoint gives it."""
    model = build_model("dan", num_classes=len(CLASSES), num_heads=4)
    model.load_state_dict(state)
    return model.eval()


def inference_rows(s: Settings, threads: int, workdir: Path, pools: Pools) -> List[Dict]:
    """DAN (random weights) per face: PyTorch on the device, ONNX Runtime on the CPU.

    Peak memory covers building the predictor from weights already in memory (model, fuse, or
    ONNX Runtime session) and running it.
    """
    rows, device = [], s.device
    torch.set_num_threads(threads)
    gpu = device.type == "cuda"
    ort_where = f"CPU, {threads} threads"
    where = f"CUDA, {_amp_name(device)} autocast" if gpu else ort_where
    for size in s.infer_sizes:
        torch.manual_seed(0)
        state = build_model("dan", num_classes=len(CLASSES), num_heads=4).state_dict()
        plain_path = write_onnx(_dan(state), workdir / f"dan{size}.onnx", size)
        fused_path = write_onnx(fuse(_dan(state)), workdir / f"dan{size}-fused.onnx", size)
        images = pools.dataset(size, 2 * s.infer_batch)
        calibration = [Normalize()(torch.stack([images.load(i) for i in range(k, k + s.infer_batch)])).numpy()
                       for k in range(0, len(images), s.infer_batch)]
        int8_path = quantize_int8(fused_path, workdir / f"dan{size}-fused-int8.onnx", calibration)
        cpu = torch.device("cpu")
        for name, on, make in [
            (f"PyTorch eager ({where})", device, lambda: _torch_predictor(_dan(state).to(device), device, gpu)),
            (f"PyTorch, networks.fuse ({where})", device,
             lambda: _torch_predictor(fuse(_dan(state)).to(device), device, gpu)),
            (f"ONNX Runtime fp32, unfused export ({ort_where})", cpu, lambda: _ort_predictor(plain_path, threads)),
            (f"ONNX Runtime fp32, fused export ({ort_where})", cpu, lambda: _ort_predictor(fused_path, threads)),
            (f"ONNX Runtime int8, fused export ({ort_where})", cpu, lambda: _ort_predictor(int8_path, threads)),
        ]:
            rows.append(_inference_row(name, make, s, size, on))
            log.info("inference %s: %.2f ms at batch 1", rows[-1]["name"], rows[-1]["ms_median"])
    return rows


# ---- accuracy --------------------------------------------------------------------------------

def _accuracy(predict: Callable[[np.ndarray], np.ndarray], images: torch.Tensor, labels: torch.Tensor,
              normalize: Normalize, batch: int = 64) -> float:
    correct = 0
    for start in range(0, len(labels), batch):
        x = normalize(images[start:start + batch]).numpy()
        correct += int((predict(x).argmax(1) == labels[start:start + batch].numpy()).sum())
    return correct / len(labels)


def accuracy_rows(checkpoint: Path, data: Path, workdir: Path, threads: int,
                  calibration_images: int = 512) -> List[Dict]:
    """Val accuracy of the checkpoint: PyTorch, fused in ONNX Runtime fp32, and int8."""
    model, meta = load_model(checkpoint)
    size = meta.img_size
    normalize = Normalize(meta.mean, meta.std)
    grey = meta.grey_input  # the model's faces as prediction feeds them
    val = FaceFolder([data], "val", size, classes=meta.classes, grayscale=grey)
    cache = TensorCache(val, torch.device("cpu"), min(4, cpu_count()), desc="decoding val")
    train = subset(FaceFolder([data], "train", size, classes=meta.classes, grayscale=grey), calibration_images)
    calib = TensorCache(train, torch.device("cpu"), min(4, cpu_count()), desc="decoding calibration images")
    calibration = [normalize(calib.images[k:k + 64]).numpy() for k in range(0, len(calib.labels), 64)]
    torch.set_num_threads(threads)
    folded = fuse(model)
    fused_path = write_onnx(folded, workdir / "checkpoint-fused.onnx", size)
    int8_path = quantize_int8(fused_path, workdir / "checkpoint-fused-int8.onnx", calibration)

    def torch_predict(m):
        predict = _torch_predictor(m, torch.device("cpu"), amp=False)
        return lambda x: predict(x).logits.numpy()

    def ort_predict(path):
        predict = _ort_predictor(path, threads)
        return lambda x: predict(x)[0]  # outputs: logits first (tools.export_onnx)

    rows = []
    for name, predict in [("PyTorch fp32 (as trained)", torch_predict(model)),
                          ("PyTorch, networks.fuse", torch_predict(folded)),
                          ("ONNX Runtime fp32, fused export", ort_predict(fused_path)),
                          (f"ONNX Runtime int8, fused export (calibrated on {len(calib.labels)} train images)",
                           ort_predict(int8_path))]:
        acc = 100 * _accuracy(predict, cache.images, cache.labels, normalize)
        rows.append({"section": "accuracy", "name": f"{checkpoint.name} on {data.name}/val ({len(val)} images, "
                     f"{size} px): {name}", "accuracy": acc, "points": acc - (rows[0]["accuracy"] if rows else acc)})
        log.info("accuracy %s: %.2f%%", name, acc)
    return rows


# ---- report ----------------------------------------------------------------------------------

COLUMNS = {
    "training": [("images_per_s", "images/s", "{:,.1f}"), ("ratio", "ratio", "{:.2f}"), ("ratio_of", "ratio of", "{}"),
                 ("peak_mib", "peak MiB", "{:,.0f}")],
    "speedups": [("images_per_s", "images/s", "{:,.1f}"), ("ratio", "vs row above", "{:.2f}x"),
                 ("vs_baseline", "vs first row", "{:.2f}x"), ("peak_mib", "peak MiB", "{:,.0f}")],
    "data": [("images_per_s", "images/s", "{:,.0f}")],
    "inference": [("ms_median", "batch 1 median ms", "{:.2f}"), ("ms_p90", "p90 ms", "{:.2f}"),
                  ("images_per_s", "batch {b} images/s", "{:,.1f}"), ("peak_mib", "peak MiB", "{:,.0f}")],
    "accuracy": [("accuracy", "accuracy %", "{:.2f}"), ("points", "vs PyTorch (points)", "{:+.2f}")],
}
TITLES = {"training": "Training (forward, losses, backward, SGD step; as train.py: channels_last, fp32 on "
                      "the CPU, bf16 autocast on CUDA)",
          "speedups": "DAN training speed-ups, data included",
          "data": "Data pipeline alone", "inference": "Inference per face", "accuracy": "Accuracy"}


def format_tables(rows: List[Dict], infer_batch: int) -> str:
    out = []
    for section, columns in COLUMNS.items():
        chosen = [r for r in rows if r["section"] == section]
        if not chosen:
            continue
        heads = ["measurement"] + [title.format(b=infer_batch) for _, title, _ in columns]
        out += [f"### {TITLES[section]}", "", "| " + " | ".join(heads) + " |",
                "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
        for r in chosen:
            cells = [r["name"]] + [fmt.format(r[key]) if r.get(key) is not None else "" for key, _, fmt in columns]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def describe_machine(device: torch.device, threads: int) -> Dict:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": cpu_count(), "torch_threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "device": str(device),
            "command": "python3 -m benchmarks.bench " + " ".join(sys.argv[1:])}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_before"] = os.getloadavg()
    return info


def resolve_data(args) -> Optional[Path]:
    if args.data:
        path = Path(args.data)
        if not (path / "train").is_dir():
            raise UserError(f"--data {path}: no train/ folder inside; give a dataset folder "
                            "(<name>/train/<class>/<image>, as data.prepare writes them)")
        return path
    default = ROOT / "Data" / "fer2013"
    return default if (default / "train").is_dir() and not args.quick else None


# The one figure each kind of row is compared by, and whether more of it is better.
_HEADLINE = (("ms_median", False), ("images_per_s", True), ("accuracy", True), ("ratio", False))


def _headline(row: Dict):
    for key, higher_is_better in _HEADLINE:
        if row.get(key) is not None:
            return key, row[key], higher_is_better
    return None


def compare_reports(paths: Sequence[str]) -> str:
    """A markdown table of the rows of several --json reports side by side: each row's headline
    figure (batch-1 ms, images/s, accuracy or a ratio) in every run, and each later run's
    speed-up over the first (>1 is better, whichever way the figure goes)."""
    reports = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            rows, machine = report["rows"], report["machine"]
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise UserError(f"{path} is not a report written by `python3 -m benchmarks.bench --json`") from None
        reports.append(({(r["section"], r["name"]): r for r in rows}, machine))
    names = list(dict.fromkeys(key for rows, _ in reports for key in rows))
    out = ["| run | machine | torch | command |", "|---|---|---|---|"]
    for i, (_, m) in enumerate(reports):
        out.append(f"| {i + 1}: {Path(paths[i]).name} | {m.get('gpu') or m.get('cpu')}, {m.get('cores')} cores | "
                   f"{m.get('torch')} | `{m.get('command', '')}` |")
    heads = ["measurement", "figure"] + [f"run {i + 1}" for i in range(len(reports))]
    heads += [f"run {i + 1} vs 1" for i in range(1, len(reports))]
    out += ["", "| " + " | ".join(heads) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(heads) - 2)) + "|"]
    for key in names:
        found = [rows.get(key) for rows, _ in reports]
        first = next(r for r in found if r is not None)
        headline = _headline(first)
        if headline is None:
            continue
        figure, _, higher_is_better = headline
        values = [r.get(figure) if r is not None else None for r in found]
        cells = [key[1], figure] + [f"{v:,.2f}" if v is not None else "" for v in values]
        for v in values[1:]:
            if v is None or values[0] is None or not v or not values[0]:
                cells.append("")
            else:
                cells.append(f"{(v / values[0]) if higher_is_better else (values[0] / v):.2f}x")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(args) -> Dict:
    setup_logging()
    if args.compare:
        table = compare_reports(args.compare)
        print(table)
        return {"comparison": table}
    device = resolve_device(args.device)
    s = settings_for(args, device)
    # --quick proves the code runs: one thread keeps it fast when other jobs share the cores
    # (a 2-thread OpenMP region waits for a descheduled thread at every barrier).
    threads = args.threads or (1 if args.quick else cpu_count())
    infer_threads = args.infer_threads or (1 if args.quick else 2)
    # as train.py and test.py set them; autotuning every shape would make --quick slow
    tuned_malloc = setup_backend(device, threads, autotune=not args.quick)
    info = describe_machine(device, threads)
    info["malloc_keeps_freed_memory"] = tuned_malloc
    data = resolve_data(args)
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix="fer-bench-") as tmp:
        workdir = Path(tmp)
        root = data or write_synthetic_dataset(workdir / "synthetic", max(4, -(-2 * s.pool // len(CLASSES))))
        info["data"] = str(data) if data else "generated 48x48 grey JPEGs (no --data)"
        pools = Pools(root, s.pool, device)
        if "training" not in args.skip:
            rows += training_rows(pools, s)
        if "speedups" not in args.skip:
            rows += speedup_rows(pools, s, args.compile)
        if "data" not in args.skip:
            rows += data_rows(pools, s)
        del pools
        if "inference" not in args.skip:
            rows += inference_rows(s, infer_threads, workdir, Pools(root, s.pool, torch.device("cpu")))
            torch.set_num_threads(threads)
        checkpoint = Path(args.checkpoint)
        if "accuracy" not in args.skip and not s.quick:
            if data is not None and (data / "val").is_dir() and checkpoint.is_file():
                rows += accuracy_rows(checkpoint, data, workdir, threads)
            else:
                log.info("accuracy rows skipped: they need --data with a val/ split and --checkpoint")
    if hasattr(os, "getloadavg"):
        info["load_average_after"] = os.getloadavg()
    report = {"machine": info, "settings": {k: (str(v) if isinstance(v, torch.device) else v)
                                            for k, v in vars(s).items()}, "rows": rows}
    load = ""
    if "load_average_before" in info:
        before, after = info["load_average_before"][0], info["load_average_after"][0]
        load = f", load average {before:.2f} at start, {after:.2f} at end"
    print(f"## {info.get('gpu', info['cpu'])} ({info['cores']} cores, torch {info['torch']}, "
          f"{threads} training threads{load})\n")
    print(f"`{info['command']}`; training batch {s.batch}, median of {s.repeats} timings of {s.steps} steps "
          f"after {s.warmup}; data: {info['data']}\n")
    print(format_tables(rows, s.infer_batch))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())

"""Small things every script needs: logging, seeding, device, thread and allocator choice, strict JSON."""
import ctypes
import json
import logging
import math
import os
import random
import sys

import numpy as np
import torch

from common.errors import UserError


def setup_logging(rank: int = 0) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)


def finite_or_none(value):
    """`value` with every NaN and infinity, however deep in dicts, lists and tuples, made None:
    strict JSON has no NaN, and readers other than Python's reject it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def strict_json(value, **kwargs) -> str:
    """json.dumps for files others read: non-finite numbers become null (see finite_or_none)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default every tensor over the mmap threshold (at most 32 MiB) is a fresh mmap, and freed
    heap tops are trimmed, so each training step page-faults its activations in again. With large
    blocks served from the heap, no trimming and a 256 MiB top pad the faults are gone (how many
    there were, and what removing them is worth: docs/speed.md). The process keeps its peak
    memory until it exits, which suits training and evaluation.
    Does nothing (returns False) off glibc, or with FER_MALLOC_TUNING=0 in the environment.
    """
    if os.environ.get("FER_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 256 << 20)))


def setup_backend(device: torch.device, threads: int, deterministic: bool = False, autotune: bool = True) -> bool:
    """The back-end settings of train.py, test.py and the benchmark: `threads` CPU threads; on the
    CPU, glibc's allocator keeps freed memory (keep_freed_memory); on CUDA, cudnn autotuning (unless
    `autotune` is off) and TF32 matrix products; `deterministic` kernels when asked (no autotuning).
    Returns whether the allocator was tuned."""
    torch.set_num_threads(threads)
    tuned = device.type == "cpu" and keep_freed_memory()
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = autotune
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return tuned


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(device: torch.device, cached: bool) -> int:
    """DataLoader workers: on a GPU, most cores; on the CPU the model step already uses every
    core, so one worker for streamed data (more oversubscribes) and none for cached data."""
    if device.type == "cuda":
        return min(8, cpu_count())
    return 0 if cached else 1

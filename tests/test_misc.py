"""utils.misc.keep_freed_memory: large tensors stop page-faulting in again after each free."""
import ctypes
import os
import subprocess
import sys

import pytest

from helpers import ROOT

CHILD = """
import resource, torch
from utils.misc import keep_freed_memory
tuned = keep_freed_memory()
for _ in range(16):  # the heap settles after a few (each may start higher up until freed blocks get reused)
    torch.ones(16 << 20)  # 64 MiB: over glibc's largest mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


def _faults(tuning: str):
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "FER_MALLOC_TUNING": tuning})
    tuned, faults = run.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not _glibc(), reason="glibc's mallopt is not available")
def test_keep_freed_memory_removes_the_page_faults_of_large_tensors():
    tuned, faults = _faults("1")
    untuned, default_faults = _faults("0")
    assert tuned and not untuned  # FER_MALLOC_TUNING=0 turns it off
    # By default each 64 MiB tensor is a fresh mmap: 16,384 pages faulted in, ten times over.
    assert default_faults > 10 * 16384 * 0.9
    assert faults < default_faults / 20

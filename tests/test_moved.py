"""utils/_moved.py: the commands that moved to tools/ still run under their old names for one release."""
import subprocess
import sys

import pytest

from helpers import ROOT
from utils._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_old_name_runs_the_new_module_and_says_so(old):
    new = MOVED[old]
    old_run = subprocess.run([sys.executable, "-m", old, "--help"], cwd=ROOT, capture_output=True, text=True)
    new_run = subprocess.run([sys.executable, "-m", new, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert old_run.returncode == new_run.returncode == 0, old_run.stderr[-500:]
    assert old_run.stdout.split("\n", 1)[1] == new_run.stdout.split("\n", 1)[1]  # past the usage's program name
    assert old_run.stderr.strip() == (f"note: python3 -m {old} is now python3 -m {new}; "
                                      "the old name goes in the next release")
    assert new_run.stderr == ""


def test_an_old_name_passes_arguments_and_exit_codes_through(tmp_path):
    """A bad argument fails as the new command fails: one line, exit 2, no traceback."""
    run = subprocess.run([sys.executable, "-m", "utils.average", str(tmp_path / "missing.pth"), "--out",
                          str(tmp_path / "avg.txt")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last == f"error: --out {tmp_path / 'avg.txt'} must end in .safetensors or .pth"


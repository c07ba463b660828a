"""Files written whole or not at all, and their digests; torch-free (the ONNX Runtime path writes
with these too).

Every file the project writes goes through `atomic_write`: a kill at any instant leaves the old
file or the new one, and at worst a `.<name>.<random>.tmp` that `remove_stale_temps` deletes on
the next start. `fault_point` marks the places the fault-injection tests kill the process at.
"""
import errno
import glob
import hashlib
import os
import signal
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Tuple, Type

from common.errors import first_line

FAULT_ENV = "FER_FAULT_KILL_AT"
_fault_hits: Dict[str, int] = {}
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def file_digest(path) -> str:
    """SHA-256 of a file's bytes, hex (read in 1 MiB blocks; hashlib.file_digest needs Python 3.11)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fault_point(label: str) -> None:
    """Die here by SIGKILL, as `kill -9` or a power cut would, when the environment says
    FER_FAULT_KILL_AT=<label> (or <label>@N: at its N-th pass); otherwise do nothing.

    Labels: `write:<file name>` inside `atomic_write` (temporary file written, not yet renamed),
    and train.py's `saved:<file name>` after each file of an epoch. Used by tests/test_faults_train.py.
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name == label:
        _fault_hits[label] = _fault_hits.get(label, 0) + 1
        if _fault_hits[label] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path, write: Callable[[str], object],
                 disk_errors: Tuple[Type[BaseException], ...] = (RuntimeError,)) -> None:
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file.

    `disk_errors`: what the writer raises for a full disk (torch.save and ONNX raise RuntimeError;
    the safetensors writer passes its own error too); each becomes one OSError line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
        except disk_errors as err:
            raise OSError(errno.EIO, f"the write failed ({first_line(err)}); is the disk full?") from None
        # As open() would create it, not mkstemp's owner-only 0600; after writing, since a writer
        # may replace the file (safetensors' save_file does) instead of writing into it.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        fault_point(f"write:{path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path, names: Iterable[str]) -> List[Path]:
    """Delete the temporary files a killed `atomic_write` of each of `names` left in `folder`
    (`.<name>.*.tmp`); returns them."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed

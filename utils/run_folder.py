"""A training run's folder, written so that a kill at any instant leaves a set a resume makes whole.

    last.pth          the newest complete epoch, with all it takes to continue (written first)
    best.pth          the best epoch so far, as a training checkpoint
    best.safetensors  the same weights alone, for predict.py
    log.jsonl         one strict-JSON line per epoch (NaN and infinities as null)
    curves.png        log.jsonl as curves
    args.json         the resolved arguments

An epoch writes last.pth, then best.pth and best.safetensors when it is the best so far, then
its log line, then the curves; the checkpoints atomically (common.files.atomic_write). So
after a kill last.pth is from some epoch k and every other file from epoch k or k - 1, and
`RunFolder.start` on resume derives them again from last.pth: log.jsonl from its history (which
also drops a half-written line), best.pth and best.safetensors from last.pth when it records a
best epoch they do not hold, the curves from its history. Temporary files of killed writes are
removed on every start.
"""
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch
from safetensors import safe_open

from common.errors import UserError
from common.files import atomic_write, fault_point, remove_stale_temps
from common.meta import META_KEY, ModelMeta
from utils.checkpoint import load_checkpoint, save_checkpoint, save_safetensors
from utils.misc import strict_json
from utils.plots import plot_history

log = logging.getLogger("train")

LOCK_FILE = ".lock"
RUN_FILES = ("last.pth", "best.pth", "best.safetensors", "log.jsonl", "curves.png", "args.json")

_HELD: Dict[str, Any] = {}  # run folder -> its open lock file, held by this process


def release_locks() -> None:
    """Let go of every run folder this process locked (train.py's main does at its end), removing
    the lock files: a finished run's folder holds its run files only. A process that opened the file
    just before it went checks, once it holds the lock, that the file is still the folder's
    (`RunFolder.lock`), so two runs never hold locks on two different files."""
    while _HELD:
        folder, handle = _HELD.popitem()
        try:
            os.unlink(Path(folder) / LOCK_FILE)
        except OSError:
            pass
        handle.close()


class RunFolder:
    """The files of one run in `path` (see the module's docstring for what each holds)."""

    def __init__(self, path):
        self.path = Path(path)

    def lock(self) -> None:
        """Hold an advisory lock on the folder (`.lock`, with this process's id) for as long as this
        process lives, so that a second train.py on the same --output stops at once instead of
        writing over this run's files. The kernel releases it when the process ends, however it
        ends, so a killed run's lock is taken over by the next one; `release_locks` lets it go
        when the run ends inside a process that goes on (a notebook, the tests).

        Raises:
            UserError: another live process holds it, or the folder cannot be written.
        """
        if fcntl is None:  # no POSIX locks on this platform: run unguarded, as before
            return
        key = str(self.path.resolve())
        if key in _HELD:
            return
        while True:
            handle = self._open_lock_file()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise UserError(f"{self.path} is in use by a running train.py (process {holder}); wait for it to "
                                "end or choose another --output") from None
            if self._is_the_lock_file(handle):
                break
            # The holder ended between our open and our lock and removed the file (release_locks): the
            # lock taken is on a file nobody else will open. Start again on the folder's lock file.
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _HELD[key] = handle

    def _open_lock_file(self):
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            return open(self.path / LOCK_FILE, "a+")
        except OSError as err:
            raise UserError(f"cannot write the run folder {self.path} ({err.strerror or err}); "
                            "choose another --output") from None

    def _is_the_lock_file(self, handle) -> bool:
        """Whether `handle` is still the file at the folder's lock path (same inode on the same device)."""
        try:
            now = os.stat(self.path / LOCK_FILE)
        except OSError:
            return False
        held = os.fstat(handle.fileno())
        return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)

    def check(self, resumed: Optional[Path] = None) -> None:
        """Refuse to write into a folder that holds a run, unless that run's own last.pth is the
        checkpoint `resumed` (a fresh run has None): a run never writes over another one. A fresh
        run is also refused a folder holding another run's log or best files without its
        last.pth: its log lines would follow the other run's."""
        last = self.path / "last.pth"
        if last.exists() and (resumed is None or not last.samefile(resumed)):
            raise UserError(f"{self.path} already holds a run; continue it with --resume {self.path} "
                            "or choose another --output")
        if resumed is None and not last.exists():
            log_file = self.path / "log.jsonl"
            left = [name for name in ("best.pth", "best.safetensors") if (self.path / name).exists()]
            if log_file.exists() and log_file.stat().st_size:
                left.insert(0, "log.jsonl")
            if left:
                raise UserError(f"{self.path} holds another run's {', '.join(left)} (without its last.pth); "
                                "choose another --output, or move those files away")

    def start(self, args: Dict[str, Any], resume: Optional[Dict[str, Any]] = None,
              resumed: Optional[Path] = None) -> None:
        """Create the folder, remove the temporary files killed writes left, write args.json and,
        on resume, bring the other files in line with `resume` (the checkpoint `resumed`, continued).

        Raises:
            UserError: the folder cannot be written.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            removed = remove_stale_temps(self.path, RUN_FILES)
            self._write_text("args.json", strict_json(args, indent=2) + "\n")
            if resume is not None:
                self._catch_up(resume, Path(resumed).parent, keep=bool(args.get("keep_epochs")))
        except OSError as err:
            raise UserError(f"cannot write the run folder {self.path} ({err.strerror or err}); "
                            "choose another --output") from None
        if removed:
            log.info("removed %d temporary file(s) of killed writes from %s", len(removed), self.path)

    def save_epoch(self, ckpt: Dict[str, Any], improved: bool, keep: bool = False) -> None:
        """Write epoch ckpt["epoch"]: last.pth, then best.pth and best.safetensors if `improved`,
        then (if `keep`) its weights as epochs/epoch_NNN.safetensors for `tools.average`, then its
        log line (ckpt["history"][-1]) and the curves.

        Raises:
            UserError: a file cannot be written; the files of the last complete epoch stay.
        """
        try:
            save_checkpoint(ckpt, self.path / "last.pth")
            fault_point("saved:last.pth")
            if improved:
                self._save_best(ckpt)
            if keep:
                self._keep_epoch(ckpt)
            with open(self.path / "log.jsonl", "a") as f:
                f.write(strict_json(ckpt["history"][-1]) + "\n")
                f.flush()
                os.fsync(f.fileno())
            fault_point("saved:log.jsonl")
            plot_history(ckpt["history"], self.path / "curves.png")
        except OSError as err:
            raise UserError(f"cannot write epoch {ckpt['epoch']} to {self.path} ({err.strerror or err}); "
                            "the files of the last complete epoch are kept: free space or fix the permissions, "
                            f"then --resume {self.path}") from None

    def _save_best(self, ckpt: Dict[str, Any], checkpoint: bool = True) -> None:
        """best.pth (unless not `checkpoint`), then best.safetensors, from the training checkpoint `ckpt`."""
        if checkpoint:
            save_checkpoint(ckpt, self.path / "best.pth")
            fault_point("saved:best.pth")
        meta = ckpt["meta"].replace(epoch=ckpt["epoch"], **_best_scores(ckpt))
        save_safetensors(ckpt["state_dict"], meta, self.path / "best.safetensors")
        fault_point("saved:best.safetensors")

    def _keep_epoch(self, ckpt: Dict[str, Any]) -> None:
        """epochs/epoch_NNN.safetensors: the weights of epoch ckpt["epoch"] (`--keep-epochs`)."""
        meta = ckpt["meta"].replace(epoch=ckpt["epoch"])
        save_safetensors(ckpt["state_dict"], meta, self.path / "epochs" / _epoch_file(ckpt["epoch"]))

    def _catch_up(self, last: Dict[str, Any], source: Path, keep: bool = False) -> None:
        """Make log.jsonl, best.pth, best.safetensors, curves.png and (if `keep`) the last epoch's
        kept weights agree with `last`, the checkpoint resumed from the folder `source` (this
        folder, or the one a run continues from)."""
        history, best_epoch = last["history"], last["best_epoch"]
        self._write_text("log.jsonl", "".join(strict_json(record) + "\n" for record in history))
        if history:
            plot_history(history, self.path / "curves.png")
        if keep and last["epoch"]:
            epochs = self.path / "epochs"
            remove_stale_temps(epochs, [_epoch_file(last["epoch"]), _epoch_file(last["epoch"] + 1)])
            if not (epochs / _epoch_file(last["epoch"])).exists():  # killed after last.pth, before this file
                self._keep_epoch(last)
        if not best_epoch:  # no epoch finished yet
            return
        for name in ("best.pth", "best.safetensors"):  # a run continued into a new folder takes its best files
            if _epoch(self.path / name) != best_epoch and _epoch(source / name) == best_epoch:
                atomic_write(self.path / name, lambda tmp: shutil.copyfile(source / name, tmp))
        have = {name: _epoch(self.path / name) == best_epoch for name in ("best.pth", "best.safetensors")}
        if all(have.values()):
            return
        if best_epoch == last["epoch"]:  # killed after last.pth, before its best files
            self._save_best(last)
        elif have["best.pth"]:
            self._save_best(load_checkpoint(self.path / "best.pth"), checkpoint=False)
        else:
            log.warning("no best.pth of epoch %d, the best one last.pth records, in %s: it is written again when "
                        "an epoch beats that one", best_epoch, self.path)

    def _write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, lambda tmp: Path(tmp).write_text(text))


def _best_scores(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The best files' val_accuracy (the epoch's overall val accuracy) and, when --select chose the
    epoch by another rule, `selection`: the rule and the epoch's score by it."""
    rule = (ckpt.get("args") or {}).get("select", "accuracy")
    if rule == "accuracy":
        return {"val_accuracy": ckpt["best_metric"]}
    return {"val_accuracy": (ckpt.get("metrics") or {}).get("val_acc"),
            "selection": {"rule": rule, "score": ckpt["best_metric"]}}


def _epoch_file(epoch: int) -> str:
    return f"epoch_{epoch:03d}.safetensors"


def _epoch(path: Path) -> Optional[int]:
    """The epoch a best.pth or best.safetensors holds; None when it is missing or unreadable."""
    try:
        if path.suffix == ".safetensors":  # the header alone: ModelMeta's epoch
            with safe_open(str(path), framework="pt") as f:
                return ModelMeta.from_json((f.metadata() or {})[META_KEY], path).epoch
        # mmap: only the few bytes read are loaded, not the weights
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except Exception:
        return None

"""utils/run_folder.py on its own, without train.py: the folder's lock, the check that a run never
writes over another, `start` (args.json, stale temporary files, a resume's catch-up from last.pth)
and `save_epoch` (last.pth, the best files, kept epochs, the log).

The checkpoints are the ones train.py's loop builds (training_checkpoint with the criterion,
optimiser, scheduler and scaler states, epoch, best metric and epoch, history, args, metrics)
around a tiny nn.Linear whose weights are the epoch's number, so every file tells which epoch it
holds. Training runs killed at random instants are tests/test_faults_train.py's.
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from common.errors import UserError
from helpers import ROOT
from networks import model_meta
from utils import run_folder
from utils.checkpoint import load_checkpoint, read_safetensors, save_checkpoint, training_checkpoint
from utils.plots import plot_history
from utils.run_folder import LOCK_FILE, RUN_FILES, RunFolder, _epoch, _epoch_file, release_locks

CLASSES = ["angry", "happy", "sad"]
ARGS = {"data": ["Data/tiny"], "model": "resnet18", "epochs": 3, "lr": 0.01, "keep_epochs": False,
        "output": "runs/tiny", "resume": None}
needs_flock = pytest.mark.skipif(run_folder.fcntl is None, reason="no POSIX advisory locks on this platform")


@pytest.fixture(autouse=True)
def no_lock_left():
    """A lock left held by this process would outlive the test's folder and its key in _HELD."""
    yield
    release_locks()


@pytest.fixture(autouse=True)
def curves(monkeypatch):
    """[(file, epochs plotted)] of each curves.png drawn: matplotlib takes most of an epoch's save here,
    so a stand-in writes a placeholder (one test draws the real one)."""
    drawn = []

    def draw(history, path):
        drawn.append((path, [r["epoch"] for r in history]))
        path.write_bytes(b"curves")
    monkeypatch.setattr(run_folder, "plot_history", draw)
    return drawn


def epoch_weights(epoch: int) -> dict:
    """The weights epoch `epoch` saves: its number, a quarter more in the bias (both exact in fp16)."""
    return {"weight": torch.full((3, 4), float(epoch)), "bias": torch.full((3,), epoch + 0.25)}


def record(epoch: int, score: float) -> dict:
    """One log.jsonl line with the keys train.py's loop writes (and plot_history reads)."""
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": score, "train_images_per_s": 100.0,
            "val_loss": 1.0 / epoch, "val_acc": score, "val_balanced_acc": score, "val_macro_f1": score,
            "val_acc_per_source": {"tiny": score}, "lr": 0.01, "seconds": 0.1}


def checkpoints(scores, args=None) -> list:
    """[(checkpoint, improved)] of one epoch per validation score, as train.py's loop makes them:
    a real optimiser step (so the optimiser has state to save), then the epoch's weights."""
    torch.manual_seed(0)
    model, criterion = nn.Linear(4, 3), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    meta = model_meta("resnet18", {"num_classes": 3}, CLASSES, 32)
    best, best_epoch, history, out = -1.0, 0, [], []
    for epoch, score in enumerate(scores, 1):
        criterion(model(torch.ones(2, 4)), torch.tensor([0, 1])).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        model.load_state_dict(epoch_weights(epoch))
        history.append(record(epoch, score))
        improved = score > best
        if improved:
            best, best_epoch = score, epoch
        # Copies: train.py saves at once, these are kept while the live tensors change.
        ckpt = training_checkpoint(meta, {k: v.clone() for k, v in model.state_dict().items()},
                                   criterion=criterion.state_dict(), optimizer=copy.deepcopy(optimizer.state_dict()),
                                   scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), epoch=epoch,
                                   best_metric=best, best_epoch=best_epoch, history=list(history),
                                   args=dict(args or ARGS), metrics=history[-1])
        out.append((ckpt, improved))
    return out


def train(folder, scores, keep=False, args=None) -> list:
    """A fresh run of len(scores) epochs, opened as train.py's open_run does; its checkpoints."""
    run = RunFolder(folder)
    run.lock()
    run.check(None)
    run.start(args or ARGS)
    saved = checkpoints(scores, args)
    for ckpt, improved in saved:
        run.save_epoch(ckpt, improved, keep)
    return [ckpt for ckpt, _ in saved]


def resume(folder, source=None, args=None) -> None:
    """open_run of `--resume source` (default: the folder itself) writing into `folder`."""
    last = (source or folder) / "last.pth"
    run = RunFolder(folder)
    run.lock()
    run.check(last)
    run.start(args or ARGS, load_checkpoint(last), last)


def log_records(folder) -> list:
    def refuse(constant):
        raise ValueError(f"{constant} is not strict JSON")
    return [json.loads(line, parse_constant=refuse) for line in (folder / "log.jsonl").read_text().splitlines()]


def saved(path):
    """(epoch, weights in fp32, metadata or None) of a best.pth, best.safetensors or kept epoch."""
    if path.suffix == ".safetensors":
        tensors, header = read_safetensors(path)
        meta = json.loads(header["fer"])
        return meta["epoch"], {k: v.float() for k, v in tensors.items()}, meta
    ckpt = load_checkpoint(path)
    return ckpt["epoch"], ckpt["state_dict"], None


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def names(folder) -> list:
    return sorted(p.name for p in folder.iterdir())


# The module's helpers

def test_epoch_file_names_are_padded_to_three_digits():
    assert _epoch_file(7) == "epoch_007.safetensors"
    assert _epoch_file(123) == "epoch_123.safetensors"
    assert _epoch_file(1000) == "epoch_1000.safetensors"  # wider, never cut


def test_epoch_reads_best_files_and_is_none_for_what_it_cannot_read(tmp_path):
    train(tmp_path / "run", [0.3, 0.6])
    assert _epoch(tmp_path / "run" / "best.pth") == 2
    assert _epoch(tmp_path / "run" / "best.safetensors") == 2
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"\0" * 16)
    for name in ("missing.pth", "missing.safetensors", "junk.pth", "junk.safetensors"):
        assert _epoch(tmp_path / name) is None, name


# save_epoch

def test_a_finished_run_holds_exactly_the_run_files(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder, "plot_history", plot_history)  # the real curves, this once
    out = tmp_path / "run"
    train(out, [0.3, 0.6])
    assert names(out) == sorted([*RUN_FILES, LOCK_FILE])  # locked while the process runs
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    release_locks()
    assert names(out) == sorted(RUN_FILES)


def test_each_epoch_draws_the_curves_of_the_whole_history(tmp_path, curves):
    train(tmp_path, [0.3, 0.6, 0.5])
    assert curves == [(tmp_path / "curves.png", [1]), (tmp_path / "curves.png", [1, 2]),
                      (tmp_path / "curves.png", [1, 2, 3])]


def test_last_pth_holds_the_newest_epoch_and_all_it_takes_to_continue(tmp_path):
    ckpts = train(tmp_path, [0.3, 0.6, 0.5])
    last = load_checkpoint(tmp_path / "last.pth")
    assert last["epoch"] == 3 and last["best_epoch"] == 2 and last["best_metric"] == 0.6
    assert same_weights(last["state_dict"], epoch_weights(3))
    assert [r["epoch"] for r in last["history"]] == [1, 2, 3] and last["args"] == ARGS
    optimizer = torch.optim.SGD(nn.Linear(4, 3).parameters(), lr=0.01, momentum=0.9)
    optimizer.load_state_dict(last["optimizer"])  # a resume puts it back
    assert torch.equal(optimizer.state_dict()["state"][0]["momentum_buffer"],
                       ckpts[-1]["optimizer"]["state"][0]["momentum_buffer"])


def test_log_has_one_strict_json_line_per_epoch_in_order(tmp_path):
    train(tmp_path, [0.3, float("nan"), 0.5])
    lines = log_records(tmp_path)
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[0] == record(1, 0.3) and lines[2] == record(3, 0.5)
    # A NaN score is null in the file (strict JSON), never the NaN token
    assert lines[1]["val_acc"] is None and lines[1]["val_acc_per_source"] == {"tiny": None}


def test_best_files_hold_the_best_epoch_not_a_later_worse_one(tmp_path):
    train(tmp_path, [0.3, 0.6, 0.5, 0.55])
    epoch, weights, _ = saved(tmp_path / "best.pth")
    assert epoch == 2 and same_weights(weights, epoch_weights(2))
    epoch, weights, meta = saved(tmp_path / "best.safetensors")
    assert epoch == 2 and same_weights(weights, epoch_weights(2))
    # predict.py rebuilds the model from this metadata alone
    assert meta["val_accuracy"] == 0.6 and meta["classes"] == CLASSES and meta["model"] == "resnet18"
    assert load_checkpoint(tmp_path / "best.pth")["best_epoch"] == 2


def test_best_files_chosen_by_another_rule_say_so(tmp_path):
    """--select source-mean: val_accuracy is still the overall val accuracy of the best epoch, and
    `selection` holds the rule and the score that chose it (it was stored as val_accuracy before)."""
    (ckpt, _), = checkpoints([0.6], args={**ARGS, "select": "source-mean"})
    ckpt["metrics"] = {**ckpt["metrics"], "val_acc": 0.7}
    RunFolder(tmp_path).save_epoch(ckpt, improved=True)
    _, _, meta = saved(tmp_path / "best.safetensors")
    assert meta["val_accuracy"] == 0.7 and meta["selection"] == {"rule": "source-mean", "score": 0.6}
    train(tmp_path / "plain", [0.6])
    assert "selection" not in saved(tmp_path / "plain" / "best.safetensors")[2]


def test_best_safetensors_is_half_precision(tmp_path):
    train(tmp_path, [0.3])
    tensors, _ = read_safetensors(tmp_path / "best.safetensors")
    assert {v.dtype for v in tensors.values()} == {torch.float16}


def test_an_epoch_that_did_not_improve_writes_no_best_files(tmp_path):
    (ckpt, _), = checkpoints([0.3])
    RunFolder(tmp_path).save_epoch(ckpt, improved=False)  # the caller decides, not the score
    assert names(tmp_path) == ["curves.png", "last.pth", "log.jsonl"]


def test_keep_writes_each_epochs_weights_for_averaging(tmp_path):
    train(tmp_path, [0.3, 0.6, 0.5], keep=True)
    kept = sorted((tmp_path / "epochs").iterdir())
    assert [p.name for p in kept] == ["epoch_001.safetensors", "epoch_002.safetensors", "epoch_003.safetensors"]
    for epoch, path in enumerate(kept, 1):
        got, weights, meta = saved(path)
        assert got == epoch and same_weights(weights, epoch_weights(epoch))
        assert "val_accuracy" not in meta  # a kept epoch is not a best one


def test_without_keep_there_is_no_epochs_folder(tmp_path):
    train(tmp_path, [0.3, 0.6])
    assert not (tmp_path / "epochs").exists()


def test_a_failed_write_is_a_user_error_naming_the_epoch_and_leaves_no_temp(tmp_path):
    (tmp_path / "last.pth").mkdir()  # the rename onto it fails as a full disk's write would
    (ckpt, improved), = checkpoints([0.3])
    with pytest.raises(UserError, match=rf"^cannot write epoch 1 to {tmp_path} .*then --resume {tmp_path}$"):
        RunFolder(tmp_path).save_epoch(ckpt, improved)
    assert names(tmp_path) == ["last.pth"]  # nothing after the failed file, no temporary file


# The lock

@needs_flock
def test_lock_writes_this_process_id_and_locking_again_here_is_a_no_op(tmp_path):
    out = tmp_path / "new" / "run"
    RunFolder(out).lock()  # creates the folder
    assert (out / LOCK_FILE).read_text() == str(os.getpid())
    RunFolder(tmp_path / "new" / ".." / "new" / "run").lock()  # the same folder, spelt otherwise
    assert list(run_folder._HELD) == [str(out.resolve())]


@needs_flock
def test_a_folder_locked_by_another_holder_is_refused_naming_it(tmp_path):
    # flock treats another open file description as another holder, even within this process
    with open(tmp_path / LOCK_FILE, "a+") as other:
        run_folder.fcntl.flock(other, run_folder.fcntl.LOCK_EX | run_folder.fcntl.LOCK_NB)
        other.write("4242")
        other.flush()
        with pytest.raises(UserError) as err:
            RunFolder(tmp_path).lock()
        assert str(err.value) == (f"{tmp_path} is in use by a running train.py (process 4242); wait for it to end "
                                  "or choose another --output")
        assert (tmp_path / LOCK_FILE).read_text() == "4242" and not run_folder._HELD
    RunFolder(tmp_path).lock()  # the holder let go: taken over
    assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())


@needs_flock
def test_a_lock_file_removed_between_open_and_lock_is_not_trusted(tmp_path, monkeypatch):
    """The holder ends (release_locks removes .lock) after this process opened the file and before it
    locked it: the lock is then on a file no other process will open, while the next run would
    create and lock a new one. The lock is taken again on the folder's file instead."""
    real_flock, calls = run_folder.fcntl.flock, []

    def flock_after_the_holder_left(handle, flags):
        calls.append(os.fstat(handle.fileno()).st_ino)
        if len(calls) == 1:  # the holder removes the file; the next run has already made a new one
            (tmp_path / LOCK_FILE).unlink()
            (tmp_path / LOCK_FILE).write_text("4242")
        return real_flock(handle, flags)
    (tmp_path / LOCK_FILE).write_text("")
    monkeypatch.setattr(run_folder.fcntl, "flock", flock_after_the_holder_left)
    RunFolder(tmp_path).lock()
    assert len(calls) == 2 and calls[0] != calls[1]
    assert os.fstat(run_folder._HELD[str(tmp_path.resolve())].fileno()).st_ino == os.stat(tmp_path / LOCK_FILE).st_ino
    assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())


CHILD = """import sys
sys.path.insert(0, sys.argv[1])
from common.errors import UserError
from utils.plots import plot_history
from utils.run_folder import RunFolder
for _ in sys.stdin:  # one try per line read, its outcome on one line
    try:
        RunFolder(sys.argv[2]).lock()
        print("locked", flush=True)
    except UserError as err:
        print(err, flush=True)
"""


@needs_flock
def test_another_process_is_refused_until_release_locks(tmp_path):
    RunFolder(tmp_path).lock()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        def attempt():
            child.stdin.write("\n")
            child.stdin.flush()
            return child.stdout.readline().strip()
        assert attempt() == (f"{tmp_path} is in use by a running train.py (process {os.getpid()}); wait for it "
                             "to end or choose another --output")
        release_locks()
        assert not (tmp_path / LOCK_FILE).exists()
        assert attempt() == "locked"
    finally:
        child.stdin.close()
        child.wait(30)
    # The child ended without letting go: its lock went with it and its file is taken over
    assert (tmp_path / LOCK_FILE).read_text() == str(child.pid)
    RunFolder(tmp_path).lock()
    assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())


@needs_flock
def test_release_locks_lets_go_of_every_folder_and_removes_the_lock_files(tmp_path):
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        RunFolder(folder).lock()
    release_locks()
    assert not run_folder._HELD
    for folder in folders:
        assert list(folder.iterdir()) == []
        RunFolder(folder).lock()  # free again
    release_locks()
    release_locks()  # nothing held: nothing to do


def test_an_unwritable_folder_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"  # under a file: no folder can be made there
    for call in (lambda: RunFolder(out).lock(), lambda: RunFolder(out).start(ARGS)):
        with pytest.raises(UserError, match=rf"^cannot write the run folder {out} \(.*\); choose another --output$"):
            call()


# check

def test_check_lets_a_fresh_run_into_a_folder_without_last_pth(tmp_path):
    RunFolder(tmp_path / "missing").check(None)
    (tmp_path / "args.json").write_text("{}")
    RunFolder(tmp_path).check(None)


def test_check_refuses_a_folder_holding_a_run_unless_its_own_last_pth_is_resumed(tmp_path):
    train(tmp_path / "run", [0.3])
    run = RunFolder(tmp_path / "run")
    with pytest.raises(UserError) as err:
        run.check(None)
    assert str(err.value) == (f"{run.path} already holds a run; continue it with --resume {run.path} "
                              "or choose another --output")
    run.check(tmp_path / "run" / "last.pth")
    run.check(tmp_path / "run" / ".." / "run" / "last.pth")  # the same file, spelt otherwise


# start

def test_start_creates_the_folder_and_writes_the_args_as_strict_json(tmp_path):
    out = tmp_path / "a" / "b"
    RunFolder(out).start({**ARGS, "lr": float("inf")})
    text = (out / "args.json").read_text()
    assert json.loads(text) == {**ARGS, "lr": None} and "Infinity" not in text and text.endswith("}\n")
    assert names(out) == ["args.json"]  # no log, no checkpoint until an epoch ends


def test_start_removes_temporary_files_of_killed_writes_and_keeps_the_rest(tmp_path, caplog):
    stale = [f".{name}.k3j_x9.tmp" for name in RUN_FILES]
    others = ["notes.txt", ".notes.txt.k3j_x9.tmp", "last.pth.tmp", ".lastXpth.k3j_x9.tmp"]
    for name in stale + others:
        (tmp_path / name).write_text("")
    (tmp_path / "epochs").mkdir()
    (tmp_path / "epochs" / ".epoch_001.safetensors.k3j_x9.tmp").write_text("")  # a resume's business, not start's
    with caplog.at_level("INFO", logger="train"):
        RunFolder(tmp_path).start(ARGS)
    assert names(tmp_path) == sorted(["args.json", "epochs", *others])
    assert names(tmp_path / "epochs") == [".epoch_001.safetensors.k3j_x9.tmp"]
    assert f"removed {len(stale)} temporary file(s) of killed writes from {tmp_path}" in caplog.messages


# start on resume: the catch-up from last.pth

def test_resume_rewrites_the_log_and_curves_from_last_pth_dropping_a_half_written_line(tmp_path, curves):
    train(tmp_path, [0.3, 0.6])
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(json.dumps(record(3, 0.5)) + "\n" + '{"epoch": 4, "train_lo')  # epochs last.pth does not hold
    curves.clear()
    resume(tmp_path)
    assert log_records(tmp_path) == [record(1, 0.3), record(2, 0.6)]
    assert curves == [(tmp_path / "curves.png", [1, 2])]


def test_resume_after_a_kill_before_the_best_files_writes_them_from_last_pth(tmp_path):
    train(tmp_path, [0.3])
    (ckpt, improved), = checkpoints([0.3, 0.6])[1:]
    assert improved
    save_checkpoint(ckpt, tmp_path / "last.pth")  # killed after last.pth: best files and log of epoch 1
    resume(tmp_path)
    for name in ("best.pth", "best.safetensors"):
        epoch, weights, _ = saved(tmp_path / name)
        assert epoch == 2 and same_weights(weights, epoch_weights(2)), name
    assert [r["epoch"] for r in log_records(tmp_path)] == [1, 2]


def test_resume_derives_a_missing_best_safetensors_from_best_pth(tmp_path):
    train(tmp_path, [0.6, 0.3])
    (tmp_path / "best.safetensors").unlink()
    before = (tmp_path / "best.pth").stat().st_ino
    resume(tmp_path)
    epoch, weights, meta = saved(tmp_path / "best.safetensors")
    assert epoch == 1 and same_weights(weights, epoch_weights(1)) and meta["val_accuracy"] == 0.6
    assert (tmp_path / "best.pth").stat().st_ino == before  # read, not written again


def test_resume_of_a_consistent_folder_rewrites_no_checkpoint(tmp_path):
    train(tmp_path, [0.3, 0.6, 0.5])
    # atomic_write renames a new file in: a rewrite would change the inode
    inodes = {name: (tmp_path / name).stat().st_ino for name in ("last.pth", "best.pth", "best.safetensors")}
    log = (tmp_path / "log.jsonl").read_text()
    resume(tmp_path)
    assert {name: (tmp_path / name).stat().st_ino for name in inodes} == inodes
    assert (tmp_path / "log.jsonl").read_text() == log


def test_resume_without_best_files_of_the_best_epoch_warns_and_writes_none(tmp_path, caplog):
    train(tmp_path, [0.6, 0.3])
    (tmp_path / "best.pth").unlink()
    (tmp_path / "best.safetensors").unlink()
    with caplog.at_level("WARNING", logger="train"):
        resume(tmp_path)
    assert not (tmp_path / "best.pth").exists() and not (tmp_path / "best.safetensors").exists()
    assert any(m.startswith("no best.pth of epoch 1, the best one last.pth records") for m in caplog.messages)


def test_resume_into_a_new_folder_takes_the_source_best_files(tmp_path, curves):
    source, branch = tmp_path / "source", tmp_path / "branch"
    train(source, [0.3, 0.7, 0.5])
    release_locks()
    before = {name: (source / name).read_bytes() for name in names(source)}
    curves.clear()
    resume(branch, source, args={**ARGS, "output": str(branch)})
    assert curves == [(branch / "curves.png", [1, 2, 3])]
    for name in ("best.pth", "best.safetensors"):
        assert (branch / name).read_bytes() == before[name], name
    assert [r["epoch"] for r in log_records(branch)] == [1, 2, 3]
    assert json.loads((branch / "args.json").read_text())["output"] == str(branch)
    # last.pth comes with the branch's first epoch; the source is only read
    assert names(branch) == sorted([LOCK_FILE, "args.json", "best.pth", "best.safetensors", "curves.png",
                                    "log.jsonl"])
    assert {name: (source / name).read_bytes() for name in names(source)} == before


def test_resume_with_keep_writes_the_last_epochs_file_and_removes_its_temps(tmp_path):
    args = {**ARGS, "keep_epochs": True}
    train(tmp_path, [0.3], keep=True, args=args)
    (ckpt, _), = checkpoints([0.3, 0.2], args)[1:]
    save_checkpoint(ckpt, tmp_path / "last.pth")  # killed after last.pth, before epoch_002
    epochs = tmp_path / "epochs"
    for name in (".epoch_002.safetensors.k3j_x9.tmp", ".epoch_003.safetensors.k3j_x9.tmp", "notes.txt"):
        (epochs / name).write_text("")
    resume(tmp_path, args=args)
    assert names(epochs) == ["epoch_001.safetensors", "epoch_002.safetensors", "notes.txt"]
    epoch, weights, _ = saved(epochs / "epoch_002.safetensors")
    assert epoch == 2 and same_weights(weights, epoch_weights(2))


def test_resume_without_keep_leaves_the_epochs_folder_alone(tmp_path):
    train(tmp_path, [0.3])
    (ckpt, _), = checkpoints([0.3, 0.2])[1:]
    save_checkpoint(ckpt, tmp_path / "last.pth")
    resume(tmp_path)
    assert not (tmp_path / "epochs").exists()


def test_a_fresh_run_is_refused_a_folder_with_another_runs_log_or_best_files(tmp_path):
    """Without this, the new run's log lines would follow the other run's in log.jsonl."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "log.jsonl").write_text('{"epoch": 7}\n')
    (folder / "best.pth").write_bytes(b"x")
    with pytest.raises(UserError, match=r"holds another run's log.jsonl, best.pth \(without its last.pth\)"):
        RunFolder(folder).check()
    (folder / "log.jsonl").write_text("")  # an empty log is no run's
    with pytest.raises(UserError, match=r"another run's best.pth \("):
        RunFolder(folder).check()
    (folder / "best.pth").unlink()
    RunFolder(folder).check()  # args.json, curves.png or notes alone do not hold a run

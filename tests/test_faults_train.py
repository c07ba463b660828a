"""Training killed with SIGKILL at named points (FER_FAULT_KILL_AT, see common.files.fault_point)
and at random instants, then resumed: the run folder is consistent, no temporary file is left,
and the weights equal those of an uninterrupted run. Also: copied runs, --epochs on resume,
divergence, strict JSON logs and an unwritable --output.

Each training runs in a process forked from a forkserver that has imported train.py once, so a
kill is a real `kill -9` of a whole training process without paying torch's import each time.
"""
import ctypes
import hashlib
import json
import math
import multiprocessing
import multiprocessing.forkserver
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

import train
from common.errors import UserError, run_cli
from common.files import FAULT_ENV
from helpers import make_image_folder
from utils.checkpoint import load_checkpoint
from utils.run_folder import RUN_FILES, RunFolder

EPOCHS = 2
KILLED = -signal.SIGKILL  # a multiprocessing exit code


def fast_args(data: Path):
    return ["--data", str(data), "--model", "resnet18", "--img-size", "32", "--batch-size", "4", "--workers", "0",
            "--threads", "1", "--device", "cpu", "--pretrained", "none", "--lr", "0.01", "--momentum", "0",
            "--seed", "3"]  # no momentum: half the checkpoint to write


def _child(argv, env, log_path, drop_dac):
    """Body of a training process: train.py's command line, its output in `log_path`."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    if drop_dac:
        drop_dac_override()
    run_cli(train.main, train.get_args_parser().parse_args(argv))


def drop_dac_override() -> None:
    """Remove CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this process, so that even root obeys
    file permissions (what `setpriv --bounding-set=-dac_override,-dac_read_search` does)."""
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    mask = ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    data[0].effective &= mask
    data[0].permitted &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


@pytest.fixture(scope="module")
def spawn():
    """spawn(argv, log_path, kill_at=None, kill_after=None, drop_dac=False) -> exit code of a training
    process; with kill_after, it is killed that many seconds after it (re)wrote its run folder's args.json."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["train", __name__])  # this module holds the processes' body
    multiprocessing.forkserver.ensure_running()  # it imports train.py while the reference run trains here

    def run(argv, log_path, kill_at=None, kill_after=None, drop_dac=False):
        env = {FAULT_ENV: kill_at or "", "OMP_NUM_THREADS": "1"}
        process = ctx.Process(target=_child, args=([str(a) for a in argv], env, str(log_path), drop_dac))
        started = time.time()
        process.start()
        if kill_after is not None:
            args_json = Path(argv[argv.index("--output") + 1] if "--output" in argv else argv[1]) / "args.json"
            while process.is_alive() and not (args_json.exists() and args_json.stat().st_mtime >= started):
                time.sleep(0.01)
            process.join(kill_after)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        process.join(120)
        assert process.exitcode is not None, "training hung"
        return process.exitcode

    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("faults") / "data", ["angry", "happy", "sad"], size=32)


@pytest.fixture(scope="module")
def reference(spawn, data, tmp_path_factory):
    """An uninterrupted run of EPOCHS epochs (in this process), and the seconds from its args.json
    to its last file."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train.main(train.get_args_parser().parse_args([*fast_args(data), "--epochs", str(EPOCHS), "--output", str(out)]))
    return out, (out / "curves.png").stat().st_mtime - (out / "args.json").stat().st_mtime


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def log_records(folder: Path) -> list:
    def refuse(constant):
        raise ValueError(f"{constant} is not strict JSON")
    return [json.loads(line, parse_constant=refuse) for line in (folder / "log.jsonl").read_text().splitlines()]


def saved_epoch(path: Path):
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["fer"])["epoch"]
    return load_checkpoint(path)["epoch"]


def check_after_kill(folder: Path, what: str) -> None:
    """What a kill may leave: last.pth of some epoch k; the log and the best files of k or k - 1."""
    if not (folder / "last.pth").exists():
        assert not (folder / "log.jsonl").exists() or not (folder / "log.jsonl").read_text().strip(), what
        return
    last = load_checkpoint(folder / "last.pth")
    epochs = [r["epoch"] for r in log_records(folder)] if (folder / "log.jsonl").exists() else []
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) in (last["epoch"], last["epoch"] - 1), what
    for name in ("best.pth", "best.safetensors"):
        if (folder / name).exists():
            assert saved_epoch(folder / name) <= last["best_epoch"], (what, name)


def check_consistent(folder: Path, epochs: int) -> None:
    """A finished run: every file of the last epoch, the best files of the best epoch, no temp file."""
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(RUN_FILES), (folder, names)
    last = load_checkpoint(folder / "last.pth")
    assert last["epoch"] == epochs
    assert [r["epoch"] for r in log_records(folder)] == list(range(1, epochs + 1))
    assert saved_epoch(folder / "best.pth") == saved_epoch(folder / "best.safetensors") == last["best_epoch"]


def check_same_as(folder: Path, reference: Path) -> None:
    """Same weights (last and best) and the same logged numbers as the uninterrupted run."""
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(reference / name), load_checkpoint(folder / name)
        assert a["epoch"] == b["epoch"], name
        for key, value in a["state_dict"].items():
            assert torch.equal(value, b["state_dict"][key]), (name, key)
    timing = {"seconds", "train_images_per_s"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in log_records(folder)]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in log_records(reference)]


def continue_run(spawn, data, out, **kill):
    """Resume `out` when it holds a checkpoint, else start it afresh (a kill before the first one)."""
    argv = (["--resume", out] if (out / "last.pth").exists() else [*fast_args(data), "--output", out])
    return spawn([*argv, "--epochs", EPOCHS, "--workers", "0", "--threads", "1", "--device", "cpu"],
                 out.parent / "log.txt", **kill)


# Where each next process of one run dies: inside a write (temporary file complete, not renamed),
# or between two files; a resume first repairs the folder from last.pth, and can die doing so.
KILL_POINTS = [
    "write:last.pth",  # epoch 1 never completes: a fresh start follows, which removes the temp file
    "saved:last.pth",  # epoch 1 in last.pth only: no best.pth, no log line
    "saved:best.pth",  # the resume dies between best.pth and best.safetensors, re-deriving them
    "write:best.safetensors",  # ... and inside best.safetensors' write
    "write:log.jsonl",  # ... and while rewriting the log
    "saved:log.jsonl",  # epoch 2 complete but for its curves
]


def test_kills_at_every_write_then_resume_match_an_uninterrupted_run(spawn, data, reference, tmp_path):
    out = tmp_path / "run"
    for point in KILL_POINTS:
        assert continue_run(spawn, data, out, kill_at=point) == KILLED, f"not killed at {point}"
        check_after_kill(out, point)
        if point == "write:last.pth":
            assert list(out.glob(".last.pth.*.tmp")), "the kill should leave the temp file"
    with open(out / "log.jsonl", "a") as f:  # as a kill inside the log's append would leave it
        f.write('{"epoch": 3, "train_lo')
    assert continue_run(spawn, data, out) == 0, (out.parent / "log.txt").read_text()[-2000:]
    check_consistent(out, EPOCHS)
    check_same_as(out, reference[0])


def test_kept_epochs_survive_a_kill_between_last_pth_and_their_file(spawn, data, tmp_path):
    out = tmp_path / "run"
    argv = [*fast_args(data), "--epochs", EPOCHS, "--keep-epochs", "--output", out]
    assert spawn(argv, tmp_path / "log.txt", kill_at="saved:last.pth") == KILLED
    assert not (out / "epochs").exists()  # epoch 1 is in last.pth only
    assert spawn(["--resume", out, "--epochs", EPOCHS], tmp_path / "log.txt") == 0
    kept = sorted((out / "epochs").iterdir())
    assert [p.name for p in kept] == ["epoch_001.safetensors", "epoch_002.safetensors"]
    assert [saved_epoch(p) for p in kept] == [1, 2]


def test_kills_at_random_instants(spawn, data, reference, tmp_path):
    """Kills at two random instants of a run's training and saving, then a resume to the end."""
    out, span = tmp_path / "run", reference[1]
    kills = []
    for _ in range(6):  # a try that finishes before its kill shortens the span and starts a new run
        delay = random.uniform(0.05, 0.8) * span
        code = continue_run(spawn, data, out, kill_after=delay)
        if code == KILLED:
            kills.append(delay)
            check_after_kill(out, f"killed {delay:.2f} s after start")
        else:
            assert code == 0, (out.parent / "log.txt").read_text()[-2000:]
            span = min(span, (out / "curves.png").stat().st_mtime - (out / "args.json").stat().st_mtime)
            shutil.rmtree(out)
        if len(kills) == 2:
            break
    assert len(kills) == 2, f"kills landed at {kills} s only; the run takes {span:.2f} s"
    assert continue_run(spawn, data, out) == 0
    check_consistent(out, EPOCHS)
    check_same_as(out, reference[0])


def test_resuming_a_copy_leaves_the_original_alone(spawn, reference, tmp_path):
    original = reference[0]
    before = digest(original)
    copy, branch = tmp_path / "copy", tmp_path / "branch"
    shutil.copytree(original, copy)
    code = spawn(["--resume", copy, "--epochs", EPOCHS + 1, "--output", branch, "--workers", "0", "--threads", "1",
                  "--device", "cpu"], tmp_path / "log.txt")
    assert code == 0, (tmp_path / "log.txt").read_text()[-2000:]
    assert digest(original) == before and digest(copy) == before
    check_consistent(branch, EPOCHS + 1)
    assert f"run folder: {branch}" in (tmp_path / "log.txt").read_text()
    assert json.loads((branch / "args.json").read_text())["output"] == str(branch)


def test_resume_arguments(tmp_path):
    """--epochs given as 40 counts even though 40 is the default; the run folder is never the saved one."""
    parse = train.get_args_parser().parse_args
    saved = {"args": {**vars(train.resolve_args(parse(["--data", str(tmp_path), "--epochs", "3",
                                                       "--output", "runs/a"]))), "resume": None}, "epoch": 3}
    copy = tmp_path / "b" / "last.pth"
    args = train.resume_args(parse(["--resume", str(copy), "--epochs", "40"]), saved)
    assert args.epochs == 40 and args.output == str(copy.parent) and args.resume == str(copy)
    assert train.resume_args(parse(["--resume", str(copy)]), saved).epochs == 3
    assert train.resume_args(parse(["--resume", str(copy), "--output", "c"]), saved).output == "c"
    assert parse([]).epochs is None and train.resolve_args(parse(["--data", str(tmp_path)])).epochs == 40


def test_a_folder_holding_another_run_is_refused(reference, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(reference[0], other)
    with pytest.raises(UserError, match="already holds a run"):
        RunFolder(other).check(reference[0] / "last.pth")
    RunFolder(other).check(other / "last.pth")  # its own last.pth: a resume


def test_divergence_stops_and_keeps_the_last_good_epoch(data, tmp_path, monkeypatch, capsys):
    """Weights that turn NaN in epoch 2 are never saved: exit 2, one line, last.pth stays at epoch 1."""
    real = train.train_one_epoch

    def poisoned(step, *args, **kwargs):
        stats = real(step, *args, **kwargs)
        if args[-1].startswith("epoch 2/"):
            with torch.no_grad():
                next(step.parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(train, "train_one_epoch", poisoned)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        run_cli(train.main, train.get_args_parser().parse_args([*fast_args(data), "--epochs", "3", "--output",
                                                                  str(out)]))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and err.startswith("error: training diverged in epoch 2")
    assert f"{out / 'last.pth'} keeps epoch 1" in err
    assert load_checkpoint(out / "last.pth")["epoch"] == 1 and len(log_records(out)) == 1


def test_consecutive_nonfinite_losses_stop_training():
    """One or two NaN losses in a row pass (fp16's GradScaler skips such steps); three stop."""
    from utils.engine import MAX_NONFINITE_STEPS, Optimisation, Runtime, TrainInputs, train_one_epoch

    class Step(torch.nn.Module):
        def __init__(self, bad):
            super().__init__()
            self.linear, self.bad, self.calls = torch.nn.Linear(4, 2), bad, 0

        def forward(self, x, labels, soft=None):
            logits = self.linear(x.flatten(1).float())
            loss = torch.nn.functional.cross_entropy(logits, labels)
            self.calls += 1
            loss = loss + float("nan") if self.calls in self.bad else loss  # gradients stay finite
            return logits, {"ce": loss}, loss

    def epoch(bad):
        step = Step(bad)
        optimizer = torch.optim.SGD(step.parameters(), lr=0.1)
        batches = [(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), None, None)] * 12
        opt = Optimisation(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0),
                           torch.amp.GradScaler("cpu", enabled=False))
        return train_one_epoch(step, batches, opt, TrainInputs(lambda x: x), Runtime(torch.device("cpu")), "test")

    stats = epoch({2, 3, 7})
    assert math.isfinite(stats["train_loss"])  # the mean leaves the NaN steps out
    assert MAX_NONFINITE_STEPS == 3
    with pytest.raises(UserError, match="3 steps in a row"):
        epoch({4, 5, 6})


def test_log_is_strict_json(tmp_path):
    nan, inf = float("nan"), float("inf")
    record = {"epoch": 1, "train_loss": inf, "train_acc": 0.5, "val_loss": nan, "val_acc": 0.5,
              "val_balanced_acc": 0.5, "val_acc_per_source": {"a": -inf, "b": 0.25}}
    ckpt = {"epoch": 1, "best_metric": 0.5, "meta": {"model": "x"}, "state_dict": {"w": torch.zeros(2)},
            "history": [record]}
    RunFolder(tmp_path).save_epoch(ckpt, improved=False)
    assert log_records(tmp_path) == [{**record, "train_loss": None, "val_loss": None,
                                      "val_acc_per_source": {"a": None, "b": 0.25}}]


def test_unwritable_output_is_one_line(spawn, data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    probe = tmp_path / "probe.txt"
    code = spawn([*fast_args(data), "--epochs", "1", "--output", locked / "run"], probe, drop_dac=os.geteuid() == 0)
    text = probe.read_text()
    if code == 0 or "Operation not permitted" in text and "capset" in text:
        pytest.skip("file permissions cannot be enforced here (capabilities cannot be dropped)")
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in text
    assert lines == [f"error: cannot write the run folder {locked / 'run'} (Permission denied); choose another --output"]


def test_a_full_disk_is_one_line_and_keeps_the_last_complete_epoch(data, tmp_path, monkeypatch, capsys):
    """torch.save raises RuntimeError and safetensors SafetensorError when the disk fills: a traceback
    before. Epoch 2's write fails as each does on a full disk: exit 2, one line, and the run folder
    keeps epoch 1 whole, to resume from once there is space."""
    import utils.checkpoint as checkpoint
    out = tmp_path / "run"
    real_save = torch.save
    run_cli(train.main, train.get_args_parser().parse_args([*fast_args(data), "--epochs", "1", "--output", str(out)]))

    def full(*args, **kwargs):  # what torch.save raises when write() meets ENOSPC
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")
    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(SystemExit) as stop:
        run_cli(train.main, train.get_args_parser().parse_args(["--resume", str(out), "--epochs", "2"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len([line for line in err if line.startswith("error:")]) == 1
    assert err[-1].startswith(f"error: cannot write epoch 2 to {out}") and "is the disk full?" in err[-1]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert load_checkpoint(out / "last.pth")["epoch"] == 1 and len(log_records(out)) == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_under_safetensors_keeps_the_old_file(tmp_path, monkeypatch):
    """safetensors' SafetensorError becomes the OSError every caller handles; a full disk while the
    bytes are written is that OSError already. Either way the old file stays, alone."""
    import errno

    import utils.checkpoint as checkpoint
    from safetensors import SafetensorError
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"the old file")

    def failing(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    monkeypatch.setattr(checkpoint, "save", failing)
    with pytest.raises(OSError, match="is the disk full"):
        checkpoint.save_safetensors({"w": torch.zeros(2)}, {"model": "x"}, path)
    assert path.read_bytes() == b"the old file" and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    monkeypatch.undo()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.Path, "write_bytes", full)
    with pytest.raises(OSError, match="No space left on device"):
        checkpoint.save_safetensors({"w": torch.zeros(2)}, {"model": "x"}, path)
    monkeypatch.undo()
    assert path.read_bytes() == b"the old file" and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_safetensors_files_are_written_through_the_projects_own_temporary_file(tmp_path, monkeypatch):
    """safetensors' save_file writes through a `.tmpXXXXXX` of its own, which a kill left in run
    folders: the bytes are made in memory and only atomic_write's temporary file is ever created."""
    import tempfile

    import safetensors.torch

    import utils.checkpoint as checkpoint
    made, real_mkstemp = [], tempfile.mkstemp

    def spy(*args, **kwargs):
        made.append(real_mkstemp(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: pytest.fail("save_file was used"))
    monkeypatch.setattr(tempfile, "mkstemp", spy)  # what atomic_write makes its temporary file with
    checkpoint.save_safetensors({"w": torch.arange(4.0)}, {"model": "x"}, tmp_path / "m.safetensors", half=False)
    assert len(made) == 1 and Path(made[0][1]).name.startswith(".m.safetensors.")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    tensors, header = checkpoint.read_safetensors(tmp_path / "m.safetensors")
    assert torch.equal(tensors["w"], torch.arange(4.0)) and header == {"fer": '{"model": "x"}'}

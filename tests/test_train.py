import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from common.errors import UserError
from helpers import ROOT, make_image_folder
from tools import average
from utils.checkpoint import load_checkpoint, load_model

FAST = ["--img-size", "32", "--batch-size", "4", "--workers", "0", "--threads", "1", "--device", "cpu",
        "--lr", "0.01", "--pretrained", "none"]


def run_train(*argv):
    return train.main(train.get_args_parser().parse_args([str(a) for a in argv]))


def test_training_writes_checkpoints_logs_and_plots(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_train("--data", tiny_data, "--epochs", 2, "--output", out, *FAST)
    for name in ("best.pth", "last.pth", "best.safetensors", "log.jsonl", "curves.png", "args.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_ce", "train_affinity", "train_partition", "train_loss", "val_acc", "val_loss"} <= set(records[0])
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["meta"].classes == ["angry", "happy", "sad"]
    assert ckpt["meta"].model_args == {"num_classes": 3, "num_heads": 4}
    assert ckpt["meta"].img_size == 32 and len(ckpt["meta"].mean) == 3
    assert ckpt["meta"].grayscale is False  # the tiny images are in colour
    assert ckpt["epoch"] == 2 and ckpt["best_metric"] == result["best_metric"]
    assert json.loads((out / "args.json").read_text())["lr"] == 0.01
    model, meta = load_model(out / "best.safetensors")
    assert meta.model == "dan" and not model.training


def test_keep_epochs_writes_each_epochs_weights_for_averaging(tiny_data, tmp_path):
    out = tmp_path / "run"
    run_train("--data", tiny_data, "--epochs", 2, "--output", out, "--keep-epochs", *FAST)
    files = sorted((out / "epochs").iterdir())
    assert [f.name for f in files] == ["epoch_001.safetensors", "epoch_002.safetensors"]
    last = load_checkpoint(out / "last.pth")["state_dict"]
    model, meta = load_model(files[1])
    assert meta.epoch == 2 and meta.classes == ["angry", "happy", "sad"]
    assert torch.allclose(model.state_dict()["fc.weight"], last["fc.weight"], atol=1e-3)  # fp16 copy of epoch 2
    state, _ = average.average_files(files)
    first, _ = load_model(files[0])
    mean = (first.state_dict()["fc.weight"] + model.state_dict()["fc.weight"]) / 2
    assert torch.allclose(state["fc.weight"], mean, atol=1e-6)
    run_train("--data", tiny_data, "--epochs", 1, "--output", tmp_path / "plain", *FAST)
    assert not (tmp_path / "plain" / "epochs").exists()  # only when asked


def test_resume_continues_exactly(tiny_data, tmp_path):
    run_train("--data", tiny_data, "--epochs", 2, "--output", tmp_path / "straight", "--seed", 5, *FAST)
    run_train("--data", tiny_data, "--epochs", 1, "--output", tmp_path / "split", "--seed", 5, *FAST)
    run_train("--resume", tmp_path / "split", "--epochs", 2, *FAST)
    a = load_checkpoint(tmp_path / "straight" / "last.pth")
    b = load_checkpoint(tmp_path / "split" / "last.pth")
    assert b["epoch"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert torch.equal(a["criterion"]["centers"], b["criterion"]["centers"])
    assert len((tmp_path / "split" / "log.jsonl").read_text().splitlines()) == 2


def test_an_existing_run_folder_is_not_overwritten(tiny_data, tmp_path):
    run_train("--data", tiny_data, "--epochs", 1, "--output", tmp_path / "run", "--model", "resnet18", *FAST)
    with pytest.raises(UserError, match="--resume"):
        run_train("--data", tiny_data, "--epochs", 1, "--output", tmp_path / "run", "--model", "resnet18", *FAST)


def test_grouped_heads_train_and_save_a_plain_dan(tiny_data, tmp_path):
    run_train("--data", tiny_data, "--epochs", 1, "--output", tmp_path / "run", "--grouped-heads", *FAST)
    model, meta = load_model(tmp_path / "run" / "best.pth")
    assert type(model).__name__ == "DAN" and meta.model == "dan"


def test_balanced_sampler_and_adam_recipe(tiny_data, tmp_path):
    result = run_train("--data", tiny_data, "--epochs", 1, "--output", tmp_path / "run", "--model", "resnet18",
                       "--optimizer", "adam", "--balanced-sampler", "--aug", "affectnet", *FAST)
    args = json.loads((tmp_path / "run" / "args.json").read_text())
    assert args["sched"] == "exp" and args["gamma"] == 0.6 and args["weight_decay"] == 0.0
    assert result["best_epoch"] == 1


def test_lr_schedule_warmup_then_step():
    args = train.resolve_args(train.get_args_parser().parse_args(["--data", str(ROOT), "--warmup-epochs", "1"]))
    f = [train.lr_factor(it, 10, args) for it in (0, 9, 10, 99, 100, 205)]
    assert f[0] == pytest.approx(0.1) and f[1] == pytest.approx(1.0)
    assert f[2] == 1.0 and f[3] == 1.0 and f[4] == pytest.approx(0.1) and f[5] == pytest.approx(0.01)


def cli(script, *argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_bad_input_is_one_line_and_nonzero_exit(tmp_path):
    result = cli("train.py", "--data", tmp_path / "missing")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --data")
    assert "Traceback" not in result.stderr
    make_image_folder(tmp_path / "onlytrain", ["happy"], per_class=1, splits=("train",))
    result = cli("train.py", "--data", tmp_path / "onlytrain", "--device", "cpu", "--output", tmp_path / "r")
    assert result.returncode == 2 and "val" in result.stderr and "Traceback" not in result.stderr


def test_ddp_two_processes_on_cpu(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), "--data", str(tiny_data), "--epochs", "1", "--output", str(out),
           "--model", "resnet18", *FAST]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "log.jsonl").read_text())
    assert "2 process(es)" in result.stderr
    # validation is gathered from both ranks: the accuracy is over all 12 val images
    assert round(record["val_acc"] * 12, 6) == round(record["val_acc"] * 12)
    ckpt = load_checkpoint(out / "last.pth")
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])


def test_fp16_autocast_with_grad_scaler_trains(monkeypatch):
    """The path of GPUs without bf16 (fp16 autocast + GradScaler), run on the CPU: the loss is
    finite, the weights move, and the scaler's state is what a checkpoint stores."""
    from data.transforms import PRESETS, Normalize, TrainAugment
    from networks import build_criterion, build_model
    from utils.distributed import DistInfo
    from utils.engine import Optimisation, Precision, Runtime, TrainInputs, TrainStep, train_one_epoch

    torch.manual_seed(0)
    model = build_model("dan", num_classes=3)
    step = TrainStep(model, build_criterion("dan", model))
    optimizer = torch.optim.SGD(step.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    assert Precision.choose(torch.device("cpu"), True, "fp16") == Precision()  # the CPU trains in fp32
    precision = Precision(True, torch.float16)
    assert precision.needs_scaler
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, enabled=True)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    batches = [(images[:4], labels[:4], None, None), (images[4:], labels[4:], None, None)]
    before = model.fc.weight.detach().clone()
    stats = train_one_epoch(step, batches, Optimisation(optimizer, scheduler, scaler),
                            TrainInputs(TrainAugment(PRESETS["none"], Normalize())),
                            Runtime(torch.device("cpu"), precision, True, DistInfo(rank=1, world_size=1)), "fp16")
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    assert not torch.equal(before, model.fc.weight)
    assert scaler.state_dict()["scale"] == 2.0 ** 8  # no overflow at this scale, so no step was skipped


def test_grayscale_source_fraction_and_colour_options(tmp_path):
    data = make_image_folder(tmp_path / "a", ["angry", "happy", "sad"], per_class=4)
    other = make_image_folder(tmp_path / "b", ["angry", "happy", "sad"], per_class=6, seed=1)
    out = tmp_path / "grey"
    run_train("--data", data, other, "--epochs", 1, "--output", out, "--grayscale",
              "--source-fraction", "b=0.5", *FAST)
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["meta"].grayscale is True  # colour images, trained grey: prediction will feed grey
    train_set = train.build_data(train.resolve_args(train.get_args_parser().parse_args(
        ["--data", str(data), str(other), "--source-fraction", "b=0.5", *FAST])), torch.device("cpu"),
        train.init_distributed("cpu"))[0]
    counts = np.bincount(train_set.source_ids, minlength=2)
    assert counts[0] == 12 and 0 < counts[1] < 18  # a: all 12; b: a share of its 18, fixed by the seed
    out = tmp_path / "colour"
    run_train("--data", data, "--epochs", 1, "--output", out, "--no-grayscale", "--colour-aug", 0.5,
              "--grey-prob", 0.2, *FAST)
    assert load_checkpoint(out / "last.pth")["meta"].grayscale is False
    with pytest.raises(UserError, match="colour training"):
        run_train("--data", data, "--epochs", 1, "--output", tmp_path / "x", "--grayscale", "--colour-aug", 0.5, *FAST)
    with pytest.raises(UserError, match="not sources"):
        run_train("--data", data, "--epochs", 1, "--output", tmp_path / "y", "--source-fraction", "zz=0.5", *FAST)
    with pytest.raises(UserError, match="fraction in"):
        run_train("--data", data, "--epochs", 1, "--output", tmp_path / "z", "--source-fraction", "a=2", *FAST)


@pytest.mark.parametrize("key, value, words", [
    ("lr", "abc", "--lr 'abc' is invalid"),
    ("batch_size", 0, "--batch-size 0 is invalid"),
    ("optimizer", "rmsprop", "--optimizer 'rmsprop' is invalid"),
    ("img_size", 8, "--img-size 8 is invalid"),
    ("trunk", "face_resnet", "--trunk applies to --model dan"),  # a check between options, as resolve_args makes
])
def test_resume_checks_the_saved_arguments(tiny_data, tmp_path, key, value, words):
    """The arguments saved in last.pth went unchecked: lr "abc" and batch size 0 crashed, img_size 8 trained."""
    from utils.checkpoint import save_checkpoint
    out = tmp_path / "run"
    run_train("--data", tiny_data, "--epochs", 1, "--output", out, "--model", "resnet18", *FAST)
    ckpt = load_checkpoint(out / "last.pth")
    ckpt["args"][key] = value
    save_checkpoint(ckpt, out / "last.pth")
    with pytest.raises(UserError, match=words) as err:
        run_train("--resume", out, "--epochs", 2, *FAST)
    assert "\n" not in str(err.value)
    assert load_checkpoint(out / "last.pth")["epoch"] == 1  # nothing trained, nothing lost


def test_a_second_run_on_one_folder_is_refused_while_the_first_lives(tiny_data, tmp_path):
    """Two train.py on one --output both ran and exited 0, mixing their files. The folder is locked
    for the run's life; a killed run's lock goes with its process, and the next run takes over."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from utils.run_folder import RunFolder; RunFolder(sys.argv[2]).lock(); "
                               "print('locked', flush=True); time.sleep(60)", str(ROOT), str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by a running train.py \(process {holder.pid}\)"):
            run_train("--data", tiny_data, "--epochs", 1, "--output", out, *FAST)
        assert not (out / "last.pth").exists()
    finally:
        holder.kill()
        holder.wait()
    run_train("--data", tiny_data, "--epochs", 1, "--output", out, *FAST)  # the killed holder's lock is gone
    assert load_checkpoint(out / "last.pth")["epoch"] == 1
    run_train("--resume", out, "--epochs", 2, *FAST)  # and this process let go of it when its run ended
    assert load_checkpoint(out / "last.pth")["epoch"] == 2

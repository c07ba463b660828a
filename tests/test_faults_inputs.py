"""Malformed inputs: images, CSVs, checkpoints, arguments and outputs that cannot be written.

Each is run through a script's own entry point (run_cli, as `python3 <script>` does) and must give
one line on stderr per problem, no traceback, and the documented exit code: 2 for a refusal
(argparse's or a UserError), 130 for Ctrl-C; predict.py 1 when some input failed.
"""
import csv
import io
import os
import pickle
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
import test as evaluate_script
import train
from common.errors import run_cli
from data.datasets import FaceFolder
from data.prepare import cli as prepare_cli
from helpers import ROOT, make_image_folder, tiny_model
from networks import model_meta
from tools import convert


def run(main, argv, capsys, parse=None):
    """(exit code, stderr lines) of main(parse(argv)) under run_cli, as the scripts run it."""
    with pytest.raises(SystemExit) as stop:
        raise SystemExit(run_cli(main, parse(argv) if parse else argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return stop.value.code, [line for line in err.splitlines() if line.strip()]


def refused(parser, argv, capsys):
    """stderr of an argument refused by `parser`, which must exit 2."""
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err and "Traceback" not in err
    return err


# ---- arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: 0 is out of range: must be at least 1"),
    (["--epochs", "many"], "argument --epochs: expected a whole number, got 'many'"),
    (["--lr", "-1"], "argument --lr: -1 is out of range: must be over 0"),
    (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["--momentum", "1"], "argument --momentum: 1 is out of range: must be in [0, 1)"),
    (["--img-size", "16"], "argument --img-size: 16 is out of range: must be at least 32"),
    (["--batch-size", "0"], "argument --batch-size"),
    (["--label-smoothing", "1.5"], "argument --label-smoothing"),
    (["--workers", "-2"], "argument --workers"),
])
def test_train_arguments(argv, message, capsys):
    err = refused(train.get_args_parser(), argv, capsys)
    assert err.startswith("error: ") and message in err and err.endswith("(see --help)")


@pytest.mark.parametrize("argv, message", [
    (["--timeout", "-1"], "argument --timeout: -1 is out of range: must be over 0"),
    (["--download-timeout", "0"], "argument --download-timeout"),
    (["--margin", "-1"], "argument --margin: -1 is out of range: must be at least 0"),
    (["--threads", "0"], "argument --threads"),
    (["--frame-stride", "0"], "argument --frame-stride"),
    (["--max-download-mb", "0"], "argument --max-download-mb"),
    (["--max-pixels", "-5"], "argument --max-pixels"),
])
def test_predict_arguments(argv, message, capsys):
    err = refused(predict.get_args_parser(), ["--params", "x.jpg", *argv], capsys)
    assert err.startswith("error: ") and message in err


def test_test_arguments(capsys):
    assert "argument --batch-size" in refused(evaluate_script.get_args_parser(), ["--batch-size", "0"], capsys)


def test_ctrl_c_exits_130(capsys):
    def interrupted(_):
        raise KeyboardInterrupt
    assert run(interrupted, None, capsys, parse=lambda _: None) == (130, ["interrupted"])


# ---- checkpoints ----------------------------------------------------------------------------------

class _Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    real = io.BytesIO()
    torch.save({"format": "fer-checkpoint", "weights": torch.zeros(4096)}, real)
    real = real.getvalue()
    (folder / "truncated.pth").write_bytes(real[: len(real) // 2])
    (folder / "empty.pth").write_bytes(b"")
    (folder / "noise.pth").write_bytes(os.urandom(4096))
    (folder / "page.pth").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    torch.save({"weight": torch.zeros(2)}, folder / "bare.pth")
    (folder / "payload.pth").write_bytes(pickle.dumps({"state_dict": _Payload(folder / "executed")}))
    (folder / "model.onnx").write_bytes(b"\x08\x07\x12\x04onnx" + os.urandom(64))
    (folder / "garbage.safetensors").write_bytes(b"\xff" * 64)
    return folder


@pytest.mark.parametrize("name, message", [
    ("truncated.pth", "cut short or damaged"),
    ("empty.pth", "the file is empty"),
    ("noise.pth", "not a file torch.save writes"),
    ("page.pth", "it is a web page"),
    ("bare.pth", "not a checkpoint written by this project's train.py"),
    ("payload.pth", "asks for posix.system, which are refused"),
    ("model.onnx", "is an ONNX export, which only predict.py runs"),
    ("garbage.safetensors", "not a readable safetensors file"),
])
def test_bad_checkpoints_for_test_py(checkpoints, name, message, capsys):
    code, err = run(evaluate_script.main, ["--checkpoint", str(checkpoints / name), "--data", str(checkpoints)],
                    capsys, evaluate_script.get_args_parser().parse_args)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {checkpoints / name}") and message in err[0]
    assert "unpickling" not in err[0] or name == "payload.pth"  # said only where it is the reason
    assert not (checkpoints / "executed").exists()


def test_resume_from_a_damaged_checkpoint(checkpoints, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copyfile(checkpoints / "truncated.pth", run_dir / "last.pth")
    code, err = run(train.main, ["--resume", str(run_dir)], capsys, train.get_args_parser().parse_args)
    assert code == 2 and err[-1] == (f"error: {run_dir / 'last.pth'} cannot be loaded as a checkpoint: it is cut "
                                     "short or damaged (torch.save writes a zip archive and this one has no end "
                                     "record): an interrupted copy or download? copy it again")


# ---- images and predict.py's outputs --------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "resnet18.safetensors")


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (a decompression bomb's signature)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 17: ihdr + 21] = zlib.crc32(bytes(data[ihdr: ihdr + 17])).to_bytes(4, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (48, 48), (90, 60, 30)).save(folder / "good.jpg")
    good = (folder / "good.jpg").read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("just some words\n")
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])
    (folder / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    (folder / "nothing").mkdir()
    return folder


def predict_argv(model, *argv):
    return [*argv, "--checkpoint", str(model), "--backend", "torch", "--detector", "none", "--threads", "1"]


def test_bad_images_fail_one_line_each_and_the_rest_run(model, images, capsys):
    bad = ["empty.jpg", "text.jpg", "cut.jpg", "bomb.png", "nothing", "absent.jpg"]
    params = [str(images / "good.jpg")] + [str(images / name) for name in bad] + [
        str(images / "*.gif"), "ftp://example.invalid/x.jpg"]
    with pytest.raises(SystemExit) as stop:
        raise SystemExit(run_cli(predict.main, predict.get_args_parser().parse_args(
            predict_argv(model, "--params", *params))))
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert stop.value.code == 1 and "Traceback" not in captured.err
    assert len(errors) == len(bad) + 2 and all(line.startswith("error: ") for line in errors)
    assert "over the limit of 50,000,000 pixels" in errors[3] and "no images in this folder" in errors[4]
    assert "good.jpg" in captured.out and "1 face" in captured.out


def test_save_dir_that_is_a_file(model, images, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("a file")
    code, err = run(predict.main, predict_argv(model, "--params", str(images / "good.jpg"), "--save-dir",
                                               str(target)), capsys, predict.get_args_parser().parse_args)
    assert code == 2 and err == [f"error: {target} is a file, not a folder: choose another place for the pictures"]


def test_a_picture_that_cannot_be_written_fails_its_input_only(model, images, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "good.jpg").mkdir(parents=True)  # where the first picture would go
    second = tmp_path / "second.jpg"
    shutil.copyfile(images / "good.jpg", second)
    code, err = run(predict.main, predict_argv(model, "--params", str(images / "good.jpg"), str(second),
                                               "--save-dir", str(out)), capsys, predict.get_args_parser().parse_args)
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {out / 'good.jpg'}: cannot write it")
    assert (out / "second.jpg").is_file()


def test_unwritable_save_dir_is_refused_before_the_model_loads(model, images, tmp_path):
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    drop = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    probe = subprocess.run([*drop, "touch", str(locked / "probe")], capture_output=True)
    if probe.returncode == 0 or (drop and b"setpriv" in probe.stderr):
        pytest.skip("file permissions cannot be enforced here")
    result = subprocess.run([*drop, sys.executable, str(ROOT / "predict.py"), "--params", str(images / "good.jpg"),
                             "--save-dir", str(locked / "out"), "--checkpoint", str(model)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {locked / 'out'}: cannot write pictures there (Permission denied)"]


# ---- datasets and CSVs ----------------------------------------------------------------------------

def test_empty_class_folder_and_class_missing_from_val_are_warned(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", ["angry", "happy", "sad"], per_class=2, size=32)
    shutil.rmtree(data / "val" / "sad")
    (data / "train" / "fear").mkdir()
    found = FaceFolder([data], "train", 32)
    assert found.classes == ["angry", "happy", "sad"]
    assert f"{data / 'train' / 'fear'} holds no images: fear is left out" in caplog.text
    val = FaceFolder([data], "val", 32, classes=found.classes)
    assert val.missing_classes() == ["sad"]
    args = train.resolve_args(train.get_args_parser().parse_args(["--data", str(data), "--workers", "0",
                                                                  "--pretrained", "none"]))
    from utils.distributed import DistInfo
    train.build_data(args, torch.device("cpu"), DistInfo())
    assert "the val split has no images of ['sad']" in caplog.text


def _fer_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


PIXELS = " ".join(["128"] * 48 * 48)


def test_fer2013_without_usage_says_what_it_assumed(tmp_path, caplog):
    src = _fer_csv(tmp_path / "fer.csv", ["emotion", "pixels"], [[i % 7, PIXELS] for i in range(20)])
    assert prepare_cli.main(["fer2013", "--src", str(src), "--dst", str(tmp_path / "out")]) == 0
    assert "has no Usage column: every row is taken as Training" in caplog.text


@pytest.mark.parametrize("header, rows, message", [
    (["emotion", "Usage"], [[0, "Training"]], "needs the columns emotion and pixels"),
    (["emotion", "pixels", "Usage"], [[9, PIXELS, "Training"]], "emotion '9' is outside 0-6"),
    (["emotion", "pixels", "Usage"], [[0, "1 2 3", "Training"]], "expected 2304 pixels, found 3"),
    (["emotion", "pixels", "Usage"], [[0, PIXELS, "Validation"]], "Usage 'Validation' is none of"),
])
def test_malformed_fer2013_csv_is_one_line(tmp_path, header, rows, message, capsys):
    src = _fer_csv(tmp_path / "fer.csv", header, rows)
    code, err = run(prepare_cli.main, ["fer2013", "--src", str(src), "--dst", str(tmp_path / "out"), "--strict"],
                    capsys)
    assert code == 2 and message in err[-1] and err[-1].startswith("error: ")


# ---- published weights ----------------------------------------------------------------------------

def test_convert_names_the_label_order_it_assumed(monkeypatch, tmp_path, capsys):
    """A RAF-DB file given as --format dan-affectnet7 cannot be told apart by its contents; the
    converter says which order it assumed, how to check it, and warns when the name disagrees."""
    meta = model_meta("dan", {"num_classes": 7, "num_heads": 4}, convert.FORMATS["dan-affectnet7"].classes)
    monkeypatch.setattr(convert, "convert", lambda *args: meta)
    src = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
    convert.main(convert.get_args_parser().parse_args(["--src", str(src), "--format", "dan-affectnet7", "--dst",
                                                       str(tmp_path / "dan.safetensors")]))
    err = capsys.readouterr().err
    assert "named like a dan-rafdb file, but --format dan-affectnet7 was given" in err
    assert "label order assumed from --format dan-affectnet7" in err and "python3 test.py --checkpoint" in err
    assert "near its reported AffectNet-7 accuracy 65.69%" in err


def test_float_tiff_in_zero_to_one_is_scaled_not_black(tmp_path):
    from data.images import decode_image
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (16, 1))
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    Image.fromarray(ramp * 255, mode="F").save(tmp_path / "bytes.tif")
    for name in ("unit.tif", "bytes.tif"):
        rgb = np.asarray(decode_image(tmp_path / name))
        assert rgb.shape == (16, 32, 3) and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255, name
        assert abs(int(rgb[0, 16, 0]) - round(16 / 31 * 255)) <= 1, name


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that declares width x height pixels and holds none: Pillow reads its size from the header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_a_pixel_limit_above_pillows_own_is_the_one_that_holds(tmp_path):
    """--max-pixels above Pillow's cap made Pillow refuse the image first, and the message then named our
    limit as exceeded when the image was under it."""
    from data.images import ImageTooLarge, decode_image
    from common.errors import UserError
    path = tmp_path / "big.png"
    _png_header_only(path, 20_000, 10_000)  # 200 million pixels, over twice Pillow's default cap
    with pytest.raises(UserError) as err:
        decode_image(path, max_pixels=300_000_000)
    assert not isinstance(err.value, ImageTooLarge) and "over the limit" not in str(err.value)
    with pytest.raises(ImageTooLarge, match="20000x10000 pixels is over the limit of 100,000,000"):
        decode_image(path, max_pixels=100_000_000)


def test_a_truncated_video_warns_with_the_frames_read(tmp_path, caplog):
    import cv2

    from inference.sources import iter_inputs
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), 10 * i, np.uint8))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.8)])
    with caplog.at_level("WARNING"):
        frames = [item for item in iter_inputs([str(path)]) if item.image is not None]
    assert 0 < len(frames) < 20
    assert f"read {len(frames)} of its 20 frames" in caplog.text and "truncated" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert len(list(iter_inputs([str(path)], max_frames=2))) == 2  # stopped on purpose: no warning
    assert "frames" not in caplog.text

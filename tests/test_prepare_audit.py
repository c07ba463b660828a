"""data/prepare: the audit (duplicates, conflicts, leaks), the command line, and every layout loaded and trained on."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.prepare.audit import audit, format_report
from helpers import ROOT
from prepare_fakes import (fer_rows, make_affectnet_manual, make_class_folders, make_fer_csv, make_prepared_pair,
                           noise_image, read_manifest, run_prepare)


def _leaky_copy(clean: Path, dst: Path) -> tuple[int, set]:
    """Rebuild `clean` the way the original repository split its merged data: val/ is
    filled partly from train/, and test subjects are put into train/ as well."""
    shutil.copytree(clean, dst)
    rows = read_manifest(dst)
    train = sorted(row["path"] for row in rows if row["split"] == "train")
    copied = train[::3]
    for path in copied:
        _, label, name = path.split("/")
        (dst / "val" / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dst / path, dst / "val" / label / f"copy_{name}")
    test_rows = [row for row in rows if row["split"] == "test" and row["source"] == "ckplus"]
    moved = test_rows[0]
    shutil.copyfile(dst / moved["path"], dst / "train" / moved["class"] / "moved.png")
    with open(dst / "manifest.csv", "a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow(
            [f"train/{moved['class']}/moved.png", moved["class"], "train", "ckplus", moved["subject"], "x"])
    return len(copied), {f"ckplus/{moved['subject']}"}


def test_audit_catches_a_leaky_merged_split_like_the_original_repository(tmp_path, capsys):
    raf, ck = make_prepared_pair(tmp_path)
    clean = tmp_path / "merged"
    run_prepare("merge", "--src", raf, ck, "--dst", clean)
    assert run_prepare("audit", clean, "--strict", "--json", tmp_path / "clean.json") == 0
    assert json.loads((tmp_path / "clean.json").read_text())["cross_split_duplicates"] == 0

    copied, subjects = _leaky_copy(clean, tmp_path / "leaky")
    status = run_prepare("audit", tmp_path / "leaky", "--strict", "--json", tmp_path / "leaky.json")
    report = json.loads((tmp_path / "leaky.json").read_text())
    assert status == 1
    # every copied val image, and the test image put into train (train comes first: the test copy leaks)
    assert report["cross_split_duplicates"] == copied + 1
    assert report["cross_split_by_pair"]["val-train"]["exact"] == copied
    assert report["cross_split_by_pair"]["test-train"]["exact"] == 1
    assert set(report["subject_overlap"]["test-train"]) == subjects
    assert "LEAKS" in capsys.readouterr().out


def test_audit_finds_duplicates_conflicts_unreadable_and_near_copies(tmp_path):
    root = tmp_path / "data"
    a = noise_image(root / "train" / "happy" / "a.png", size=(32, 32))
    noise_image(root / "train" / "happy" / "b.png", size=(32, 32))
    shutil.copyfile(a, root / "train" / "happy" / "a_again.png")
    (root / "train" / "sad").mkdir()
    shutil.copyfile(a, root / "train" / "sad" / "a_as_sad.png")
    near = np.asarray(Image.open(a)).astype(int)
    near[0, 0] = (near[0, 0] + 40) % 256  # one pixel changed: a near, not an exact, copy
    (root / "val" / "happy").mkdir(parents=True)
    Image.fromarray(near.astype(np.uint8)).save(root / "val" / "happy" / "a_near.png")
    (root / "val" / "sad").mkdir(parents=True)
    (root / "val" / "sad" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    report = audit(root)
    assert report["counts"] == {"train": {"happy": 3, "sad": 1}, "val": {"happy": 1, "sad": 1}}
    assert report["exact_duplicates_within"]["train"] == {"extra_copies": 2, "groups": 1}
    assert report["conflicting_labels"]["groups"] == 1 and report["conflicting_labels"]["images"] == 3
    assert [u["path"] for u in report["unreadable"]] == ["val/sad/broken.jpg"]
    assert (report["cross_split_duplicates"], report["cross_split_near"]) == (1, 1)
    assert report["subjects_known"] is False
    assert "unreadable files: 1" in format_report(report)
    in_two_processes = audit(root, workers=2)
    assert {k: in_two_processes[k] for k in report if k != "root"} == {k: report[k] for k in report if k != "root"}


def test_audit_of_val_is_test_layout_is_clean(tmp_path):
    src = make_class_folders(tmp_path / "all", {"angry": 0, "happy": 0}, subjects=[f"S{i:03d}" for i in range(5)])
    run_prepare("folder", "--src", src, "--dst", tmp_path / "out", "--subject-regex", r"^(S\d+)_", "--folds", "5",
                "--val-is-test")
    report = audit(tmp_path / "out")
    assert report["val_is_test"] and not report["leaks"]


def test_cli_turns_user_errors_into_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data.prepare", "fer2013", "--src", str(tmp_path / "nothing"),
                             "--dst", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no fer2013.csv") and result.stderr.count("\n") == 1


def _every_layout(tmp_path: Path) -> list[Path]:
    """One small prepared dataset of each kind."""
    raf, ck = make_prepared_pair(tmp_path)
    run_prepare("merge", "--src", raf, ck, "--dst", tmp_path / "merged", "--class-map", "neutral=-,contempt=-")
    make_fer_csv(tmp_path / "fer2013.csv", fer_rows())
    run_prepare("fer2013", "--src", tmp_path / "fer2013.csv", "--dst", tmp_path / "fer")
    run_prepare("affectnet", "--src", make_affectnet_manual(tmp_path / "aff"), "--dst", tmp_path / "affectnet")
    photos = make_class_folders(tmp_path / "photos", {"happy": 0, "sad": 0}, subjects=[f"S{i:03d}" for i in range(6)])
    run_prepare("folder", "--src", photos, "--dst", tmp_path / "folder", "--subject-regex", r"^(S\d+)_", "--folds", "3",
                "--val-is-test")
    return [raf, ck, tmp_path / "merged", tmp_path / "fer", tmp_path / "affectnet", tmp_path / "folder"]


def test_every_prepared_layout_loads_as_an_image_folder(tmp_path):
    datasets = pytest.importorskip("torchvision.datasets")
    for root in _every_layout(tmp_path):
        for split in ("train", "val", "test"):
            folder = datasets.ImageFolder(root / split)
            assert set(folder.classes) <= {"angry", "contempt", "disgust", "fear", "happy", "neutral", "sad",
                                           "surprise"}
            image, _ = folder[0]
            assert image.size[0] > 0


def test_train_py_runs_on_every_prepared_layout(tmp_path):
    if not (ROOT / "train.py").is_file():
        pytest.skip("train.py is absent")
    layouts = _every_layout(tmp_path)
    command = [sys.executable, "train.py", "--data", *map(str, layouts), "--model", "resnet18", "--epochs", "1",
               "--batch-size", "8", "--img-size", "32", "--pretrained", "none", "--device", "cpu", "--workers", "0",
               "--threads", "1", "--output", str(tmp_path / "run")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "best.pth").is_file()


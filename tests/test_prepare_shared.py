"""data/prepare: the real data in ../shared/data (skipped without it)."""
import csv
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.prepare import fer2013
from data.prepare.audit import audit
from helpers import SHARED_DATA
from prepare_fakes import count_splits, make_fer_csv, read_manifest, run_prepare, subjects_by_split


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def test_shared_ck_plus_48_subject_folds(tmp_path):
    ck = _shared("ck_plus_48")
    dst = tmp_path / "ckplus48"
    run_prepare("folder", "--src", ck / "all", "--dst", dst, "--subject-regex", r"^(S\d+)_", "--folds-csv",
                ck / "folds.csv", "--fold", "0", "--val-is-test", "--link")
    by_split = subjects_by_split(dst)
    with open(ck / "folds.csv", newline="") as f:
        fold0 = {row["subject"] for row in csv.DictReader(f) if row["fold"] == "0"}
    assert by_split["test"] == by_split["val"] == fold0
    assert not by_split["train"] & by_split["test"]
    assert len(by_split["train"] | by_split["test"]) == 118
    assert count_splits(dst)["train"] + count_splits(dst)["test"] == 981

    run_prepare("folder", "--src", ck / "all", "--dst", tmp_path / "computed", "--subject-regex", r"^(S\d+)_",
                "--folds", "5", "--fold", "0", "--link")
    by_split = subjects_by_split(tmp_path / "computed")
    for a, b in itertools.combinations(("train", "val", "test"), 2):
        assert not by_split[a] & by_split[b], f"{a} and {b} share subjects"
    assert audit(tmp_path / "computed")["leaks"] is False


def test_shared_fer2013_csv_round_trip(tmp_path):
    source = _shared("fer2013")
    labels = {label: i for i, label in enumerate(fer2013.LABELS)}
    usage = {"train": "Training", "val": "PublicTest"}
    # every 25th image keeps the test short; the conversion is the same for all 32,298
    files = sorted(source.glob("*/*/*.jpg"))[::25]
    rows = [(labels[p.parent.name], np.asarray(Image.open(p).convert("L")), usage[p.parent.parent.name])
            for p in files]
    make_fer_csv(tmp_path / "fer2013.csv", rows)
    run_prepare("fer2013", "--src", tmp_path / "fer2013.csv", "--dst", tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == len(files)
    for row in manifest:
        index = int(Path(row["path"]).stem[3:])
        assert (row["split"], row["class"]) == (files[index].parent.parent.name, files[index].parent.name)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / row["path"])), rows[index][1])


@pytest.fixture(scope="module")
def fer2013_audit():
    source = _shared("fer2013")
    start = time.perf_counter()
    report = audit(source)
    return report, time.perf_counter() - start


def test_shared_fer2013_audit_finds_the_copies_of_val_in_train(fer2013_audit):
    report, seconds = fer2013_audit
    assert report["counts"]["train"]["happy"] == 7215 and sum(report["counts"]["val"].values()) == 3589
    assert 250 <= report["cross_split_exact"] <= 320  # about 280 val images are pixel-identical to train ones
    assert report["cross_split_other_class"] > 0  # some of them filed under another class
    assert report["cross_split_duplicates"] >= report["cross_split_exact"]
    assert report["leaks"] and not report["unreadable"]
    assert seconds < 60


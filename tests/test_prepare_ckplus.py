"""data/prepare: CK+ (the release's sequences and emotion files, and the CK+48 layout)."""
from pathlib import Path

from prepare_fakes import (count_layout, make_ckplus_release, make_class_folders, read_manifest, run_prepare,
                           subjects_by_split)


def test_ckplus_release_last_frames_neutral_and_subjects(tmp_path):
    src = make_ckplus_release(tmp_path / "ck")
    labelled = sum(1 for _ in (src / "Emotion").glob("*/*/*.txt"))
    run_prepare("ckplus", "--src", src, "--dst", tmp_path / "out", "--neutral", "--frames", "2")
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == labelled * 3
    neutral = [row for row in rows if row["class"] == "neutral"]
    assert len(neutral) == labelled and all(row["path"].endswith("_00000001.png") for row in neutral)
    # codes 0-7 = neutral, anger, contempt, disgust, fear, happy, sadness, surprise; S001/001 has (1+1)%7+1 = 3
    peak = [row for row in rows if "S001_001_0000000" in row["path"] and row["class"] != "neutral"]
    assert {row["class"] for row in peak} == {"disgust"} and len(peak) == 2
    assert all(row["subject"] == Path(row["path"]).name[:4] for row in rows)
    subjects = subjects_by_split(tmp_path / "out")
    assert set(subjects) == {"train", "val", "test"}
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"]
                or subjects["val"] & subjects["test"])


def test_ckplus_bad_emotion_file(tmp_path, caplog):
    src = make_ckplus_release(tmp_path / "ck")
    bad = next((src / "Emotion").glob("*/*/*.txt"))
    bad.write_text("9.0000000e+00\n")
    run_prepare("ckplus", "--src", src, "--dst", tmp_path / "out")
    assert f"{bad}:1: emotion code 9 is outside 0-7" in caplog.text


def test_ckplus48_layout(tmp_path):
    subjects = [f"S{i:03d}" for i in range(10)]
    make_class_folders(tmp_path / "ck" / "CK+48", {"anger": 0, "sadness": 0, "happy": 0}, subjects=subjects)
    run_prepare("ckplus", "--src", tmp_path / "ck", "--dst", tmp_path / "out", "--folds", "5", "--fold", "2")
    layout = count_layout(tmp_path / "out")
    assert {label for _, label in layout} == {"angry", "sad", "happy"}
    subjects = subjects_by_split(tmp_path / "out")
    assert len(subjects["test"]) == 2 and not subjects["test"] & subjects["train"]


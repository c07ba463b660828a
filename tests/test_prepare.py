"""Tests of data/prepare: each official layout is built in tmp_path with PIL, then converted."""
import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.prepare import fer2013
from data.prepare.audit import audit, format_report
from data.prepare.cli import main
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
_seeds = itertools.count()


# ---------------------------------------------------------------- helpers

def _image(path: Path, size=(16, 16), mode="RGB") -> Path:
    """Save a noise image no other test image equals (nor nearly equals)."""
    rng = np.random.default_rng(next(_seeds))
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def _prepare(*argv) -> int:
    return main([str(a) for a in argv])


def _manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _layout(root: Path) -> Counter:
    """(split, class) → number of files, read from the folders themselves."""
    return Counter(tuple(p.relative_to(root).parts[:2]) for p in root.glob("*/*/*") if p.is_file())


def _split_sizes(root: Path) -> Counter:
    return Counter(p.relative_to(root).parts[0] for p in root.glob("*/*/*") if p.is_file())


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _subjects_by_split(root: Path) -> dict:
    subjects = defaultdict(set)
    for row in _manifest(root):
        subjects[row["split"]].add(row["subject"])
    return subjects


def _class_folders(root: Path, classes: dict, subjects=("S001", "S002", "S003", "S004", "S005"), per=2) -> Path:
    """`root/<class>/<subject>_<n>.png` for each folder name → image count per subject."""
    for folder, _ in classes.items():
        for subject in subjects:
            for n in range(per):
                _image(root / folder / f"{subject}_{n:03d}.png", mode="L")
    return root


# ---------------------------------------------------------------- rafdb

def _rafdb(root: Path, lines: list[str], original=False) -> Path:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        name = line.split()[0]
        if name.endswith(".jpg") and "missing" not in name:
            stem = name[:-4]
            _image(root / "Image" / "aligned" / f"{stem}_aligned.jpg")
            if original:
                _image(root / "Image" / "original" / name)
    return root


def _rafdb_lines(train=40, test=7) -> list[str]:
    lines = [f"train_{i:05d}.jpg {i % 7 + 1}" for i in range(1, train + 1)]
    return lines + [f"test_{i:04d}.jpg {i % 7 + 1}" for i in range(1, test + 1)]


def test_rafdb_maps_labels_keeps_test_and_carves_val(tmp_path):
    src = _rafdb(tmp_path / "raf", _rafdb_lines())
    _prepare("rafdb", "--src", src, "--dst", tmp_path / "out")
    rows = {row["original"].rsplit("/", 1)[-1]: row for row in _manifest(tmp_path / "out")}
    # 1-7 = surprise, fear, disgust, happy, sad, angry, neutral
    assert rows["train_00007_aligned.jpg"]["class"] == "surprise"  # 7 % 7 + 1 = 1
    assert rows["train_00005_aligned.jpg"]["class"] == "angry"  # label 6
    assert rows["train_00006_aligned.jpg"]["class"] == "neutral"  # label 7
    assert rows["test_0003_aligned.jpg"]["split"] == "test"
    sizes = _split_sizes(tmp_path / "out")
    assert sizes == {"train": 36, "val": 4, "test": 7}
    assert {row["source"] for row in rows.values()} == {"rafdb"}
    assert not any(row["split"] == "val" and row["original"].rsplit("/", 1)[-1].startswith("test")
                   for row in rows.values())


def test_rafdb_original_images(tmp_path):
    src = _rafdb(tmp_path / "raf", _rafdb_lines(10, 2), original=True)
    _prepare("rafdb", "--src", src, "--dst", tmp_path / "out", "--original")
    assert all("/Image/original/" in row["original"] for row in _manifest(tmp_path / "out"))


def test_rafdb_bad_lines_are_skipped_or_fatal_with_strict(tmp_path, caplog):
    lines = _rafdb_lines(10, 2) + ["train_00098.jpg 9", "a line without a label", "train_missing.jpg 1"]
    src = _rafdb(tmp_path / "raf", lines)
    _prepare("rafdb", "--src", src, "--dst", tmp_path / "out")
    assert sum(_split_sizes(tmp_path / "out").values()) == 12
    assert "list_patition_label.txt:13: label 9 is outside 1-7" in caplog.text
    assert "list_patition_label.txt:14" in caplog.text and "list_patition_label.txt:15" in caplog.text
    assert "skipped 3 bad items" in caplog.text
    with pytest.raises(UserError, match=r"list_patition_label.txt:13"):
        _prepare("rafdb", "--src", src, "--dst", tmp_path / "strict", "--strict")
    assert not (tmp_path / "strict").exists()


def test_rafdb_wrong_folder_says_what_to_do(tmp_path):
    (tmp_path / "raf").mkdir()
    with pytest.raises(UserError, match="point --src at"):
        _prepare("rafdb", "--src", tmp_path / "raf", "--dst", tmp_path / "out")


# ---------------------------------------------------------------- affectnet

_AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                     "facial_landmarks", "expression", "valence", "arousal"]


def _affectnet_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_AFFECTNET_HEADER)
        writer.writerows(rows)


def _affectnet_manual(root: Path) -> Path:
    images = root / "Manually_Annotated_Images"
    train, val = [], []
    for code in range(11):  # 0-7 expressions, 8-10 none / uncertain / no face
        for k in range(2):
            rel = f"{code + 1}/img_{code}_{k}.jpg"
            _image(images / rel, size=(64, 48))
            train.append([rel, 4, 6, 32, 24, "1.0;2.0;3.0", code, 0.1, -0.2])
    for code in range(8):
        rel = f"900/val_{code}.jpg"
        _image(images / rel, size=(64, 48))
        val.append([rel, 0, 0, 100, 100, "", code, 0, 0])  # box larger than the image: clipped
    train.append(["1/img_0_0.jpg", "x", 0, 10, 10, "", 1, 0, 0])  # malformed
    train.append(["1/img_0_1.jpg", 0, 0, 10, 10, "", 12, 0, 0])  # out of range
    _affectnet_csv(root / "training.csv", train)
    _affectnet_csv(root / "validation.csv", val)
    return root


def test_affectnet_manual_crops_maps_and_drops(tmp_path, caplog):
    src = _affectnet_manual(tmp_path / "affectnet")
    _prepare("affectnet", "--src", src, "--dst", tmp_path / "out")
    rows = _manifest(tmp_path / "out")
    by_name = {Path(row["original"]).name: row for row in rows}
    # 0-7 = neutral, happy, sad, surprise, fear, disgust, anger, contempt
    assert by_name["img_6_0.jpg"]["class"] == "angry"
    assert by_name["img_7_1.jpg"]["class"] == "contempt"
    assert by_name["val_3.jpg"]["split"] == "test"
    assert not any(name.startswith(("img_8", "img_9", "img_10")) for name in by_name)
    assert _split_sizes(tmp_path / "out") == {"train": 14, "val": 2, "test": 8}
    crop = Image.open(tmp_path / "out" / by_name["img_1_0.jpg"]["path"])
    assert crop.size == (32, 24)
    assert Image.open(tmp_path / "out" / by_name["val_0.jpg"]["path"]).size == (64, 48)
    assert "training.csv:24: malformed row" in caplog.text
    assert "training.csv:25: expression 12 is outside 0-10" in caplog.text
    info = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert info["dropped"] == {"expression 10, no face": 2, "expression 8, none": 2, "expression 9, uncertain": 2}


def test_affectnet_seven_classes_drop_contempt(tmp_path):
    src = _affectnet_manual(tmp_path / "affectnet")
    _prepare("affectnet", "--src", src, "--dst", tmp_path / "out", "--classes", "7")
    assert "contempt" not in {row["class"] for row in _manifest(tmp_path / "out")}
    assert sum(_split_sizes(tmp_path / "out").values()) == 14 + 7


def test_affectnet_small_release(tmp_path):
    src = tmp_path / "affectnet"
    for folder, count in (("train_set", 16), ("val_set", 8)):
        (src / folder / "annotations").mkdir(parents=True)
        for i in range(count):
            _image(src / folder / "images" / f"{i}.jpg", size=(24, 24))
            np.save(src / folder / "annotations" / f"{i}_exp.npy", np.array(str(i % 8)))
    _prepare("affectnet", "--src", src, "--dst", tmp_path / "out")
    rows = {(row["split"] != "test", Path(row["original"]).name): row for row in _manifest(tmp_path / "out")}
    assert rows[(True, "3.jpg")]["class"] == "surprise"
    assert rows[(False, "6.jpg")]["class"] == "angry"
    assert _split_sizes(tmp_path / "out") == {"train": 14, "val": 2, "test": 8}


# ---------------------------------------------------------------- fer2013

def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)


def _fer_csv(path: Path, rows: list[tuple], icml=False) -> Path:
    """rows: (emotion, pixels (48, 48) or a raw string, usage)."""
    def text(p):
        return p if isinstance(p, str) else " ".join(map(str, p.ravel()))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if icml:  # Kaggle's variant: another column order, names with a leading space
            writer.writerow(["emotion", " Usage", " pixels"])
            writer.writerows([e, u, text(p)] for e, p, u in rows)
        else:
            writer.writerow(["emotion", "pixels", "Usage"])
            writer.writerows([e, text(p), u] for e, p, u in rows)
    return path


def _fer_rows() -> list[tuple]:
    usages = ["Training"] * 14 + ["PublicTest"] * 4 + ["PrivateTest"] * 3
    return [(i % 7, _pixels(i), usage) for i, usage in enumerate(usages)]


@pytest.mark.parametrize("icml", [False, True])
def test_fer2013_csv_pixels_labels_and_usage(tmp_path, icml):
    rows = _fer_rows()
    src = _fer_csv(tmp_path / ("icml_face_data.csv" if icml else "fer2013.csv"), rows, icml=icml)
    _prepare("fer2013", "--src", tmp_path, "--dst", tmp_path / "out")
    assert _split_sizes(tmp_path / "out") == {"train": 14, "val": 4, "test": 3}
    for row in _manifest(tmp_path / "out"):
        index = int(Path(row["path"]).stem[3:])
        emotion, pixels, usage = rows[index]
        assert row["class"] == fer2013.LABELS[emotion]  # 0-6 = angry, disgust, fear, happy, sad, surprise, neutral
        assert row["split"] == fer2013.USAGE[usage]
        assert row["original"] == f"{src}:{index + 2}"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / row["path"])), pixels)


def test_fer2013_bad_rows_are_reported_with_their_line(tmp_path, caplog):
    rows = _fer_rows()
    rows[2] = (3, "1 2 3", "Training")
    rows[5] = (9, _pixels(5), "Training")
    rows[7] = (1, _pixels(7), "Validation")
    src = _fer_csv(tmp_path / "fer2013.csv", rows)
    _prepare("fer2013", "--src", src, "--dst", tmp_path / "out")
    assert f"{src}:4: expected 2304 pixels, found 3" in caplog.text
    assert f"{src}:7: emotion '9' is outside 0-6" in caplog.text
    assert f"{src}:9: Usage 'Validation'" in caplog.text
    assert sum(_split_sizes(tmp_path / "out").values()) == 18
    with pytest.raises(UserError, match=r"fer2013.csv:4: expected 2304 pixels"):
        _prepare("fer2013", "--src", src, "--dst", tmp_path / "strict", "--strict")


def _ferplus_csv(path: Path, votes: list[list], usages: list[str], faces=None) -> Path:
    """FER+'s fer2013new.csv: one row of 10 counts per FER2013 row; rows not in `faces`
    (default: all) have no image name, as FER+ marks non-faces."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                         "fear", "contempt", "unknown", "NF"])
        for i, (vote, usage) in enumerate(zip(votes, usages)):
            writer.writerow([usage, f"fer{i:07d}.png" if faces is None or i in faces else ""] + vote)
    return path


def test_fer2013_ferplus_plurality_relabels_and_drops(tmp_path):
    rows = _fer_rows()[:7]
    _fer_csv(tmp_path / "fer2013.csv", rows)
    votes = [[0, 8, 1, 0, 0, 0, 0, 0, 1, 0],  # happy
             [1, 0, 0, 0, 0, 0, 0, 0, 9, 0],  # unknown: dropped
             [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face: dropped
             [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],  # tie: dropped
             [0, 0, 0, 3, 0, 0, 0, 7, 0, 0],  # contempt
             [0, 0, 0, 6, 4, 0, 0, 0, 0, 0],  # sad
             [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]]  # not in FER+ (no image name): dropped
    _ferplus_csv(tmp_path / "fer2013new.csv", votes, ["Training"] * 7, faces=range(6))
    _prepare("fer2013", "--src", tmp_path / "fer2013.csv", "--dst", tmp_path / "out",
             "--ferplus", tmp_path / "fer2013new.csv", "--val-fraction", "0")
    labels = {Path(row["path"]).name: row["class"] for row in _manifest(tmp_path / "out")}
    assert labels == {"fer0000000.png": "happy", "fer0000004.png": "contempt", "fer0000005.png": "sad"}
    assert {row["source"] for row in _manifest(tmp_path / "out")} == {"ferplus"}


# ---------------------------------------------------------------- ferplus

# One image per case of FER+'s protocol: (usage, votes in fer2013new.csv's column order
# neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF).
_FERPLUS_CASES = [
    ("Training", [0, 8, 1, 0, 0, 0, 0, 0, 1, 0]),  # 0: happy 8 of 10
    ("Training", [0, 0, 1, 4, 3, 0, 1, 0, 1, 0]),  # 1: sad 4 of 10, but 4 of the 7 left without the single votes
    ("Training", [0, 0, 4, 3, 0, 0, 3, 0, 0, 0]),  # 2: no majority; surprise is the top
    ("Training", [1, 0, 0, 0, 0, 0, 0, 0, 9, 0]),  # 3: unknown wins
    ("Training", [0, 3, 0, 0, 0, 0, 0, 0, 4, 3]),  # 4: no majority; unknown is the top
    ("PublicTest", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8]),  # 5: not-a-face wins
    ("PublicTest", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # 6: no image name: not a face
    ("PublicTest", [0, 0, 0, 3, 0, 0, 0, 7, 0, 0]),  # 7: contempt
    ("PrivateTest", [0, 0, 0, 0, 6, 2, 1, 0, 1, 0]),  # 8: angry
    ("PrivateTest", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),  # 9: tie: no majority, no unique top
]
_NOT_A_FACE = "not a face: no Image name in fer2013new.csv"
_VOTES_HEADER = "file,neutral,happy,surprise,sad,angry,disgust,fear,contempt,unknown,not_face"


def _ferplus_release(root: Path, cases=_FERPLUS_CASES) -> tuple[Path, Path]:
    """(fer2013.csv, fer2013new.csv) in `root`, one FER2013 row per case, row 6 not a face."""
    root.mkdir(parents=True, exist_ok=True)
    usages = [usage for usage, _ in cases]
    fer = _fer_csv(root / "fer2013.csv", [(i % 7, _pixels(100 + i), usage) for i, usage in enumerate(usages)])
    votes = _ferplus_csv(root / "fer2013new.csv", [vote for _, vote in cases], usages,
                         faces=set(range(len(cases))) - {6})
    return fer, votes


@pytest.mark.parametrize("options, kept, dropped", [
    ([], {0: "train/happy", 1: "train/sad", 7: "val/contempt", 8: "test/angry"},
     {"no majority": 3, "winner unknown": 1, "winner not_face": 1, _NOT_A_FACE: 1}),
    (["--no-majority", "keep-argmax"], {0: "train/happy", 1: "train/sad", 2: "train/surprise", 7: "val/contempt",
                                        8: "test/angry"},
     {"no majority": 1, "winner unknown": 2, "winner not_face": 1, _NOT_A_FACE: 1}),
    (["--min-votes", "1"], {0: "train/happy", 7: "val/contempt", 8: "test/angry"},
     {"no majority": 4, "winner unknown": 1, "winner not_face": 1, _NOT_A_FACE: 1}),
])
def test_ferplus_majority_protocol_splits_votes_and_drops(tmp_path, options, kept, dropped):
    fer, votes = _ferplus_release(tmp_path / "release")
    dst = tmp_path / "out"
    _prepare("ferplus", "--src", fer.parent, "--votes", votes, "--dst", dst, *options)
    expected = {f"{where}/fer{i:07d}.png" for i, where in kept.items()}
    assert {row["path"] for row in _manifest(dst)} == expected
    assert {p.relative_to(dst).as_posix() for p in dst.glob("*/*/*")} == expected
    assert {row["source"] for row in _manifest(dst)} == {"ferplus"}
    for i, where in kept.items():  # FER2013's pixels, exactly
        assert np.array_equal(np.asarray(Image.open(dst / f"{where}/fer{i:07d}.png")), _pixels(100 + i))
    lines = (dst / "votes.csv").read_text().splitlines()
    assert lines[0] == _VOTES_HEADER
    assert lines[1:] == [f"{where}/fer{i:07d}.png," + ",".join(map(str, _FERPLUS_CASES[i][1]))
                         for i, where in sorted(kept.items(), key=lambda item: item[1])]  # raw counts
    info = json.loads((dst / "prepare.json").read_text())
    assert info["kind"] == "ferplus" and info["dropped"] == dropped


def test_ferplus_votes_train_as_distributions(tmp_path):
    CANONICAL_CLASSES = ("angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    from data.datasets import FaceFolder
    fer, votes = _ferplus_release(tmp_path / "release")
    _prepare("ferplus", "--src", fer, "--votes", votes, "--dst", tmp_path / "out")
    train = FaceFolder([tmp_path / "out"], "train", 48, classes=CANONICAL_CLASSES)
    assert [Path(s.path).name for s in train.samples] == ["fer0000000.png", "fer0000001.png"]
    expected = np.zeros((2, 8), dtype=np.float32)
    expected[0, CANONICAL_CLASSES.index("happy")] = 1  # 8 happy; the single surprise and unknown dropped
    expected[1, CANONICAL_CLASSES.index("sad")] = 4 / 7  # 4 sad, 3 angry; single votes dropped
    expected[1, CANONICAL_CLASSES.index("angry")] = 3 / 7
    np.testing.assert_allclose(train.soft_targets(), expected, rtol=1e-6)


def test_ferplus_mismatched_row_counts_are_one_line(tmp_path):
    fer, _ = _ferplus_release(tmp_path / "release")
    short = _ferplus_csv(tmp_path / "short.csv", [vote for _, vote in _FERPLUS_CASES[:9]], ["Training"] * 9)
    with pytest.raises(UserError, match=r"short.csv has 9 rows but .*fer2013.csv has 10: give the fer2013new.csv") \
            as caught:
        _prepare("ferplus", "--src", fer, "--votes", short, "--dst", tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=r"--votes .*missing.csv does not exist"):
        _prepare("ferplus", "--src", fer, "--votes", tmp_path / "missing.csv", "--dst", tmp_path / "out")


def test_merge_carries_votes_under_merged_names_and_the_class_map(tmp_path):
    fer, votes = _ferplus_release(tmp_path / "release")
    _prepare("ferplus", "--src", fer, "--votes", votes, "--dst", tmp_path / "ferplus")
    _prepare("fer2013", "--src", fer, "--dst", tmp_path / "fer2013", "--val-fraction", "0")  # no votes.csv
    merged = tmp_path / "merged"
    _prepare("merge", "--src", tmp_path / "ferplus", tmp_path / "fer2013", "--dst", merged,
             "--class-map", "angry=-,contempt=disgust")
    with open(merged / "votes.csv", newline="") as f:
        rows = {row.pop("file"): row for row in csv.DictReader(f)}
    # contempt's votes follow its images to disgust; angry's go with its images
    columns = "neutral,happy,surprise,sad,disgust,fear,unknown,not_face"
    assert list(next(iter(rows.values()))) == columns.split(",")
    assert rows == {
        "train/happy/ferplus__fer0000000.png": dict(zip(columns.split(","), "0 8 1 0 0 0 1 0".split())),
        "train/sad/ferplus__fer0000001.png": dict(zip(columns.split(","), "0 0 1 4 0 1 1 0".split())),
        "val/disgust/ferplus__fer0000007.png": dict(zip(columns.split(","), "0 0 0 3 7 0 0 0".split())),
    }
    assert all(Path(path).parts[:2] in _layout(merged) for path in rows)


# ---------------------------------------------------------------- ckplus

def _ckplus_release(root: Path, subjects=8, sequences=2, frames=6) -> Path:
    for s in range(1, subjects + 1):
        subject = f"S{s:03d}"
        for q in range(1, sequences + 1):
            sequence = f"{q:03d}"
            for f in range(1, frames + 1):
                _image(root / "cohn-kanade-images" / subject / sequence / f"{subject}_{sequence}_{f:08d}.png", mode="L")
            if (s + q) % 4 == 0:
                continue  # an unlabelled sequence, as most CK+ sequences are
            emotion = root / "Emotion" / subject / sequence / f"{subject}_{sequence}_{frames:08d}_emotion.txt"
            emotion.parent.mkdir(parents=True, exist_ok=True)
            emotion.write_text(f"   {(s + q) % 7 + 1:.7e}\n")
    return root


def test_ckplus_release_last_frames_neutral_and_subjects(tmp_path):
    src = _ckplus_release(tmp_path / "ck")
    labelled = sum(1 for _ in (src / "Emotion").glob("*/*/*.txt"))
    _prepare("ckplus", "--src", src, "--dst", tmp_path / "out", "--neutral", "--frames", "2")
    rows = _manifest(tmp_path / "out")
    assert len(rows) == labelled * 3
    neutral = [row for row in rows if row["class"] == "neutral"]
    assert len(neutral) == labelled and all(row["path"].endswith("_00000001.png") for row in neutral)
    # codes 0-7 = neutral, anger, contempt, disgust, fear, happy, sadness, surprise; S001/001 has (1+1)%7+1 = 3
    peak = [row for row in rows if "S001_001_0000000" in row["path"] and row["class"] != "neutral"]
    assert {row["class"] for row in peak} == {"disgust"} and len(peak) == 2
    assert all(row["subject"] == Path(row["path"]).name[:4] for row in rows)
    subjects = _subjects_by_split(tmp_path / "out")
    assert set(subjects) == {"train", "val", "test"}
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"]
                or subjects["val"] & subjects["test"])


def test_ckplus_bad_emotion_file(tmp_path, caplog):
    src = _ckplus_release(tmp_path / "ck")
    bad = next((src / "Emotion").glob("*/*/*.txt"))
    bad.write_text("9.0000000e+00\n")
    _prepare("ckplus", "--src", src, "--dst", tmp_path / "out")
    assert f"{bad}:1: emotion code 9 is outside 0-7" in caplog.text


def test_ckplus48_layout(tmp_path):
    subjects = [f"S{i:03d}" for i in range(10)]
    _class_folders(tmp_path / "ck" / "CK+48", {"anger": 0, "sadness": 0, "happy": 0}, subjects=subjects)
    _prepare("ckplus", "--src", tmp_path / "ck", "--dst", tmp_path / "out", "--folds", "5", "--fold", "2")
    layout = _layout(tmp_path / "out")
    assert {label for _, label in layout} == {"angry", "sad", "happy"}
    subjects = _subjects_by_split(tmp_path / "out")
    assert len(subjects["test"]) == 2 and not subjects["test"] & subjects["train"]


# ---------------------------------------------------------------- folder, splits, writing

def test_folder_folds_are_subject_disjoint_and_cover_every_subject(tmp_path):
    subjects = [f"P{i:02d}" for i in range(10)]
    src = _class_folders(tmp_path / "jaffe", {"Happy": 0, "Fear": 0, "surprised": 0}, subjects=subjects)
    test_subjects = []
    for fold in range(5):
        dst = tmp_path / f"fold{fold}"
        _prepare("folder", "--src", src, "--dst", dst, "--subject-regex", r"^(P\d+)_", "--folds", "5",
                 "--fold", fold)
        by_split = _subjects_by_split(dst)
        assert not (by_split["train"] & by_split["test"] or by_split["train"] & by_split["val"]
                    or by_split["val"] & by_split["test"])
        test_subjects += sorted(by_split["test"])
    assert sorted(test_subjects) == subjects  # each subject is tested in exactly one fold
    assert {label for _, label in _layout(tmp_path / "fold0")} == {"happy", "fear", "surprise"}


def test_folder_folds_csv_with_val_is_test(tmp_path):
    subjects = [f"S{i:03d}" for i in range(6)]
    src = _class_folders(tmp_path / "all", {"angry": 0, "happy": 0}, subjects=subjects)
    (tmp_path / "folds.csv").write_text("subject,fold\n" + "".join(f"{s},{i % 3}\n" for i, s in enumerate(subjects)))
    dst = tmp_path / "out"
    _prepare("folder", "--src", src, "--dst", dst, "--subject-regex", r"^(S\d+)_", "--folds-csv",
             tmp_path / "folds.csv", "--fold", "1", "--val-is-test")
    by_split = _subjects_by_split(dst)
    assert by_split["test"] == by_split["val"] == {"S001", "S004"}
    assert by_split["train"] == {"S000", "S002", "S003", "S005"}
    assert _files(dst / "val") == _files(dst / "test")


def test_folder_folds_csv_with_a_val_fold(tmp_path):
    subjects = [f"S{i:03d}" for i in range(6)]
    src = _class_folders(tmp_path / "all", {"angry": 0, "happy": 0}, subjects=subjects)
    (tmp_path / "folds.csv").write_text("subject,fold\n" + "".join(f"{s},{i % 3}\n" for i, s in enumerate(subjects)))
    dst = tmp_path / "out"
    _prepare("folder", "--src", src, "--dst", dst, "--subject-regex", r"^(S\d+)_", "--folds-csv",
             tmp_path / "folds.csv", "--fold", "0", "--val-fold", "2")
    by_split = _subjects_by_split(dst)
    assert by_split["test"] == {"S000", "S003"} and by_split["val"] == {"S002", "S005"}
    assert by_split["train"] == {"S001", "S004"}
    with pytest.raises(UserError, match="not a fold"):
        _prepare("folder", "--src", src, "--dst", tmp_path / "o2", "--subject-regex", r"^(S\d+)_", "--folds-csv",
                 tmp_path / "folds.csv", "--fold", "0", "--val-fold", "7")
    with pytest.raises(UserError, match="must differ"):
        _prepare("folder", "--src", src, "--dst", tmp_path / "o3", "--subject-regex", r"^(S\d+)_", "--folds-csv",
                 tmp_path / "folds.csv", "--fold", "0", "--val-fold", "0")


def test_folder_without_subjects_is_stratified(tmp_path):
    src = tmp_path / "photos"
    for label, count in (("happy", 40), ("sad", 20)):
        for i in range(count):
            _image(src / label / f"{i}.jpg")
    _prepare("folder", "--src", src, "--dst", tmp_path / "out", "--test-fraction", "0.25", "--val-fraction", "0.2")
    layout = _layout(tmp_path / "out")
    assert layout[("test", "happy")] == 10 and layout[("test", "sad")] == 5
    assert layout[("val", "happy")] == 6 and layout[("val", "sad")] == 3
    assert {row["source"] for row in _manifest(tmp_path / "out")} == {"photos"}


def test_rerun_gives_the_same_files_and_the_seed_changes_them(tmp_path):
    src = _rafdb(tmp_path / "raf", _rafdb_lines())
    _prepare("rafdb", "--src", src, "--dst", tmp_path / "a")
    first = _files(tmp_path / "a")
    _prepare("rafdb", "--src", src, "--dst", tmp_path / "a")
    assert _files(tmp_path / "a") == first
    _prepare("rafdb", "--src", src, "--dst", tmp_path / "b", "--seed", "1")
    assert {p for p in _files(tmp_path / "b") if p.startswith("val/")} != {p for p in first if p.startswith("val/")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "raf"]  # no temporary folders left


def test_failure_leaves_the_previous_dataset_untouched(tmp_path):
    src = _class_folders(tmp_path / "src", {"happy": 0, "sad": 0})
    _prepare("folder", "--src", src, "--dst", tmp_path / "out")
    before = _files(tmp_path / "out")
    (src / "sad" / "S003_000.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"S003_000.png: unreadable image"):
        _prepare("folder", "--src", src, "--dst", tmp_path / "out", "--strict")
    assert _files(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    _prepare("folder", "--src", src, "--dst", tmp_path / "out")  # without --strict: skipped and counted
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["skipped"] == 1


def test_refuses_a_destination_with_other_files(tmp_path):
    src = _class_folders(tmp_path / "src", {"happy": 0})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a prepared dataset"):
        _prepare("folder", "--src", src, "--dst", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_link_makes_links_not_copies(tmp_path):
    src = _class_folders(tmp_path / "src", {"happy": 0, "sad": 0})
    _prepare("folder", "--src", src, "--dst", tmp_path / "out", "--link")
    for row in _manifest(tmp_path / "out"):
        assert os.path.samefile(tmp_path / "out" / row["path"], row["original"])


# ---------------------------------------------------------------- merge

def _prepared_pair(tmp_path: Path) -> tuple[Path, Path]:
    raf = tmp_path / "rafdb"
    _prepare("rafdb", "--src", _rafdb(tmp_path / "raf", _rafdb_lines(28, 7)), "--dst", raf)
    ck = tmp_path / "ckplus"
    _prepare("ckplus", "--src", _ckplus_release(tmp_path / "ck"), "--dst", ck, "--neutral")
    return raf, ck


def test_merge_keeps_sources_splits_and_applies_the_class_map(tmp_path):
    raf, ck = _prepared_pair(tmp_path)
    dst = tmp_path / "merged"
    _prepare("merge", "--src", raf, ck, "--dst", dst, "--class-map", "neutral=-,contempt=-,sadness=sad")
    rows = _manifest(dst)
    originals = {row["original"]: row for row in _manifest(raf) + _manifest(ck)}
    kept = [row for row in originals.values() if row["class"] not in ("neutral", "contempt")]
    assert len(rows) == len(kept)
    for row in rows:
        name = Path(row["path"]).name
        assert name.startswith(f"{row['source']}__") and row["source"] in ("rafdb", "ckplus")
        source_row = originals[row["original"]]
        assert (row["split"], row["class"], row["subject"]) == (source_row["split"], source_row["class"],
                                                               source_row["subject"])
    assert not {label for _, label in _layout(dst)} & {"neutral", "contempt"}
    assert audit(dst)["leaks"] is False


def test_merge_rejects_an_unprepared_folder(tmp_path):
    (tmp_path / "photos" / "happy").mkdir(parents=True)
    with pytest.raises(UserError, match="not a prepared dataset"):
        _prepare("merge", "--src", tmp_path / "photos", "--dst", tmp_path / "out")


def test_merge_refuses_a_manifest_class_that_leaves_the_destination(tmp_path):
    """A class name from a source's manifest.csv became a folder as it was: '../../x' wrote outside --dst."""
    raf, _ = _prepared_pair(tmp_path)
    rows = _manifest(raf)
    outside = tmp_path / "escaped"
    rows[0]["class"] = "../../../" + str(outside).lstrip("/")
    with open(raf / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(UserError, match="is not a plain name") as err:
        _prepare("merge", "--src", raf, "--dst", tmp_path / "merged")
    assert "\n" not in str(err.value) and rows[0]["original"] in str(err.value)
    assert not outside.exists() and not (tmp_path / "merged").exists()


def test_class_map_refuses_two_entries_for_one_class(tmp_path):
    from data.prepare.merge import parse_class_map
    assert parse_class_map("happy=sad,sad=happy") == {"happy": "sad", "sad": "happy"}  # a swap is fine
    with pytest.raises(UserError, match="maps happy twice") as err:
        parse_class_map("happy=sad,sad=happy,joy=happy")  # joy is a synonym of happy
    assert "'happy=sad'" in str(err.value) and "joy=happy" in str(err.value)


def test_check_path_part_by_hand():
    from data.layout import check_path_part
    assert check_path_part("happy", "class", "m.csv:2") == "happy"
    for bad in ("", ".", "..", "a/b", "..\\x", "/etc", "a\0b"):
        with pytest.raises(UserError, match="not a plain name"):
            check_path_part(bad, "class", "m.csv:2")


# ---------------------------------------------------------------- audit

def _leaky_copy(clean: Path, dst: Path) -> tuple[int, set]:
    """Rebuild `clean` the way the original repository split its merged data: val/ is
    filled partly from train/, and test subjects are put into train/ as well."""
    shutil.copytree(clean, dst)
    rows = _manifest(dst)
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
    raf, ck = _prepared_pair(tmp_path)
    clean = tmp_path / "merged"
    _prepare("merge", "--src", raf, ck, "--dst", clean)
    assert _prepare("audit", clean, "--strict", "--json", tmp_path / "clean.json") == 0
    assert json.loads((tmp_path / "clean.json").read_text())["cross_split_duplicates"] == 0

    copied, subjects = _leaky_copy(clean, tmp_path / "leaky")
    status = _prepare("audit", tmp_path / "leaky", "--strict", "--json", tmp_path / "leaky.json")
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
    a = _image(root / "train" / "happy" / "a.png", size=(32, 32))
    _image(root / "train" / "happy" / "b.png", size=(32, 32))
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
    src = _class_folders(tmp_path / "all", {"angry": 0, "happy": 0}, subjects=[f"S{i:03d}" for i in range(5)])
    _prepare("folder", "--src", src, "--dst", tmp_path / "out", "--subject-regex", r"^(S\d+)_", "--folds", "5",
             "--val-is-test")
    report = audit(tmp_path / "out")
    assert report["val_is_test"] and not report["leaks"]


def test_cli_turns_user_errors_into_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data.prepare", "fer2013", "--src", str(tmp_path / "nothing"),
                             "--dst", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no fer2013.csv") and result.stderr.count("\n") == 1


def _every_layout(tmp_path: Path) -> list[Path]:
    """One small prepared dataset of each kind."""
    raf, ck = _prepared_pair(tmp_path)
    _prepare("merge", "--src", raf, ck, "--dst", tmp_path / "merged", "--class-map", "neutral=-,contempt=-")
    _fer_csv(tmp_path / "fer2013.csv", _fer_rows())
    _prepare("fer2013", "--src", tmp_path / "fer2013.csv", "--dst", tmp_path / "fer")
    _prepare("affectnet", "--src", _affectnet_manual(tmp_path / "aff"), "--dst", tmp_path / "affectnet")
    photos = _class_folders(tmp_path / "photos", {"happy": 0, "sad": 0}, subjects=[f"S{i:03d}" for i in range(6)])
    _prepare("folder", "--src", photos, "--dst", tmp_path / "folder", "--subject-regex", r"^(S\d+)_", "--folds", "3",
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
    if not (REPO / "train.py").is_file():
        pytest.skip("train.py is absent")
    layouts = _every_layout(tmp_path)
    command = [sys.executable, "train.py", "--data", *map(str, layouts), "--model", "resnet18", "--epochs", "1",
               "--batch-size", "8", "--img-size", "32", "--pretrained", "none", "--device", "cpu", "--workers", "0",
               "--threads", "1", "--output", str(tmp_path / "run")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "best.pth").is_file()


# ---------------------------------------------------------------- the real data in ../shared/data

def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def test_shared_ck_plus_48_subject_folds(tmp_path):
    ck = _shared("ck_plus_48")
    dst = tmp_path / "ckplus48"
    _prepare("folder", "--src", ck / "all", "--dst", dst, "--subject-regex", r"^(S\d+)_", "--folds-csv",
             ck / "folds.csv", "--fold", "0", "--val-is-test", "--link")
    by_split = _subjects_by_split(dst)
    with open(ck / "folds.csv", newline="") as f:
        fold0 = {row["subject"] for row in csv.DictReader(f) if row["fold"] == "0"}
    assert by_split["test"] == by_split["val"] == fold0
    assert not by_split["train"] & by_split["test"]
    assert len(by_split["train"] | by_split["test"]) == 118
    assert _split_sizes(dst)["train"] + _split_sizes(dst)["test"] == 981

    _prepare("folder", "--src", ck / "all", "--dst", tmp_path / "computed", "--subject-regex", r"^(S\d+)_",
             "--folds", "5", "--fold", "0", "--link")
    by_split = _subjects_by_split(tmp_path / "computed")
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
    _fer_csv(tmp_path / "fer2013.csv", rows)
    _prepare("fer2013", "--src", tmp_path / "fer2013.csv", "--dst", tmp_path / "out")
    manifest = _manifest(tmp_path / "out")
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


def test_every_extension_prepare_copies_is_loaded_by_face_folder(tmp_path):
    """One extension list (data.layout) for the writer and the reader: a .pgm or .gif face that
    data.prepare copies is a face FaceFolder loads."""
    from data.datasets import FaceFolder
    from data.layout import IMAGE_EXTENSIONS

    src = tmp_path / "faces" / "train"
    for label in ("happy", "sad"):
        for ext in IMAGE_EXTENSIONS:
            _image(src / label / f"{label}_{ext[1:]}{ext}", mode="L" if ext == ".pgm" else "RGB")
    (src / "happy" / "notes.txt").write_text("not an image")
    dst = tmp_path / "prepared"
    assert _prepare("folder", "--src", tmp_path / "faces", "--dst", dst, "--test-fraction", "0",
                    "--val-fraction", "0.2") == 0
    written = sorted(p.suffix for p in dst.rglob("*") if p.is_file() and p.parent.parent.name in ("train", "val"))
    assert sorted(set(written)) == sorted(IMAGE_EXTENSIONS)
    loaded = len(FaceFolder([dst], "train", 32)) + len(FaceFolder([dst], "val", 32))
    assert loaded == len(written) == 2 * len(IMAGE_EXTENSIONS)


def test_ferplus_votes_are_matched_by_image_name_not_row_order(tmp_path):
    """A votes file whose rows are shifted relabelled every image with exit 0; its rows now go to
    the images they name, and a file whose names do not fit is refused with the counts."""
    fer, votes = _ferplus_release(tmp_path / "release")
    _prepare("ferplus", "--src", fer, "--votes", votes, "--dst", tmp_path / "in_order")
    lines = votes.read_text().splitlines()
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")  # same rows, reversed
    _prepare("ferplus", "--src", fer, "--votes", shuffled, "--dst", tmp_path / "reversed")
    assert _manifest(tmp_path / "reversed") == _manifest(tmp_path / "in_order")
    assert (tmp_path / "reversed" / "votes.csv").read_text() == (tmp_path / "in_order" / "votes.csv").read_text()
    renamed = tmp_path / "renamed.csv"  # every name moved one row down: two images lose theirs
    rows = [line.split(",") for line in lines[1:]]
    names = [r[1] for r in rows]
    for r, name in zip(rows, names[-1:] + names[:-1]):
        r[1] = name
    rows[0][1] = "fer9999999.png"
    renamed.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    with pytest.raises(UserError, match="1 names are not its rows") as err:
        _prepare("ferplus", "--src", fer, "--votes", renamed, "--dst", tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()

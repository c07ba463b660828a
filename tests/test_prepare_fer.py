"""data/prepare: FER2013's CSV and FER+'s votes (fer2013new.csv, or a release of image files)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from data.prepare import fer2013
from prepare_fakes import (FERPLUS_CASES, NOT_A_FACE, VOTES_HEADER, count_layout, count_splits, fer_pixels, fer_rows,
                           make_fer_csv, make_ferplus_csv, make_ferplus_release, read_manifest, run_prepare)


@pytest.mark.parametrize("icml", [False, True])
def test_fer2013_csv_pixels_labels_and_usage(tmp_path, icml):
    rows = fer_rows()
    src = make_fer_csv(tmp_path / ("icml_face_data.csv" if icml else "fer2013.csv"), rows, icml=icml)
    run_prepare("fer2013", "--src", tmp_path, "--dst", tmp_path / "out")
    assert count_splits(tmp_path / "out") == {"train": 14, "val": 4, "test": 3}
    for row in read_manifest(tmp_path / "out"):
        index = int(Path(row["path"]).stem[3:])
        emotion, pixels, usage = rows[index]
        assert row["class"] == fer2013.LABELS[emotion]  # 0-6 = angry, disgust, fear, happy, sad, surprise, neutral
        assert row["split"] == fer2013.USAGE[usage]
        assert row["original"] == f"{src}:{index + 2}"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / row["path"])), pixels)


def test_fer2013_bad_rows_are_reported_with_their_line(tmp_path, caplog):
    rows = fer_rows()
    rows[2] = (3, "1 2 3", "Training")
    rows[5] = (9, fer_pixels(5), "Training")
    rows[7] = (1, fer_pixels(7), "Validation")
    src = make_fer_csv(tmp_path / "fer2013.csv", rows)
    run_prepare("fer2013", "--src", src, "--dst", tmp_path / "out")
    assert f"{src}:4: expected 2304 pixels, found 3" in caplog.text
    assert f"{src}:7: emotion '9' is outside 0-6" in caplog.text
    assert f"{src}:9: Usage 'Validation'" in caplog.text
    assert sum(count_splits(tmp_path / "out").values()) == 18
    with pytest.raises(UserError, match=r"fer2013.csv:4: expected 2304 pixels"):
        run_prepare("fer2013", "--src", src, "--dst", tmp_path / "strict", "--strict")


def test_fer2013_ferplus_plurality_relabels_and_drops(tmp_path):
    rows = fer_rows()[:7]
    make_fer_csv(tmp_path / "fer2013.csv", rows)
    votes = [[0, 8, 1, 0, 0, 0, 0, 0, 1, 0],  # happy
             [1, 0, 0, 0, 0, 0, 0, 0, 9, 0],  # unknown: dropped
             [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face: dropped
             [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],  # tie: dropped
             [0, 0, 0, 3, 0, 0, 0, 7, 0, 0],  # contempt
             [0, 0, 0, 6, 4, 0, 0, 0, 0, 0],  # sad
             [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]]  # not in FER+ (no image name): dropped
    make_ferplus_csv(tmp_path / "fer2013new.csv", votes, ["Training"] * 7, faces=range(6))
    run_prepare("fer2013", "--src", tmp_path / "fer2013.csv", "--dst", tmp_path / "out",
                "--ferplus", tmp_path / "fer2013new.csv", "--val-fraction", "0")
    labels = {Path(row["path"]).name: row["class"] for row in read_manifest(tmp_path / "out")}
    assert labels == {"fer0000000.png": "happy", "fer0000004.png": "contempt", "fer0000005.png": "sad"}
    assert {row["source"] for row in read_manifest(tmp_path / "out")} == {"ferplus"}


@pytest.mark.parametrize("options, kept, dropped", [
    ([], {0: "train/happy", 1: "train/sad", 7: "val/contempt", 8: "test/angry"},
     {"no majority": 3, "winner unknown": 1, "winner not_face": 1, NOT_A_FACE: 1}),
    (["--no-majority", "keep-argmax"], {0: "train/happy", 1: "train/sad", 2: "train/surprise", 7: "val/contempt",
                                        8: "test/angry"},
     {"no majority": 1, "winner unknown": 2, "winner not_face": 1, NOT_A_FACE: 1}),
    (["--min-votes", "1"], {0: "train/happy", 7: "val/contempt", 8: "test/angry"},
     {"no majority": 4, "winner unknown": 1, "winner not_face": 1, NOT_A_FACE: 1}),
])
def test_ferplus_majority_protocol_splits_votes_and_drops(tmp_path, options, kept, dropped):
    fer, votes = make_ferplus_release(tmp_path / "release")
    dst = tmp_path / "out"
    run_prepare("ferplus", "--src", fer.parent, "--votes", votes, "--dst", dst, *options)
    expected = {f"{where}/fer{i:07d}.png" for i, where in kept.items()}
    assert {row["path"] for row in read_manifest(dst)} == expected
    assert {p.relative_to(dst).as_posix() for p in dst.glob("*/*/*")} == expected
    assert {row["source"] for row in read_manifest(dst)} == {"ferplus"}
    for i, where in kept.items():  # FER2013's pixels, exactly
        assert np.array_equal(np.asarray(Image.open(dst / f"{where}/fer{i:07d}.png")), fer_pixels(100 + i))
    lines = (dst / "votes.csv").read_text().splitlines()
    assert lines[0] == VOTES_HEADER
    assert lines[1:] == [f"{where}/fer{i:07d}.png," + ",".join(map(str, FERPLUS_CASES[i][1]))
                         for i, where in sorted(kept.items(), key=lambda item: item[1])]  # raw counts
    info = json.loads((dst / "prepare.json").read_text())
    assert info["kind"] == "ferplus" and info["dropped"] == dropped


def test_ferplus_votes_train_as_distributions(tmp_path):
    CANONICAL_CLASSES = ("angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    from data.datasets import FaceFolder
    fer, votes = make_ferplus_release(tmp_path / "release")
    run_prepare("ferplus", "--src", fer, "--votes", votes, "--dst", tmp_path / "out")
    train = FaceFolder([tmp_path / "out"], "train", 48, classes=CANONICAL_CLASSES)
    assert [Path(s.path).name for s in train.samples] == ["fer0000000.png", "fer0000001.png"]
    expected = np.zeros((2, 8), dtype=np.float32)
    expected[0, CANONICAL_CLASSES.index("happy")] = 1  # 8 happy; the single surprise and unknown dropped
    expected[1, CANONICAL_CLASSES.index("sad")] = 4 / 7  # 4 sad, 3 angry; single votes dropped
    expected[1, CANONICAL_CLASSES.index("angry")] = 3 / 7
    np.testing.assert_allclose(train.soft_targets(), expected, rtol=1e-6)


def test_ferplus_mismatched_row_counts_are_one_line(tmp_path):
    fer, _ = make_ferplus_release(tmp_path / "release")
    short = make_ferplus_csv(tmp_path / "short.csv", [vote for _, vote in FERPLUS_CASES[:9]], ["Training"] * 9)
    with pytest.raises(UserError, match=r"short.csv has 9 rows but .*fer2013.csv has 10: give the fer2013new.csv") \
            as caught:
        run_prepare("ferplus", "--src", fer, "--votes", short, "--dst", tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=r"--votes .*missing.csv does not exist"):
        run_prepare("ferplus", "--src", fer, "--votes", tmp_path / "missing.csv", "--dst", tmp_path / "out")


def test_merge_carries_votes_under_merged_names_and_the_class_map(tmp_path):
    fer, votes = make_ferplus_release(tmp_path / "release")
    run_prepare("ferplus", "--src", fer, "--votes", votes, "--dst", tmp_path / "ferplus")
    run_prepare("fer2013", "--src", fer, "--dst", tmp_path / "fer2013", "--val-fraction", "0")  # no votes.csv
    merged = tmp_path / "merged"
    run_prepare("merge", "--src", tmp_path / "ferplus", tmp_path / "fer2013", "--dst", merged,
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
    assert all(Path(path).parts[:2] in count_layout(merged) for path in rows)


def test_ferplus_votes_are_matched_by_image_name_not_row_order(tmp_path):
    """A votes file whose rows are shifted relabelled every image with exit 0; its rows now go to
    the images they name, and a file whose names do not fit is refused with the counts."""
    fer, votes = make_ferplus_release(tmp_path / "release")
    run_prepare("ferplus", "--src", fer, "--votes", votes, "--dst", tmp_path / "in_order")
    lines = votes.read_text().splitlines()
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")  # same rows, reversed
    run_prepare("ferplus", "--src", fer, "--votes", shuffled, "--dst", tmp_path / "reversed")
    assert read_manifest(tmp_path / "reversed") == read_manifest(tmp_path / "in_order")
    assert (tmp_path / "reversed" / "votes.csv").read_text() == (tmp_path / "in_order" / "votes.csv").read_text()
    renamed = tmp_path / "renamed.csv"  # every name moved one row down: two images lose theirs
    rows = [line.split(",") for line in lines[1:]]
    names = [r[1] for r in rows]
    for r, name in zip(rows, names[-1:] + names[:-1]):
        r[1] = name
    rows[0][1] = "fer9999999.png"
    renamed.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    with pytest.raises(UserError, match="1 names are not its rows") as err:
        run_prepare("ferplus", "--src", fer, "--votes", renamed, "--dst", tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


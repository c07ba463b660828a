"""data/prepare: ImageFolder sources: subject folds, stratified splits, writing, merging and class maps."""
import csv
import json
import os
from pathlib import Path

import pytest

from common.errors import UserError
from data.prepare.audit import audit
from prepare_fakes import (count_layout, make_class_folders, make_prepared_pair, make_rafdb, noise_image, rafdb_lines,
                           read_files, read_manifest, run_prepare, subjects_by_split)


def test_folder_folds_are_subject_disjoint_and_cover_every_subject(tmp_path):
    subjects = [f"P{i:02d}" for i in range(10)]
    src = make_class_folders(tmp_path / "jaffe", {"Happy": 0, "Fear": 0, "surprised": 0}, subjects=subjects)
    test_subjects = []
    for fold in range(5):
        dst = tmp_path / f"fold{fold}"
        run_prepare("folder", "--src", src, "--dst", dst, "--subject-regex", r"^(P\d+)_", "--folds", "5",
                    "--fold", fold)
        by_split = subjects_by_split(dst)
        assert not (by_split["train"] & by_split["test"] or by_split["train"] & by_split["val"]
                    or by_split["val"] & by_split["test"])
        test_subjects += sorted(by_split["test"])
    assert sorted(test_subjects) == subjects  # each subject is tested in exactly one fold
    assert {label for _, label in count_layout(tmp_path / "fold0")} == {"happy", "fear", "surprise"}


def _prepare_folds(tmp_path, *options) -> Path:
    """Six subjects S000-S005 in folds 0, 1, 2, 0, 1, 2 (folds.csv), prepared with `options`."""
    subjects = [f"S{i:03d}" for i in range(6)]
    src = make_class_folders(tmp_path / "all", {"angry": 0, "happy": 0}, subjects=subjects)
    (tmp_path / "folds.csv").write_text("subject,fold\n" + "".join(f"{s},{i % 3}\n" for i, s in enumerate(subjects)))
    dst = tmp_path / "out"
    run_prepare("folder", "--src", src, "--dst", dst, "--subject-regex", r"^(S\d+)_", "--folds-csv",
                tmp_path / "folds.csv", *options)
    return dst


def test_folder_folds_csv_with_val_is_test(tmp_path):
    dst = _prepare_folds(tmp_path, "--fold", "1", "--val-is-test")
    by_split = subjects_by_split(dst)
    assert by_split["test"] == by_split["val"] == {"S001", "S004"}
    assert by_split["train"] == {"S000", "S002", "S003", "S005"}
    assert read_files(dst / "val") == read_files(dst / "test")


def test_folder_folds_csv_with_a_val_fold(tmp_path):
    dst = _prepare_folds(tmp_path, "--fold", "0", "--val-fold", "2")
    by_split = subjects_by_split(dst)
    assert by_split["test"] == {"S000", "S003"} and by_split["val"] == {"S002", "S005"}
    assert by_split["train"] == {"S001", "S004"}
    with pytest.raises(UserError, match="not a fold"):
        run_prepare("folder", "--src", tmp_path / "all", "--dst", tmp_path / "o2", "--subject-regex", r"^(S\d+)_",
                    "--folds-csv", tmp_path / "folds.csv", "--fold", "0", "--val-fold", "7")
    with pytest.raises(UserError, match="must differ"):
        run_prepare("folder", "--src", tmp_path / "all", "--dst", tmp_path / "o3", "--subject-regex", r"^(S\d+)_",
                    "--folds-csv", tmp_path / "folds.csv", "--fold", "0", "--val-fold", "0")


def test_folder_without_subjects_is_stratified(tmp_path):
    src = tmp_path / "photos"
    for label, count in (("happy", 40), ("sad", 20)):
        for i in range(count):
            noise_image(src / label / f"{i}.jpg")
    run_prepare("folder", "--src", src, "--dst", tmp_path / "out", "--test-fraction", "0.25", "--val-fraction", "0.2")
    layout = count_layout(tmp_path / "out")
    assert layout[("test", "happy")] == 10 and layout[("test", "sad")] == 5
    assert layout[("val", "happy")] == 6 and layout[("val", "sad")] == 3
    assert {row["source"] for row in read_manifest(tmp_path / "out")} == {"photos"}


def test_rerun_gives_the_same_files_and_the_seed_changes_them(tmp_path):
    src = make_rafdb(tmp_path / "raf", rafdb_lines())
    run_prepare("rafdb", "--src", src, "--dst", tmp_path / "a")
    first = read_files(tmp_path / "a")
    run_prepare("rafdb", "--src", src, "--dst", tmp_path / "a")
    assert read_files(tmp_path / "a") == first
    run_prepare("rafdb", "--src", src, "--dst", tmp_path / "b", "--seed", "1")
    assert {p for p in read_files(tmp_path / "b") if p.startswith("val/")} != {p for p in first if p.startswith("val/")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "raf"]  # no temporary folders left


def test_failure_leaves_the_previous_dataset_untouched(tmp_path):
    src = make_class_folders(tmp_path / "src", {"happy": 0, "sad": 0})
    run_prepare("folder", "--src", src, "--dst", tmp_path / "out")
    before = read_files(tmp_path / "out")
    (src / "sad" / "S003_000.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"S003_000.png: unreadable image"):
        run_prepare("folder", "--src", src, "--dst", tmp_path / "out", "--strict")
    assert read_files(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    run_prepare("folder", "--src", src, "--dst", tmp_path / "out")  # without --strict: skipped and counted
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["skipped"] == 1


def test_refuses_a_destination_with_other_files(tmp_path):
    src = make_class_folders(tmp_path / "src", {"happy": 0})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a prepared dataset"):
        run_prepare("folder", "--src", src, "--dst", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_link_makes_links_not_copies(tmp_path):
    src = make_class_folders(tmp_path / "src", {"happy": 0, "sad": 0})
    run_prepare("folder", "--src", src, "--dst", tmp_path / "out", "--link")
    for row in read_manifest(tmp_path / "out"):
        assert os.path.samefile(tmp_path / "out" / row["path"], row["original"])


def test_merge_keeps_sources_splits_and_applies_the_class_map(tmp_path):
    raf, ck = make_prepared_pair(tmp_path)
    dst = tmp_path / "merged"
    run_prepare("merge", "--src", raf, ck, "--dst", dst, "--class-map", "neutral=-,contempt=-,sadness=sad")
    rows = read_manifest(dst)
    originals = {row["original"]: row for row in read_manifest(raf) + read_manifest(ck)}
    kept = [row for row in originals.values() if row["class"] not in ("neutral", "contempt")]
    assert len(rows) == len(kept)
    for row in rows:
        name = Path(row["path"]).name
        assert name.startswith(f"{row['source']}__") and row["source"] in ("rafdb", "ckplus")
        source_row = originals[row["original"]]
        assert (row["split"], row["class"], row["subject"]) == (source_row["split"], source_row["class"],
                                                               source_row["subject"])
    assert not {label for _, label in count_layout(dst)} & {"neutral", "contempt"}
    assert audit(dst)["leaks"] is False


def test_merge_rejects_an_unprepared_folder(tmp_path):
    (tmp_path / "photos" / "happy").mkdir(parents=True)
    with pytest.raises(UserError, match="not a prepared dataset"):
        run_prepare("merge", "--src", tmp_path / "photos", "--dst", tmp_path / "out")


def test_merge_refuses_a_manifest_class_that_leaves_the_destination(tmp_path):
    """A class name from a source's manifest.csv became a folder as it was: '../../x' wrote outside --dst."""
    raf, _ = make_prepared_pair(tmp_path)
    rows = read_manifest(raf)
    outside = tmp_path / "escaped"
    rows[0]["class"] = "../../../" + str(outside).lstrip("/")
    with open(raf / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(UserError, match="is not a plain name") as err:
        run_prepare("merge", "--src", raf, "--dst", tmp_path / "merged")
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


def test_every_extension_prepare_copies_is_loaded_by_face_folder(tmp_path):
    """One extension list (data.layout) for the writer and the reader: a .pgm or .gif face that
    data.prepare copies is a face FaceFolder loads."""
    from data.datasets import FaceFolder
    from data.layout import IMAGE_EXTENSIONS

    src = tmp_path / "faces" / "train"
    for label in ("happy", "sad"):
        for ext in IMAGE_EXTENSIONS:
            noise_image(src / label / f"{label}_{ext[1:]}{ext}", mode="L" if ext == ".pgm" else "RGB")
    (src / "happy" / "notes.txt").write_text("not an image")
    dst = tmp_path / "prepared"
    assert run_prepare("folder", "--src", tmp_path / "faces", "--dst", dst, "--test-fraction", "0",
                       "--val-fraction", "0.2") == 0
    written = sorted(p.suffix for p in dst.rglob("*") if p.is_file() and p.parent.parent.name in ("train", "val"))
    assert sorted(set(written)) == sorted(IMAGE_EXTENSIONS)
    loaded = len(FaceFolder([dst], "train", 32)) + len(FaceFolder([dst], "val", 32))
    assert loaded == len(written) == 2 * len(IMAGE_EXTENSIONS)


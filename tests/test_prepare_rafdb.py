"""data/prepare: RAF-DB's release (EmoLabel lists, aligned and original images)."""
import pytest

from common.errors import UserError
from prepare_fakes import count_splits, make_rafdb, rafdb_lines, read_manifest, run_prepare


def test_rafdb_maps_labels_keeps_test_and_carves_val(tmp_path):
    src = make_rafdb(tmp_path / "raf", rafdb_lines())
    run_prepare("rafdb", "--src", src, "--dst", tmp_path / "out")
    rows = {row["original"].rsplit("/", 1)[-1]: row for row in read_manifest(tmp_path / "out")}
    # 1-7 = surprise, fear, disgust, happy, sad, angry, neutral
    assert rows["train_00007_aligned.jpg"]["class"] == "surprise"  # 7 % 7 + 1 = 1
    assert rows["train_00005_aligned.jpg"]["class"] == "angry"  # label 6
    assert rows["train_00006_aligned.jpg"]["class"] == "neutral"  # label 7
    assert rows["test_0003_aligned.jpg"]["split"] == "test"
    sizes = count_splits(tmp_path / "out")
    assert sizes == {"train": 36, "val": 4, "test": 7}
    assert {row["source"] for row in rows.values()} == {"rafdb"}
    assert not any(row["split"] == "val" and row["original"].rsplit("/", 1)[-1].startswith("test")
                   for row in rows.values())


def test_rafdb_original_images(tmp_path):
    src = make_rafdb(tmp_path / "raf", rafdb_lines(10, 2), original=True)
    run_prepare("rafdb", "--src", src, "--dst", tmp_path / "out", "--original")
    assert all("/Image/original/" in row["original"] for row in read_manifest(tmp_path / "out"))


def test_rafdb_bad_lines_are_skipped_or_fatal_with_strict(tmp_path, caplog):
    lines = rafdb_lines(10, 2) + ["train_00098.jpg 9", "a line without a label", "train_missing.jpg 1"]
    src = make_rafdb(tmp_path / "raf", lines)
    run_prepare("rafdb", "--src", src, "--dst", tmp_path / "out")
    assert sum(count_splits(tmp_path / "out").values()) == 12
    assert "list_patition_label.txt:13: label 9 is outside 1-7" in caplog.text
    assert "list_patition_label.txt:14" in caplog.text and "list_patition_label.txt:15" in caplog.text
    assert "skipped 3 bad items" in caplog.text
    with pytest.raises(UserError, match=r"list_patition_label.txt:13"):
        run_prepare("rafdb", "--src", src, "--dst", tmp_path / "strict", "--strict")
    assert not (tmp_path / "strict").exists()


def test_rafdb_wrong_folder_says_what_to_do(tmp_path):
    (tmp_path / "raf").mkdir()
    with pytest.raises(UserError, match="point --src at"):
        run_prepare("rafdb", "--src", tmp_path / "raf", "--dst", tmp_path / "out")


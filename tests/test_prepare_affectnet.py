"""data/prepare: AffectNet's releases (the manual annotations' CSVs and crops)."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from prepare_fakes import count_splits, make_affectnet_manual, noise_image, read_manifest, run_prepare


def test_affectnet_manual_crops_maps_and_drops(tmp_path, caplog):
    src = make_affectnet_manual(tmp_path / "affectnet")
    run_prepare("affectnet", "--src", src, "--dst", tmp_path / "out")
    rows = read_manifest(tmp_path / "out")
    by_name = {Path(row["original"]).name: row for row in rows}
    # 0-7 = neutral, happy, sad, surprise, fear, disgust, anger, contempt
    assert by_name["img_6_0.jpg"]["class"] == "angry"
    assert by_name["img_7_1.jpg"]["class"] == "contempt"
    assert by_name["val_3.jpg"]["split"] == "test"
    assert not any(name.startswith(("img_8", "img_9", "img_10")) for name in by_name)
    assert count_splits(tmp_path / "out") == {"train": 14, "val": 2, "test": 8}
    crop = Image.open(tmp_path / "out" / by_name["img_1_0.jpg"]["path"])
    assert crop.size == (32, 24)
    assert Image.open(tmp_path / "out" / by_name["val_0.jpg"]["path"]).size == (64, 48)
    assert "training.csv:24: malformed row" in caplog.text
    assert "training.csv:25: expression 12 is outside 0-10" in caplog.text
    info = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert info["dropped"] == {"expression 10, no face": 2, "expression 8, none": 2, "expression 9, uncertain": 2}


def test_affectnet_seven_classes_drop_contempt(tmp_path):
    src = make_affectnet_manual(tmp_path / "affectnet")
    run_prepare("affectnet", "--src", src, "--dst", tmp_path / "out", "--classes", "7")
    assert "contempt" not in {row["class"] for row in read_manifest(tmp_path / "out")}
    assert sum(count_splits(tmp_path / "out").values()) == 14 + 7


def test_affectnet_small_release(tmp_path):
    src = tmp_path / "affectnet"
    for folder, count in (("train_set", 16), ("val_set", 8)):
        (src / folder / "annotations").mkdir(parents=True)
        for i in range(count):
            noise_image(src / folder / "images" / f"{i}.jpg", size=(24, 24))
            np.save(src / folder / "annotations" / f"{i}_exp.npy", np.array(str(i % 8)))
    run_prepare("affectnet", "--src", src, "--dst", tmp_path / "out")
    rows = {(row["split"] != "test", Path(row["original"]).name): row for row in read_manifest(tmp_path / "out")}
    assert rows[(True, "3.jpg")]["class"] == "surprise"
    assert rows[(False, "6.jpg")]["class"] == "angry"
    assert count_splits(tmp_path / "out") == {"train": 14, "val": 2, "test": 8}


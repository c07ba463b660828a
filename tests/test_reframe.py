"""tools.reframe (a dataset's faces framed as predict.py frames them) and
benchmarks/bench_folder.py (predict.py end to end over a labelled ImageFolder), on tiny folders
built in tmp_path from the sample photo."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import bench_folder
from common.errors import UserError
from helpers import ASTRONAUT
from inference.detectors import build_detector
from inference.fallback import Fallback
from inference.recognizer import EmotionRecognizer, locate_faces
from tools import reframe

ROOT = Path(__file__).resolve().parents[1]


def photo_folder(root: Path) -> Path:
    """<root>/{train,val}/{happy,sad}/: the sample photo, a tight crop (100x110, no face the
    detector can find) and a grey landscape ramp (320x240, no face)."""
    image = Image.open(ASTRONAUT).convert("RGB")
    tight = image.crop((198, 91, 248, 146)).resize((100, 110))
    ramp = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    for split in ("train", "val"):
        (root / split / "happy").mkdir(parents=True)
        (root / split / "sad").mkdir(parents=True)
        image.save(root / split / "happy" / "astronaut.jpg")
        tight.save(root / split / "happy" / "tight.png")
        Image.fromarray(ramp).save(root / split / "sad" / "ramp.png")
    return root


def test_reframe_writes_predicts_crops_and_a_manifest(tmp_path):
    src = photo_folder(tmp_path / "src")
    dst = tmp_path / "framed"
    args = reframe.get_args_parser().parse_args(["--src", str(src), "--dst", str(dst), "--detector", "haar"])
    how = reframe.main(args)
    assert how == {"detector": 2, "whole image": 2, "none": 2}  # per split: the photo, the crop, the ramp
    written = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.png"))
    assert written == ["train/happy/astronaut.png", "train/happy/tight.png",
                       "val/happy/astronaut.png", "val/happy/tight.png"]
    # the photo's crop is exactly what predict.py classifies: the same detector, margin and alignment
    photo = np.asarray(Image.open(src / "val/happy/astronaut.jpg").convert("RGB"))
    _, source, crops = locate_faces(photo, build_detector("haar"), Fallback(), 0.2, True)
    assert source == "detector" and np.array_equal(np.asarray(Image.open(dst / "val/happy/astronaut.png")), crops[0])
    whole = Image.open(dst / "train/happy/tight.png")
    assert whole.size == (110, 110)  # the whole photo, squared, no margin
    with open(dst / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["source"] for r in rows} == {"src"} and len(rows) == 4
    with open(dst / reframe.REFRAME_CSV) as f:
        records = {(r["original"].split("src/")[1], r["box_source"]) for r in csv.DictReader(f)}
    assert ("val/sad/ramp.png", "none") in records and ("train/happy/tight.png", "whole image") in records
    info = json.loads((dst / "prepare.json").read_text())
    assert info["found"] == {"detector": 2, "whole image": 2, "none": 2} and info["margin"] == 0.2


def test_reframe_refuses_a_folder_without_splits_and_a_foreign_destination(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="none of the splits"):
        reframe.reframe(tmp_path / "empty", tmp_path / "out", ["train"], "x", build_detector("haar"), Fallback())
    src = photo_folder(tmp_path / "src")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a prepared dataset"):
        reframe.reframe(src, tmp_path / "mine", ["train"], "x", build_detector("haar"), Fallback())


def test_summary_against_hand_counts():
    rows = [{"label": "happy", "prediction": "happy", "box_source": "detector"},
            {"label": "happy", "prediction": "sad", "box_source": "padded"},
            {"label": "sad", "prediction": None, "box_source": None},
            {"label": "sad", "prediction": "sad", "box_source": "whole image"}]
    f = bench_folder.summarize(rows, ["angry", "happy", "sad"])
    assert f["photos"] == 4 and f["answered"] == 3 and f["accuracy"] == 0.5
    assert f["accuracy_answered"] == pytest.approx(2 / 3)
    assert f["recall"] == {"happy": 0.5, "sad": 0.5} and f["mean_class_recall"] == 0.5  # angry absent: not averaged
    assert f["box_sources"] == {"detector": 1, "padded": 1, "whole image": 1}


def test_bench_folder_end_to_end(checkpoint, cache_dir, tmp_path, monkeypatch):
    data = photo_folder(tmp_path / "photos")
    monkeypatch.setenv("FER_CACHE_DIR", str(cache_dir))
    out = tmp_path / "e2e.json"
    run = subprocess.run([sys.executable, "benchmarks/bench_folder.py", "--data", str(data), "--split", "val",
                          "--checkpoint", str(checkpoint), "--detector", "haar", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "3 photos, a face answered for 2 (66.7 %; detector: 1, whole image: 1)" in run.stdout
    report = json.loads(out.read_text())
    recognizer = EmotionRecognizer(checkpoint, cache_dir=cache_dir, threads=1, detector="haar")
    expected = recognizer.predict(str(data / "val/happy/astronaut.jpg"))[0].emotion
    by_name = {Path(r["path"]).name: r for r in report["rows"]}
    assert by_name["astronaut.jpg"]["prediction"] == expected and by_name["ramp.png"]["prediction"] is None
    hits = sum(r["prediction"] == r["label"] for r in report["rows"])
    assert report["accuracy"] == pytest.approx(hits / 3)
    bad = subprocess.run([sys.executable, "benchmarks/bench_folder.py", "--data", str(tmp_path / "nowhere")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr

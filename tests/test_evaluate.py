import csv
import json

import numpy as np
import pytest

import test as evaluate_script
import train
from common.errors import UserError
from helpers import make_image_folder, shared_or_skip
from utils.metrics import confusion_matrix, full_report, summarize

FAST = ["--img-size", "32", "--batch-size", "4", "--workers", "0", "--threads", "1", "--device", "cpu",
        "--pretrained", "none", "--lr", "0.01"]


def test_metrics_against_hand_computation():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 0, 2])
    cm = confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    m = summarize(cm)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    f1 = [2 * (2 / 3) * (2 / 3) / (4 / 3), 2 * 0.5 * 0.5 / 1.0, 1.0]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_report_per_source_and_subset_of_classes():
    labels = np.array([0, 1, 0, 1])
    preds = np.array([0, 1, 1, 1])
    sources = np.array([0, 0, 1, 1])
    report = full_report(labels, preds, sources, ["angry", "happy", "sad"], ["ck", "raf"])
    assert report["per_source"]["ck"]["accuracy"] == 1.0
    assert report["per_source"]["raf"]["accuracy"] == 0.5
    # 'sad' has no images: balanced accuracy averages the two classes present
    assert report["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert report["per_class"]["sad"]["support"] == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    a = make_image_folder(root / "ckplus", ["angry", "happy", "sad"], splits=("train", "val", "test"), seed=1)
    b = make_image_folder(root / "rafdb", ["angry", "happy", "sad"], splits=("train", "val", "test"), seed=2)
    train.main(train.get_args_parser().parse_args(
        ["--data", str(a), str(b), "--epochs", "1", "--output", str(root / "run"), *FAST]))
    return root, a, b


def run_test(*argv):
    return evaluate_script.main(evaluate_script.get_args_parser().parse_args([str(x) for x in argv]))


def test_evaluation_writes_table_metrics_plots_and_predictions(trained, capsys):
    root, a, b = trained
    out = root / "test-out"
    report = run_test("--checkpoint", root / "run" / "best.pth", "--data", a, b, "--output", out,
                      "--json", root / "m.json", "--device", "cpu", "--workers", "0")
    printed = capsys.readouterr().out
    assert "ckplus" in printed and "rafdb" in printed and "all" in printed and "macro-F1" in printed
    metrics = json.loads((root / "m.json").read_text())
    assert {"accuracy", "balanced_accuracy", "macro_f1", "per_source", "per_class"} <= set(metrics)
    assert set(metrics["per_source"]) == {"ckplus", "rafdb"}
    assert metrics["images"] == 24 and report["accuracy"] == metrics["accuracy"]
    for name in ("metrics.json", "confusion_matrix.png", "tsne.png", "predictions.csv"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 24
    assert abs(sum(float(rows[0][c]) for c in ("angry", "happy", "sad")) - 1) < 1e-3
    correct = sum(r["label"] == r["prediction"] for r in rows)
    assert correct / 24 == pytest.approx(metrics["accuracy"])


def test_a_split_too_small_for_t_sne_is_evaluated_without_it(trained, tmp_path, capsys):
    root, _, _ = trained
    data = make_image_folder(tmp_path / "two", ["angry", "happy"], per_class=1, splits=("val",), seed=3)
    run_test("--checkpoint", root / "run" / "best.pth", "--data", data, "--output", tmp_path / "out",
             "--device", "cpu", "--workers", "0")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["images"] == 2
    assert (tmp_path / "out" / "confusion_matrix.png").is_file() and not (tmp_path / "out" / "tsne.png").exists()
    assert "t-SNE needs at least 5 images and this split has 2: tsne.png is not drawn" in capsys.readouterr().err


def test_flip_tta_runs(trained):
    root, a, _ = trained
    report = run_test("--checkpoint", root / "run" / "best.pth", "--data", a, "--output", root / "tta", "--tta",
                      "--no-tsne", "--device", "cpu", "--workers", "0")
    assert report["tta"] is True and 0.0 <= report["accuracy"] <= 1.0


def test_unknown_class_is_a_clear_error(trained, tmp_path):
    root, _, _ = trained
    other = make_image_folder(tmp_path / "other", ["contempt"], per_class=1, splits=("test",))
    with pytest.raises(UserError, match="contempt"):
        run_test("--checkpoint", root / "run" / "best.pth", "--data", other, "--device", "cpu")


def test_real_ckplus_images(trained, tmp_path):
    """A few real CK+48 images go through the whole evaluation path."""
    src = shared_or_skip("ck_plus_48", "all")
    root, _, _ = trained
    data = tmp_path / "ck"
    for cls in ("angry", "happy", "sad"):
        (data / "test" / cls).mkdir(parents=True)
        for path in sorted((src / cls).glob("*.png"))[:3]:
            (data / "test" / cls / path.name).symlink_to(path)
    report = run_test("--checkpoint", root / "run" / "best.pth", "--data", data, "--output", tmp_path / "o",
                      "--no-tsne", "--device", "cpu", "--workers", "0")
    assert report["images"] == 9


def test_outputs_are_checked_before_the_evaluation(trained, tmp_path, monkeypatch):
    """An --output that is a file, a --json into a file's place, or --calibrate on test failed after the
    whole evaluation with a traceback: now one line, and nothing is evaluated."""
    root, a, _ = trained
    evaluated = []
    monkeypatch.setattr(evaluate_script, "evaluate", lambda *args, **kw: evaluated.append(1))
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    common = ["--checkpoint", root / "run" / "best.pth", "--data", a, "--device", "cpu", "--workers", "0"]
    with pytest.raises(UserError, match="is a file: give a folder"):
        run_test(*common, "--output", a_file)
    with pytest.raises(UserError, match="not a writable folder"):
        run_test(*common, "--output", tmp_path / "out", "--json", a_file / "m.json")
    with pytest.raises(UserError, match="is a folder"):
        run_test(*common, "--output", tmp_path / "out", "--json", tmp_path)
    with pytest.raises(UserError, match="fits on val only"):
        run_test(*common, "--output", tmp_path / "out", "--split", "test", "--calibrate")
    assert evaluated == [] and a_file.read_text() == "mine"

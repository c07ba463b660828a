"""utils.plots: each figure is a PNG that decodes, of a sensible size, and draws the numbers it is
given or computes (percentages, row-normalised recall, calibration bars) as a hand computation says.

The figures are inspected before they are closed: `plt.close` is replaced by a recorder, so the
tests read back the lines, texts, images and bars the functions drew.
"""
import math

import numpy as np
import pytest
from PIL import Image

from utils import plots


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions close, kept open for the test to read (closed afterwards)."""
    figures = []
    real_close = plots.plt.close
    monkeypatch.setattr(plots.plt, "close", figures.append)
    yield figures
    for fig in figures:
        real_close(fig)


def decoded(path):
    """The PNG at `path` as an RGB array, after PIL has checked the file is whole."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    # Sensible: big enough to read, not a runaway canvas, and not blank.
    assert 300 <= pixels.shape[1] <= 3000 and 300 <= pixels.shape[0] <= 3000, pixels.shape
    assert pixels.std() > 10
    return pixels


def epoch(n, train_loss, val_loss, train_acc, val_acc, balanced, sources=None):
    record = {"epoch": n, "train_loss": train_loss, "val_loss": val_loss, "train_acc": train_acc,
              "val_acc": val_acc, "val_balanced_acc": balanced}
    if sources is not None:
        record["val_acc_per_source"] = sources
    return record


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


# plot_history

def test_history_plots_losses_as_given_and_accuracies_in_percent(tmp_path, drawn):
    history = [epoch(1, 1.9, 1.7, 0.30, 0.35, 0.25), epoch(2, 1.2, 1.3, 0.55, 0.50, 0.40),
               epoch(3, 0.8, 1.1, 0.75, 0.625, 0.5)]
    plots.plot_history(history, tmp_path / "curves.png")
    decoded(tmp_path / "curves.png")
    ax_loss, ax_acc = drawn[0].axes
    loss, acc = lines_by_label(ax_loss), lines_by_label(ax_acc)
    assert list(loss["train"].get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(loss["train"].get_ydata(), [1.9, 1.2, 0.8])
    np.testing.assert_allclose(loss["val"].get_ydata(), [1.7, 1.3, 1.1])
    np.testing.assert_allclose(acc["train"].get_ydata(), [30, 55, 75])
    np.testing.assert_allclose(acc["val"].get_ydata(), [35, 50, 62.5])
    np.testing.assert_allclose(acc["val (balanced)"].get_ydata(), [25, 40, 50])
    assert set(acc) == {"train", "val", "val (balanced)"}  # no per-source lines without sources


def test_history_of_one_epoch_draws_single_points(tmp_path, drawn):
    # After the first epoch train.py already writes curves.png: one point per line must still plot.
    plots.plot_history([epoch(1, 2.0, 1.8, 0.2, 0.25, 0.2)], tmp_path / "curves.png")
    decoded(tmp_path / "curves.png")
    acc = lines_by_label(drawn[0].axes[1])
    assert list(acc["val"].get_xdata()) == [1] and list(acc["val"].get_ydata()) == [25]


def test_history_draws_one_line_per_source_with_gaps_where_a_source_was_absent(tmp_path, drawn):
    """Sources come from the last epoch; an epoch that lacks one (a dataset added on resume) is a gap."""
    history = [epoch(1, 1.5, 1.4, 0.4, 0.45, 0.4, {"raf": 0.5}),
               epoch(2, 1.0, 1.2, 0.6, 0.55, 0.5, {"raf": 0.6, "fer": 0.25})]
    plots.plot_history(history, tmp_path / "curves.png")
    decoded(tmp_path / "curves.png")
    acc = lines_by_label(drawn[0].axes[1])
    np.testing.assert_allclose(acc["val raf"].get_ydata(), [50, 60])
    fer = acc["val fer"].get_ydata()
    assert math.isnan(fer[0]) and fer[1] == pytest.approx(25)


def test_history_with_a_single_source_draws_no_per_source_line(tmp_path, drawn):
    # One source is the overall val accuracy again: a second identical line would only clutter.
    history = [epoch(1, 1.5, 1.4, 0.4, 0.45, 0.4, {"raf": 0.45}), epoch(2, 1.0, 1.2, 0.6, 0.55, 0.5, {"raf": 0.55})]
    plots.plot_history(history, tmp_path / "curves.png")
    assert set(lines_by_label(drawn[0].axes[1])) == {"train", "val", "val (balanced)"}


def test_history_with_non_finite_losses_still_writes_the_figure(tmp_path, drawn):
    """A diverged epoch logs inf or NaN (tests/test_faults_train.py); the curves must still be written."""
    history = [epoch(1, 1.5, 1.4, 0.4, 0.45, 0.4), epoch(2, math.inf, math.nan, 0.1, 0.15, 0.1),
               epoch(3, 1.1, 1.2, 0.5, 0.5, 0.45)]
    plots.plot_history(history, tmp_path / "curves.png")
    decoded(tmp_path / "curves.png")
    val = lines_by_label(drawn[0].axes[0])["val"].get_ydata()
    assert val[0] == 1.4 and math.isnan(val[1]) and val[2] == 1.2
    low, high = drawn[0].axes[0].get_ylim()
    assert math.isfinite(low) and math.isfinite(high)  # the infinite loss does not blow up the axis


# plot_confusion

CLASSES = ["angry", "happy", "sad"]
# Rows are true classes. "sad" has no images: its row must be zeros, not NaN.
# Recall 0.5 sits on the white-text threshold and 0.55 just above it.
CM = np.array([[2, 2, 0],
               [2, 11, 7],
               [0, 0, 0]])
RECALL = np.array([[2 / 4, 2 / 4, 0],
                   [2 / 20, 11 / 20, 7 / 20],
                   [0, 0, 0]])


def cell_texts(ax):
    """{(row, column): (text, colour)} of the numbers written in the cells."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): (t.get_text(), t.get_color())
            for t in ax.texts}


def test_confusion_writes_counts_and_row_normalised_recall(tmp_path, drawn):
    plots.plot_confusion(CM, CLASSES, tmp_path / "cm.png", title="val:")
    decoded(tmp_path / "cm.png")
    counts, norm = drawn[0].axes[:2]
    assert counts.get_title() == "val: counts" and norm.get_title() == "val: row-normalised"
    assert {k: v[0] for k, v in cell_texts(counts).items()} == {(i, j): str(CM[i, j]) for i in range(3)
                                                                 for j in range(3)}
    assert {k: v[0] for k, v in cell_texts(norm).items()} == {(i, j): f"{RECALL[i, j]:.2f}" for i in range(3)
                                                               for j in range(3)}
    assert cell_texts(norm)[(1, 0)][0] == "0.10" and cell_texts(norm)[(1, 1)][0] == "0.55"


def test_confusion_colours_both_panels_by_recall(tmp_path, drawn):
    """Colour is recall in both panels, so a large class does not wash out the others; text turns
    white on the dark cells (recall above one half, so not at exactly 0.5)."""
    plots.plot_confusion(CM, CLASSES, tmp_path / "cm.png")
    for ax in drawn[0].axes[:2]:
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), RECALL)
        assert ax.images[0].get_clim() == (0, 1)
        colours = {k: v[1] for k, v in cell_texts(ax).items()}
        assert colours[(1, 1)] == "white"  # 0.55
        assert colours[(0, 0)] == colours[(1, 2)] == colours[(2, 2)] == "black"  # 0.50, 0.35, an empty row


def test_confusion_labels_the_axes_with_the_class_names(tmp_path, drawn):
    plots.plot_confusion(CM, CLASSES, tmp_path / "cm.png")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert ax.get_title() == "counts"  # no title given: no leading space


def test_confusion_writes_float_counts_whole_or_with_one_decimal(tmp_path, drawn):
    """A float matrix of whole numbers (a sum of one-hot rows) reads as integers; vote-weighted
    counts get one decimal (format "d" raised ValueError on any float before)."""
    plots.plot_confusion(CM.astype(float), CLASSES, tmp_path / "whole.png")
    assert cell_texts(drawn[0].axes[0])[(1, 1)][0] == str(CM[1, 1])
    soft = np.array([[1.25, 0.75], [0.5, 2.0]])
    plots.plot_confusion(soft, ["a", "b"], tmp_path / "soft.png")
    assert {k: v[0] for k, v in cell_texts(drawn[1].axes[0]).items()} == {
        (0, 0): "1.2", (0, 1): "0.8", (1, 0): "0.5", (1, 1): "2.0"}
    assert cell_texts(drawn[1].axes[1])[(0, 0)][0] == "0.62"  # 1.25 / 2


def test_confusion_figure_grows_with_the_number_of_classes(tmp_path):
    # Seven classes need more room than two, or the cell numbers overlap.
    plots.plot_confusion(np.eye(2, dtype=int), ["a", "b"], tmp_path / "two.png")
    plots.plot_confusion(np.eye(7, dtype=int) * 5, list("abcdefg"), tmp_path / "seven.png")
    small, large = decoded(tmp_path / "two.png"), decoded(tmp_path / "seven.png")
    assert large.shape[0] > small.shape[0] and large.shape[1] > small.shape[1]


# plot_reliability

def reliability_bins():
    """Five bins of width 0.2: two empty, one over-confident, one under-confident, one calibrated."""
    return {"edges": np.linspace(0, 1, 6),
            "count": np.array([0.0, 4.0, 0.0, 10.0, 6.0]),
            "confidence": np.array([0.0, 0.35, 0.0, 0.7, 0.9]),
            "accuracy": np.array([0.0, 0.25, 0.0, 0.8, 0.9])}


def test_reliability_draws_accuracy_and_the_gap_to_confidence_in_used_bins(tmp_path, drawn):
    plots.plot_reliability(reliability_bins(), tmp_path / "rel.png", title="test:", ece=0.0875)
    decoded(tmp_path / "rel.png")
    ax, ax_n = drawn[0].axes
    accuracy, gap = ax.containers  # bar() calls in order: accuracy, then the gap above or below it
    # Only the three used bins, centred at 0.3, 0.7 and 0.9, 0.95 of the bin width (0.2) wide.
    np.testing.assert_allclose([p.get_x() + p.get_width() / 2 for p in accuracy], [0.3, 0.7, 0.9])
    np.testing.assert_allclose([p.get_width() for p in accuracy], [0.19] * 3)
    np.testing.assert_allclose([p.get_height() for p in accuracy], [0.25, 0.8, 0.9])
    # The gap spans accuracy to confidence, downward when the bin is under-confident (0.8 > 0.7).
    spans = [sorted([p.get_y(), p.get_y() + p.get_height()]) for p in gap]
    np.testing.assert_allclose(spans, [[0.25, 0.35], [0.7, 0.8], [0.9, 0.9]], atol=1e-12)
    assert ax.get_title() == "test: ECE 8.75%"


def test_reliability_counts_panel_shows_every_bin_including_empty_ones(tmp_path, drawn):
    plots.plot_reliability(reliability_bins(), tmp_path / "rel.png")
    counts = drawn[0].axes[1].containers[0]
    np.testing.assert_allclose([p.get_x() + p.get_width() / 2 for p in counts], [0.1, 0.3, 0.5, 0.7, 0.9])
    np.testing.assert_allclose([p.get_height() for p in counts], [0, 4, 0, 10, 6])
    assert drawn[0].axes[0].get_title() == ""  # no ECE given: none shown


def test_reliability_of_the_project_bins_with_no_predictions_still_draws(tmp_path, drawn):
    """calibration_bins' output as test.py passes it, for an empty split: every bin unused."""
    from utils.metrics import calibration_bins

    bins = calibration_bins(np.zeros((0, 3)), np.zeros(0, dtype=int))
    plots.plot_reliability(bins, tmp_path / "rel.png", title="val:", ece=0.0)
    decoded(tmp_path / "rel.png")
    accuracy, gap = drawn[0].axes[0].containers
    assert len(accuracy) == len(gap) == 0 and len(drawn[0].axes[1].containers[0]) == 15
    assert drawn[0].axes[0].get_title() == "val: ECE 0.00%"


# plot_tsne

def clusters(per_class, classes=3, dims=8, seed=0):
    """Well-separated Gaussian blobs: `per_class` points of each of `classes` labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    features = rng.normal(0, 0.1, (len(labels), dims)) + 5 * np.eye(dims)[labels]
    return features, labels


def test_tsne_scatters_each_present_class_once_with_all_its_points(tmp_path, drawn):
    features, labels = clusters(per_class=5, classes=2)
    # "sad" has no points: no empty scatter and no legend entry for it.
    plots.plot_tsne(features, labels, ["angry", "happy", "sad"], tmp_path / "tsne.png")
    decoded(tmp_path / "tsne.png")
    ax = drawn[0].axes[0]
    sizes = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert sizes == {"angry": 5, "happy": 5}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["angry", "happy"]
    assert np.isfinite(np.concatenate([c.get_offsets() for c in ax.collections])).all()


def test_tsne_subsamples_to_max_points(tmp_path, drawn):
    features, labels = clusters(per_class=20)
    plots.plot_tsne(features, labels, ["a", "b", "c"], tmp_path / "tsne.png", max_points=24)
    decoded(tmp_path / "tsne.png")
    assert sum(len(c.get_offsets()) for c in drawn[0].axes[0].collections) == 24


def test_tsne_of_three_points_works(tmp_path):
    # The smallest input it supports: perplexity is clamped to 2, which t-SNE needs below the point count.
    features, labels = clusters(per_class=1)
    plots.plot_tsne(features, labels, ["a", "b", "c"], tmp_path / "tsne.png")
    decoded(tmp_path / "tsne.png")

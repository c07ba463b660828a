"""Classification and calibration metrics against hand-computed values."""
import math

import numpy as np
import pytest

from utils.metrics import (apply_temperature, calibration_bins, confusion_matrix, expected_calibration_error,
                           fit_temperature, mean_kl, multi_target_accuracy, summarize)


def test_summary_metrics_against_hand_computation():
    cm = confusion_matrix(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    s = summarize(cm)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_expected_calibration_error_against_hand_computation():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]])
    labels = np.array([0, 0, 0])
    # confidences 0.9 (right), 0.6 (wrong), 0.8 (right), each alone in its bin of width 1/15
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    bins = calibration_bins(probs, labels)
    assert bins["count"].sum() == 3 and bins["count"][13] == 1 and bins["count"][8] == 1 and bins["count"][11] == 1
    # two predictions in one bin: |mean accuracy - mean confidence| weighted by 2/2
    both = np.array([[0.95, 0.05], [0.94, 0.06]])
    assert expected_calibration_error(both, np.array([0, 1])) == pytest.approx(abs(0.5 - 0.945))


def test_mean_kl_and_multi_target_accuracy_against_hand_computation():
    q = np.array([[0.5, 0.5, 0.0]])
    p = np.array([[0.25, 0.5, 0.25]])
    assert mean_kl(q, p) == pytest.approx(0.5 * math.log(2))
    assert mean_kl(q, q) == pytest.approx(0.0, abs=1e-9)
    targets = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    assert multi_target_accuracy(np.array([1, 1]), targets) == pytest.approx(0.5)
    assert multi_target_accuracy(np.array([0, 2]), targets) == pytest.approx(1.0)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 5))
    true = np.exp(logits / 2) / np.exp(logits / 2).sum(1, keepdims=True)  # labels drawn at T = 2
    labels = np.array([rng.choice(5, p=row) for row in true])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    temperature = fit_temperature(probs, labels)
    assert temperature == pytest.approx(2.0, rel=0.08)
    assert np.allclose(apply_temperature(probs, 2.0), true)
    assert expected_calibration_error(apply_temperature(probs, temperature), labels) < \
        expected_calibration_error(probs, labels) / 2
    assert np.array_equal(apply_temperature(probs, temperature).argmax(1), probs.argmax(1))

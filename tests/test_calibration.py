"""Threshold, temperature scaling and metrics on arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.calibration import calibrate, choose_threshold, expected_calibration_error, \
    fit_calibration, sigmoid
from pneumo.metrics import screening_metrics


def test_youden_threshold_separates_perfectly_separable_scores():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    threshold, method = choose_threshold(y, p)
    assert method == "youden_j"
    assert 0.3 < threshold <= 0.6
    assert ((p >= threshold) == y).all()


def test_target_sensitivity_picks_the_most_specific_threshold_reaching_it():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.05, 0.2, 0.45, 0.7, 0.3, 0.6, 0.8, 0.9])
    threshold, _ = choose_threshold(y, p, target_sensitivity=1.0)
    assert threshold == pytest.approx(0.3)  # the lowest positive must be caught
    threshold, _ = choose_threshold(y, p, target_sensitivity=0.75)
    assert threshold == pytest.approx(0.6)


def test_calibration_recovers_a_known_overconfidence_and_prior_shift():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < sigmoid(true_logits)).astype(int)
    distorted = true_logits * 3.0 - 2.0  # 3x over-confident and shifted towards NORMAL
    temperature, bias = fit_calibration(distorted, y)
    assert temperature == pytest.approx(3.0, rel=0.08)
    assert bias == pytest.approx(2.0 / 3.0, abs=0.08)
    before = expected_calibration_error(y, sigmoid(distorted))
    after = expected_calibration_error(y, calibrate(distorted, temperature, bias))
    assert after < before / 5


def test_calibration_keeps_the_ranking():
    logits = np.array([-3.0, -1.0, 0.5, 2.0])
    assert (np.argsort(calibrate(logits, 2.5, -0.7)) == np.argsort(logits)).all()


def test_ece_is_zero_for_perfect_calibration_and_large_for_wrong_confidence():
    y = np.array([0] * 50 + [1] * 50)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.where(y == 1, 0.01, 0.99)) == pytest.approx(0.99)


def test_screening_metrics_match_a_hand_counted_confusion_matrix():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.2, 0.1, 0.1, 0.05])
    m = screening_metrics(y, p, threshold=0.5, n_resamples=200)
    assert m["confusion_matrix"] == {"tn": 5, "fp": 1, "fn": 1, "tp": 3}
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["ppv"] == pytest.approx(0.75)
    assert m["npv"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(0.75)
    assert m["roc_auc"] == pytest.approx(21.5 / 24)  # one tie counts half
    low, high = m["roc_auc_ci95"]
    assert low <= m["roc_auc"] <= high <= 1.0
    for key in ("n", "loss", "ece", "threshold", "npv", "f1"):
        assert key in m

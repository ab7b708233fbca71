"""Probability calibration and the operating threshold, both fitted on validation.

Temperature scaling (Guo et al., 2017) divides the logit by a fitted T; we add
a fitted bias b, ``p = sigmoid(logit / T + b)`` (Platt scaling), because
class-weighted training deliberately shifts the logits' prior and T alone
cannot undo a shift. Both keep the ranking, so ROC AUC is unchanged and the
threshold can be chosen afterwards.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.metrics import roc_curve


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy, clipped so that a confident miss costs ~34, not inf."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_calibration(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(T, b)`` minimising the log loss of ``sigmoid(logits / T + b)``, T > 0."""
    logits = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both classes in the validation set")

    def loss(params):
        log_t, bias = params
        return log_loss(y, sigmoid(logits / np.exp(log_t) + bias))

    result = minimize(loss, x0=[0.0, 0.0], method="L-BFGS-B",
                      bounds=[(np.log(0.05), np.log(20.0)), (-10.0, 10.0)])
    log_t, bias = result.x
    return float(np.exp(log_t)), float(bias)


def calibrate(logits: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature + bias)


def choose_threshold(y: np.ndarray, p: np.ndarray,
                     target_sensitivity: float | None = None) -> tuple[float, str]:
    """The operating threshold on ``p`` read off the ROC curve.

    Youden's J (sensitivity + specificity - 1, maximised) by default; with a
    target sensitivity, the highest threshold that still reaches it, which is
    the most specific such point.
    """
    fpr, tpr, thresholds = roc_curve(y, p)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if target_sensitivity is None:
        best = int(np.argmax(tpr - fpr))
        return float(thresholds[best]), "youden_j"
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError("target sensitivity must be in (0, 1]")
    reaching = np.flatnonzero(tpr >= target_sensitivity)
    return float(thresholds[reaching[0]]), f"sensitivity>={target_sensitivity:g}"


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE over equal-width bins of the predicted probability of PNEUMONIA."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            error += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(error)


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Per-bin mean prediction, observed frequency and count, for the reliability diagram."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            rows.append({"lower": b / n_bins, "upper": (b + 1) / n_bins, "count": int(mask.sum()),
                         "mean_predicted": float(p[mask].mean()), "observed": float(y[mask].mean())})
    return rows

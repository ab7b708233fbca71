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


def log_loss(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean (or ``weights``-weighted mean) binary cross-entropy, clipped so that a
    confident miss costs ~34, not inf."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.average(y * np.log(p) + (1 - y) * np.log(1 - p), weights=weights))


def fit_calibration(logits: np.ndarray, y: np.ndarray,
                    weights: np.ndarray | None = None) -> tuple[float, float]:
    """``(T, b)`` minimising the (weighted) log loss of ``sigmoid(logits / T + b)``, T > 0.

    ``weights`` let several calibration sets count equally whatever their sizes."""
    logits = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both classes in the validation set")

    def loss(params):
        log_t, bias = params
        return log_loss(y, sigmoid(logits / np.exp(log_t) + bias), weights)

    result = minimize(loss, x0=[0.0, 0.0], method="L-BFGS-B",
                      bounds=[(np.log(0.05), np.log(20.0)), (-10.0, 10.0)])
    log_t, bias = result.x
    return float(np.exp(log_t)), float(bias)


def calibrate(logits: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature + bias)


def choose_threshold(y: np.ndarray, p: np.ndarray, target_sensitivity: float | None = None,
                     weights: np.ndarray | None = None) -> tuple[float, str]:
    """The operating threshold on ``p`` read off the (``weights``-weighted) ROC curve.

    Youden's J (sensitivity + specificity - 1, maximised) by default; with a
    target sensitivity, the highest threshold that still reaches it, which is
    the most specific such point.
    """
    fpr, tpr, thresholds = roc_curve(y, p, sample_weight=weights)
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


def choose_inconclusive_band(y: np.ndarray, p: np.ndarray, threshold: float, *,
                             max_fraction: float = 0.2, min_cases: int = 10,
                             min_gap: float = 0.15, alpha: float = 0.05) -> dict | None:
    """The band of probabilities around ``threshold`` where answers are too unsure to give.

    Cases are ranked by their distance from the threshold on the logit scale, so
    the band is symmetric in evidence rather than in probability. For every
    band holding the ``k`` nearest cases (``min_cases <= k <= max_fraction * n``)
    the accuracy inside and outside is counted; the band with the largest gap
    is kept only if the gap is at least ``min_gap`` and Fisher's exact test says
    the inside is less accurate with one-sided p < ``alpha``. Otherwise None:
    the scores carry no region of clearly lower accuracy, and no band is better
    than an arbitrary one.

    Returns ``{"lower", "upper", ...}`` (probabilities, inclusive) with the
    counts and accuracies it was chosen on.
    """
    from scipy.stats import fisher_exact

    y = np.asarray(y, dtype=int).ravel()
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), 1e-12, 1 - 1e-12)
    n = len(y)
    k_max = int(max_fraction * n)
    if k_max < min_cases or n - k_max < min_cases:
        return None
    logit = np.log(p / (1 - p))
    centre = float(np.log(threshold / (1 - threshold)))
    distance = np.abs(logit - centre)
    order = np.argsort(distance, kind="stable")
    distance = distance[order]
    correct = ((p >= threshold).astype(int) == y)[order]
    right_so_far = np.cumsum(correct)
    total_right = int(right_so_far[-1])
    best = None
    for k in range(min_cases, k_max + 1):
        if distance[k - 1] == distance[k]:
            continue  # a band edge cannot split tied cases
        inside = right_so_far[k - 1] / k
        outside = (total_right - right_so_far[k - 1]) / (n - k)
        if best is None or outside - inside > best[1]:
            best = (k, outside - inside)
    if best is None or best[1] < min_gap:
        return None
    k = best[0]
    right_in = int(right_so_far[k - 1])
    right_out = total_right - right_in
    _, p_value = fisher_exact([[right_in, k - right_in], [right_out, n - k - right_out]],
                              alternative="less")
    if p_value >= alpha:
        return None
    edge = float((distance[k - 1] + distance[k]) / 2)
    return {
        "lower": float(sigmoid(centre - edge)),
        "upper": float(sigmoid(centre + edge)),
        "method": (f"the k cases nearest the threshold (logit scale) with the largest accuracy "
                   f"gap to the rest, k <= {max_fraction:g} n, gap >= {min_gap:g}, Fisher "
                   f"one-sided p < {alpha:g}"),
        "n": int(n),
        "n_inside": int(k),
        "accuracy_inside": right_in / k,
        "accuracy_outside": right_out / (n - k),
        "fisher_p": float(p_value),
    }


def in_band(probability: float, band: dict | None) -> bool:
    """Whether a calibrated probability falls in a card's inconclusive band (None: never)."""
    return bool(band) and band["lower"] <= probability <= band["upper"]

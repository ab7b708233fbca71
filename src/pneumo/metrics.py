"""Screening metrics at the operating point, with bootstrap intervals."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from .calibration import expected_calibration_error, log_loss


def _rates(y: np.ndarray, predicted: np.ndarray) -> dict:
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    sensitivity, ppv = ratio(tp, tp + fn), ratio(tp, tp + fp)
    return {
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "ppv": ppv,
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * ppv * sensitivity, ppv + sensitivity) if tp else 0.0,
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def bootstrap_interval(y: np.ndarray, p: np.ndarray, statistic, n_resamples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile interval of ``statistic(y, p)`` over resamples with both classes present."""
    rng = np.random.default_rng(seed)
    values = []
    n = len(y)
    for _ in range(n_resamples):
        index = rng.integers(0, n, n)
        if y[index].min() == y[index].max():
            continue
        values.append(statistic(y[index], p[index]))
    if not values:
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def screening_metrics(y: np.ndarray, p: np.ndarray, threshold: float, *,
                      n_resamples: int = 1000, seed: int = 0) -> dict:
    """Everything ``metrics.json`` reports for calibrated probabilities ``p`` of PNEUMONIA."""
    y = np.asarray(y, dtype=int).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    predicted = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    result = {
        "n": int(len(y)),
        "n_normal": int((y == 0).sum()),
        "n_pneumonia": int((y == 1).sum()),
        "threshold": float(threshold),
        "loss": log_loss(y, p),
        "ece": expected_calibration_error(y, p),
        **_rates(y, predicted),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, p)) if both else float("nan"),
    }
    if both:
        result["roc_auc_ci95"] = bootstrap_interval(y, p, roc_auc_score, n_resamples, seed)
    for name in ("accuracy", "sensitivity", "specificity"):
        result[f"{name}_ci95"] = bootstrap_interval(
            y, p, lambda yy, pp, k=name: _rates(yy, (pp >= threshold).astype(int))[k],
            n_resamples, seed)
    return result


def images_needed(proportion: float, half_width: float, level: float = 0.95) -> int:
    """Cases needed for a ``level`` interval of +/- ``half_width`` around ``proportion``
    (normal approximation, n = z^2 p (1 - p) / h^2; 0.5 when the proportion is unknown)."""
    from scipy.stats import norm

    if not 0 < half_width < 1:
        raise ValueError("the interval half-width must be in (0, 1)")
    if not np.isfinite(proportion):
        proportion = 0.5
    z = norm.ppf(1 - (1 - level) / 2)
    # a proportion at 0 or 1 gives n = 0; the Wald interval is then wrong, so use the
    # rule-of-three-like floor of one "miss" in the sample instead
    spread = max(proportion * (1 - proportion), 0.05 * 0.95 * 0.1)
    return int(np.ceil(z ** 2 * spread / half_width ** 2))


def sample_size_report(metrics: dict, half_width: float = 0.05,
                       minimum_per_class: int = 50) -> dict:
    """How many images each class needs for sensitivity and specificity intervals of
    +/- ``half_width``, what the sample has, and warnings when it is too small."""
    rows = {}
    warnings = []
    for name, cls, count in (("sensitivity", "PNEUMONIA", metrics["n_pneumonia"]),
                             ("specificity", "NORMAL", metrics["n_normal"])):
        needed = images_needed(metrics[name], half_width)
        interval = metrics.get(f"{name}_ci95", [float("nan")] * 2)
        rows[name] = {"observed": metrics[name], "ci95": interval,
                      "ci95_half_width": (interval[1] - interval[0]) / 2,
                      "class": cls, "images": int(count), "images_needed": needed}
        if count < minimum_per_class:
            warnings.append(f"only {count} {cls} images: fewer than {minimum_per_class}, "
                            f"too few to trust the {name} or the threshold fitted on it")
        elif count < needed:
            warnings.append(f"{count} {cls} images give {name} +/- "
                            f"{rows[name]['ci95_half_width']:.3f}; +/- {half_width:g} needs "
                            f"about {needed}")
    return {"target_half_width": half_width, "level": 0.95, "minimum_per_class": minimum_per_class,
            **rows, "enough": not warnings, "warnings": warnings}

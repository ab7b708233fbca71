"""Figures people read at a glance: learning curves, ROC with the operating
point, precision-recall, confusion matrix, reliability diagram.

Each function draws already-computed numbers into one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from .calibration import reliability_bins  # noqa: E402
from .config import CLASS_NAMES, CONFUSION, PRECISION_RECALL, RELIABILITY, ROC  # noqa: E402

_STYLE = {"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
          "axes.grid": True, "grid.alpha": 0.3, "font.size": 10}


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def learning_curves(history: list[dict], path: Path) -> Path:
    """Accuracy and loss per epoch, train vs validation, phases marked."""
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        epochs = np.arange(1, len(history) + 1)
        for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
            ax.plot(epochs, [h.get(metric, np.nan) for h in history], "o-", ms=3, label="train")
            ax.plot(epochs, [h.get(f"val_{metric}", np.nan) for h in history], "o-", ms=3,
                    label="validation")
            phases = [h.get("phase") for h in history]
            for i in range(1, len(phases)):
                if phases[i] != phases[i - 1]:
                    ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
                    ax.text(i + 0.6, ax.get_ylim()[1], " fine-tune", va="top", fontsize=8,
                            color="grey")
            ax.set(title=title, xlabel="epoch")
            ax.legend()
        return _save(fig, path)


def roc(y: np.ndarray, p: np.ndarray, threshold: float, auc: float, path: Path,
        interval: list[float] | None = None) -> Path:
    fpr, tpr, _ = roc_curve(y, p)
    predicted = p >= threshold
    op_tpr = predicted[y == 1].mean()
    op_fpr = predicted[y == 0].mean()
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5, 5))
        label = f"AUC {auc:.3f}"
        if interval:
            label += f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})"
        ax.plot(fpr, tpr, lw=2, label=label)
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.plot(op_fpr, op_tpr, "o", color="crimson", ms=8,
                label=f"operating point (t={threshold:.3f})\nsens {op_tpr:.3f}, spec {1 - op_fpr:.3f}")
        ax.set(title="ROC curve", xlabel="1 - specificity", ylabel="sensitivity",
               xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
        ax.legend(loc="lower right", fontsize=8)
        return _save(fig, path)


def precision_recall(y: np.ndarray, p: np.ndarray, threshold: float, path: Path) -> Path:
    precision, recall, _ = precision_recall_curve(y, p)
    predicted = p >= threshold
    op_recall = predicted[y == 1].mean()
    op_precision = y[predicted].mean() if predicted.any() else np.nan
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(recall, precision, lw=2)
        ax.axhline(y.mean(), color="grey", ls=":", lw=1, label=f"prevalence {y.mean():.2f}")
        ax.plot(op_recall, op_precision, "o", color="crimson", ms=8, label="operating point")
        ax.set(title="Precision-recall (PNEUMONIA)", xlabel="recall (sensitivity)",
               ylabel="precision (PPV)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
        ax.legend(loc="lower left", fontsize=8)
        return _save(fig, path)


def confusion(matrix: dict, path: Path) -> Path:
    counts = np.array([[matrix["tn"], matrix["fp"]], [matrix["fn"], matrix["tp"]]])
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(4.6, 4))
        ax.imshow(counts, cmap="Blues")
        row_totals = counts.sum(axis=1, keepdims=True).clip(min=1)
        for (i, j), value in np.ndenumerate(counts):
            share = value / row_totals[i, 0]
            ax.text(j, i, f"{value}\n{share:.0%}", ha="center", va="center", fontsize=12,
                    color="white" if value > counts.max() / 2 else "black")
        ax.set_xticks([0, 1], [f"predicted\n{c}" for c in CLASS_NAMES])
        ax.set_yticks([0, 1], [f"true\n{c}" for c in CLASS_NAMES])
        ax.set_title("Confusion matrix")
        return _save(fig, path)


def reliability(y: np.ndarray, p_before: np.ndarray | None, p_after: np.ndarray,
                path: Path) -> Path:
    """Observed frequency vs predicted probability, before and after calibration."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect")
        series = [("calibrated", p_after)]
        if p_before is not None:
            series.insert(0, ("uncalibrated", p_before))
        for name, p in series:
            rows = reliability_bins(y, p)
            ax.plot([r["mean_predicted"] for r in rows], [r["observed"] for r in rows], "o-",
                    label=name)
        ax.set(title="Reliability diagram", xlabel="predicted P(pneumonia)",
               ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
        return _save(fig, path)


def all_evaluation_plots(y, p, metrics: dict, out_dir: Path, p_uncalibrated=None) -> list[Path]:
    out_dir = Path(out_dir)
    return [
        roc(y, p, metrics["threshold"], metrics["roc_auc"], out_dir / ROC,
            metrics.get("roc_auc_ci95")),
        precision_recall(y, p, metrics["threshold"], out_dir / PRECISION_RECALL),
        confusion(metrics["confusion_matrix"], out_dir / CONFUSION),
        reliability(y, p_uncalibrated, p, out_dir / RELIABILITY),
    ]


def roc_by_set(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], threshold: float,
               path: Path) -> Path:
    """Every set's ROC curve on one figure, each with its operating point, so that the
    shift from one population to another is seen at a glance."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 6))
        colours = plt.cm.tab10(np.linspace(0, 1, 10))
        for index, (name, (y, p, auc)) in enumerate(curves.items()):
            colour = colours[index % 10]
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, lw=1.8, color=colour, label=f"{name}: AUC {auc:.3f} (n={len(y)})")
            predicted = p >= threshold
            ax.plot(predicted[y == 0].mean(), predicted[y == 1].mean(), "o", color=colour, ms=6)
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set(title=f"ROC by set (dots: operating point, t={threshold:.3f})",
               xlabel="1 - specificity", ylabel="sensitivity", xlim=(-0.01, 1.01),
               ylim=(-0.01, 1.01))
        ax.legend(loc="lower right", fontsize=7)
        return _save(fig, path)

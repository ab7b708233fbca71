"""``pneumo calibrate``: fit the operating point to a site's own labelled X-rays.

A model's threshold and probability calibration were chosen on the training
collection's validation split. A clinic with other machines, other patients
and another prevalence should re-fit both on its own labelled images. The
network is not touched: only the card changes (threshold, calibration, the
inconclusive band and a ``site_calibration`` record of the data's counts and
date, never its file names), and the bundle is copied with fresh checksums.

The report (``site_report/`` in the new bundle) gives the metrics at the new
operating point with bootstrap intervals, the plots, and how many images the
intervals would need to be +/- 5 points wide, with warnings when the sample is
too small to trust.
"""

from __future__ import annotations

import datetime
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from . import plots
from .bundle import check_destination, read_card, rebundle
from .calibration import calibrate, choose_inconclusive_band, choose_threshold, \
    expected_calibration_error, fit_calibration, log_loss
from .config import CLASS_NAMES, default_bundle_path
from .data import DataError, discover, load_images
from .metrics import sample_size_report, screening_metrics
from .predictor import Predictor

log = logging.getLogger(__name__)

REPORT_FOLDER = "site_report"


def site_logits(predictor: Predictor, data_dir: str | Path,
                batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, labels)`` of every readable labelled image under ``data_dir``."""
    train, val = discover(data_dir, for_training=False)
    samples = train + val
    if len({s.label for s in samples}) < 2:
        raise DataError(f"calibration needs both NORMAL and PNEUMONIA images under {data_dir}")
    samples, images = load_images(samples, predictor.image_size, use_cache=False,
                                  normalization=predictor.normalization, progress=False,
                                  desc="decoding")
    y = np.array([s.label for s in samples], dtype=int)
    if len(np.unique(y)) < 2:
        raise DataError(f"calibration needs readable NORMAL and PNEUMONIA images under {data_dir}")
    logits = []
    for start in range(0, len(images), batch_size):
        logits.extend(r.logit for r in predictor.predict_batch(images[start:start + batch_size],
                                                               heatmaps=False))
    return np.array(logits, dtype=np.float64), y


def fit_site(logits: np.ndarray, y: np.ndarray, *, target_sensitivity: float | None = None,
             before: tuple[float, float] = (1.0, 0.0), seed: int = 0,
             half_width: float = 0.05) -> dict:
    """Calibration, threshold, band, metrics and sample-size report for a site's scores.

    ``before``: the bundle's current ``(temperature, bias)``, to report what the
    re-fit changed."""
    temperature, bias = fit_calibration(logits, y)
    p_before = calibrate(logits, *before)
    p = calibrate(logits, temperature, bias)
    threshold, method = choose_threshold(y, p, target_sensitivity)
    metrics = screening_metrics(y, p, threshold, seed=seed)
    metrics.update(threshold_method=method, temperature=temperature, calibration_bias=bias,
                   ece_before=expected_calibration_error(y, p_before),
                   loss_before=log_loss(y, p_before))
    band = choose_inconclusive_band(y, p, threshold)
    metrics["inconclusive"] = band
    metrics["sample_size"] = sample_size_report(metrics, half_width)
    metrics["note"] = ("threshold, calibration and band were fitted on these same images, so "
                       "the figures here are optimistic; check them on other labelled images "
                       "with pneumo evaluate")
    return {"temperature": temperature, "bias": bias, "threshold": threshold,
            "threshold_method": method, "band": band, "metrics": metrics,
            "p": p, "p_before": p_before}


def site_version(version: str, date: str) -> str:
    """``0.1.0+v1`` calibrated on 2026-11-26 -> ``0.1.0+v1.site20261126`` (PEP 440 local part)."""
    stamp = "site" + date.replace("-", "")
    return f"{version}.{stamp}" if "+" in version else f"{version}+{stamp}"


def calibrate_site(data_dir: str | Path, out: str | Path, model: str | Path | None = None, *,
                   target_sensitivity: float | None = None, batch_size: int = 32,
                   seed: int = 0, today: datetime.date | None = None) -> dict:
    """Write a site-calibrated copy of the bundle ``model`` to ``out``; returns the
    report's metrics (also in ``out/site_report/metrics.json``)."""
    source = Path(model) if model else default_bundle_path()
    check_destination(out)
    predictor = Predictor.from_bundle(source)
    logits, y = site_logits(predictor, data_dir, batch_size)
    fit = fit_site(logits, y, target_sensitivity=target_sensitivity,
                   before=(predictor.temperature, predictor.bias), seed=seed)
    metrics = fit["metrics"]
    date = (today or datetime.date.today()).isoformat()
    old = read_card(source)
    record = {
        "date": date,
        "n": metrics["n"], "n_normal": metrics["n_normal"], "n_pneumonia": metrics["n_pneumonia"],
        "target_sensitivity": target_sensitivity,
        "base": {"name": old.get("name"), "version": old.get("version"),
                 "threshold": old["threshold"], "calibration": old["calibration"],
                 "inconclusive": old.get("inconclusive")},
        "metrics": {k: metrics[k] for k in ("roc_auc", "roc_auc_ci95", "accuracy", "accuracy_ci95",
                                            "sensitivity", "sensitivity_ci95", "specificity",
                                            "specificity_ci95", "ece", "ece_before")
                    if k in metrics},
        "sample_size": metrics["sample_size"],
        "report": REPORT_FOLDER + "/metrics.json",
    }
    card = {k: v for k, v in old.items() if k not in ("files", "format_version", "inconclusive")}
    card.update(
        version=site_version(str(old.get("version", "0")), date),
        threshold=fit["threshold"], threshold_method=fit["threshold_method"],
        calibration={"method": "temperature scaling with bias (Platt), re-fitted on site data: "
                               "p = sigmoid(logit / temperature + bias)",
                     "temperature": fit["temperature"], "bias": fit["bias"],
                     "ece_before": metrics["ece_before"], "ece_after": metrics["ece"]},
        site_calibration=record)
    if fit["band"]:
        card["inconclusive"] = fit["band"]
    metrics["model"] = {"name": card.get("name"), "version": card["version"],
                        "calibrated_from": old.get("version")}
    metrics["date"] = date
    for warning in metrics["sample_size"]["warnings"]:
        log.warning("%s", warning)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        paths = plots.all_evaluation_plots(y, fit["p"], metrics, scratch,
                                           p_uncalibrated=fit["p_before"])
        (scratch / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        extras = {f"{REPORT_FOLDER}/{path.name}": path for path in [*paths, scratch / "metrics.json"]}
        rebundle(source, out, card, extras)
    return metrics


def summary(metrics: dict) -> str:
    """The report in a few lines for the terminal."""
    size = metrics["sample_size"]
    lines = [(f"n={metrics['n']} ({metrics['n_normal']} {CLASS_NAMES[0]}, "
              f"{metrics['n_pneumonia']} {CLASS_NAMES[1]})  threshold={metrics['threshold']:.4f} "
              f"({metrics['threshold_method']})")]
    for name in ("sensitivity", "specificity"):
        row = size[name]
        lines.append(f"{name}={row['observed']:.3f} (95% CI {row['ci95'][0]:.3f}-"
                     f"{row['ci95'][1]:.3f}); +/- {size['target_half_width']:g} needs about "
                     f"{row['images_needed']} {row['class']} images, this sample has {row['images']}")
    band = metrics.get("inconclusive")
    if band:
        lines.append(f"inconclusive band {band['lower']:.3f}-{band['upper']:.3f}: "
                     f"{band['n_inside']} cases, accuracy {band['accuracy_inside']:.3f} inside vs "
                     f"{band['accuracy_outside']:.3f} outside")
    else:
        lines.append("no inconclusive band: no region of clearly lower accuracy near the threshold")
    lines += [f"WARNING: {w}" for w in size["warnings"]]
    return "\n".join(lines)

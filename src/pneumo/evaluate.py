"""``pneumo evaluate``: a bundle measured on several labelled sets in one report.

Every image goes through the same screening flow as ``pneumo predict`` and the
API (image checks, network, input gate), so a refused image is counted as
refused, not silently dropped; the metrics are those of the images the tool
would have answered. A folder the bundle was trained on is measured on its
validation part only (rebuilt from the card), and its subgroups (view, age
group) get rows of their own when the folder has a manifest.

Writes ``report.md`` (one table), ``metrics.json``, ``roc_by_set.png`` (every
set's ROC curve on one figure), ``predictions.csv`` and, per set, a folder of
the usual plots.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np

from . import plots
from .calibration import expected_calibration_error, log_loss, sigmoid
from .config import CLASS_NAMES
from .data import DataError, Sample, discover, source_name, subgroups
from .metrics import screening_metrics
from .predictor import Predictor

log = logging.getLogger(__name__)

def _training_folders(card: dict) -> dict[Path, str]:
    """Resolved training folders of the bundle -> their source names."""
    config = card.get("training", {}).get("config", {})
    folders = [config.get("data_dir"), *config.get("extra_sources", [])]
    return {Path(f).resolve(): source_name(f) for f in folders if f}


def validation_parts(card: dict, folders: list[str | Path]) -> dict[str, list[Sample]]:
    """The validation part of each of ``folders`` (training sources of the bundle), split
    exactly as training split it, by the card's configuration."""
    from .refit_gate import split_config
    from .train import prepare_split

    config = split_config(card, folders[0])
    config.extra_sources = [str(f) for f in folders[1:]]
    _, val, _ = prepare_split(config)
    parts: dict[str, list[Sample]] = {}
    for sample in val:
        parts.setdefault(f"{sample.source} (validation part)", []).append(sample)
    return parts


def collect_sets(card: dict, data_dirs: list[str | Path], *,
                 with_validation: bool = False) -> dict[str, list[Sample]]:
    """``{set name: samples}``: each folder (only its validation part if the bundle was
    trained on it) and, with ``with_validation``, every training source's validation part."""
    trained_on = _training_folders(card)
    parts: dict[str, list[Sample]] = {}

    def validation_of(folders: list[Path]) -> dict[str, list[Sample]]:
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise DataError(f"training folder(s) not found: {', '.join(missing)} (paths in "
                            "the card are relative to where training ran)")
        if not parts:
            parts.update(validation_parts(card, list(trained_on)))
        return {f"{trained_on[f]} (validation part)": parts[f"{trained_on[f]} (validation part)"]
                for f in folders}

    sets: dict[str, list[Sample]] = {}
    if with_validation:
        if not trained_on:
            raise DataError("the bundle's card names no training folders to rebuild "
                            "validation from")
        sets.update(validation_of(list(trained_on)))
    for folder in data_dirs:
        resolved = Path(folder).resolve()
        if resolved in trained_on:
            log.info("%s was trained on: measuring its validation part only", folder)
            sets.update(validation_of([resolved]))
            continue
        train, val = discover(folder, for_training=False)
        samples = train + val
        if len({s.label for s in samples}) < 2:
            raise DataError(f"evaluation needs both NORMAL and PNEUMONIA images under {folder}")
        name = source_name(folder)
        if name in sets:
            raise DataError(f"two sets are named {name!r}: rename one folder")
        sets[name] = samples
    return sets


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _set_metrics(predictor: Predictor, samples: list[Sample], screened: dict, seed: int) -> dict:
    """Metrics on the images the tool answered, with the refused and warned counts."""
    answered = [s for s in samples if not screened[s.path].refused]
    refused = len(samples) - len(answered)
    warned = sum(screened[s.path].status.startswith("warning") for s in answered)
    counts = {"images": len(samples), "refused": refused, "refused_rate": refused / len(samples),
              "warned": warned}
    y = np.array([s.label for s in answered])
    if len(np.unique(y)) < 2:
        return {**counts, "n": len(answered), "note": "fewer than two classes answered"}
    p = np.array([screened[s.path].prediction.probability for s in answered])
    logits = np.array([screened[s.path].prediction.logit for s in answered])
    # the network's own probabilities beside the calibrated ones: did calibration help here?
    raw = sigmoid(logits)
    return {**counts, **screening_metrics(y, p, predictor.threshold, seed=seed),
            "ece_uncalibrated": expected_calibration_error(y, raw),
            "loss_uncalibrated": log_loss(y, raw), "_y": y, "_p": p, "_logits": logits}


def evaluate(data_dirs: list[str | Path] | str | Path, out_dir: str | Path,
             bundle: str | Path | None = None, *, with_validation: bool = False,
             seed: int = 0) -> dict:
    """Measure the bundle on every set; write the report into ``out_dir`` and return
    ``{"model": ..., "sets": {name: metrics}}``."""
    from .predict_files import screen_paths

    if isinstance(data_dirs, (str, Path)):
        data_dirs = [data_dirs]
    predictor = Predictor.from_bundle(bundle)
    sets = collect_sets(predictor.card, data_dirs, with_validation=with_validation)
    if not sets:
        raise DataError("nothing to evaluate: give labelled folders or --validation")
    everything = list({s.path: s for samples in sets.values() for s in samples}.values())
    screened = {r.path: r for r in screen_paths(predictor, [s.path for s in everything],
                                                progress=True)}
    rows: dict[str, list[Sample]] = {}
    for name, samples in sets.items():
        rows[name] = samples
        rows.update(subgroups(name, samples))
    results = {name: _set_metrics(predictor, samples, screened, seed)
               for name, samples in rows.items()}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {}
    for name, result in results.items():
        if "_y" not in result:
            continue
        y, p, logits = result.pop("_y"), result.pop("_p"), result.pop("_logits")
        curves[name] = (y, p, result["roc_auc"])
        plots.all_evaluation_plots(y, p, result, out_dir / _slug(name),
                                   p_uncalibrated=sigmoid(logits))
    plots.roc_by_set(curves, predictor.threshold, out_dir / "roc_by_set.png")
    report = {"model": {"name": predictor.name, "version": predictor.version,
                        "bundle": str(predictor.bundle_path), "threshold": predictor.threshold},
              "sets": results}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_table(report) + "\n")
    with open(out_dir / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "path", "label", "probability", "status"])
        for name, samples in sets.items():
            for sample in samples:
                result = screened[sample.path]
                probability = "" if result.prediction is None else \
                    f"{result.prediction.probability:.6f}"
                writer.writerow([name, sample.path, CLASS_NAMES[sample.label], probability,
                                 result.status])
    return report


def _interval(metrics: dict, key: str) -> str:
    value = metrics.get(key, float("nan"))
    low, high = metrics.get(f"{key}_ci95", [float("nan")] * 2)
    return f"{value:.3f} ({low:.3f}-{high:.3f})"


def markdown_table(report: dict) -> str:
    """One row per set: counts, refusals and the screening metrics with 95% intervals."""
    lines = [f"Model {report['model']['name']} {report['model']['version']}, threshold "
             f"{report['model']['threshold']:.3f}; 95% bootstrap intervals; metrics on the "
             "images the tool answered (refused ones are counted, not scored).", "",
             "| set | images (normal / pneumonia) | refused | warned | ROC AUC | accuracy | "
             "sensitivity | specificity |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in report["sets"].items():
        counts = f"{m['images']}"
        if "n_normal" in m:
            counts += f" ({m['n_normal']} / {m['n_pneumonia']} answered)"
        if "roc_auc" not in m:
            lines.append(f"| {name} | {counts} | {m['refused']} | {m['warned']} | "
                         f"{m.get('note', '')} | | | |")
            continue
        lines.append(f"| {name} | {counts} | {m['refused']} ({m['refused_rate']:.1%}) | "
                     f"{m['warned']} | {_interval(m, 'roc_auc')} | {_interval(m, 'accuracy')} | "
                     f"{_interval(m, 'sensitivity')} | {_interval(m, 'specificity')} |")
    return "\n".join(lines)


def summary(report: dict) -> str:
    """One line per set for the terminal."""
    lines = []
    for name, m in report["sets"].items():
        if "roc_auc" not in m:
            lines.append(f"{name}: {m['images']} images, {m['refused']} refused; "
                         f"{m.get('note', '')}")
            continue
        lines.append(f"{name}: n={m['images']} refused={m['refused']} "
                     f"auc={m['roc_auc']:.3f} acc={m['accuracy']:.3f} "
                     f"sens={m['sensitivity']:.3f} spec={m['specificity']:.3f}")
    return "\n".join(lines)

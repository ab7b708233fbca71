"""``pneumo evaluate``: a bundle measured on a labelled folder, with every plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from . import plots
from .calibration import sigmoid
from .data import DataError, discover, load_images
from .metrics import screening_metrics
from .predictor import Predictor

log = logging.getLogger(__name__)


def evaluate(data_dir: str | Path, out_dir: str | Path, bundle: str | Path | None = None,
             batch_size: int = 32, seed: int = 0) -> dict:
    """Metrics of the bundle on every labelled image under ``data_dir``; writes
    ``metrics.json`` and the plots into ``out_dir`` and returns the metrics."""
    predictor = Predictor.from_bundle(bundle)
    train, val = discover(data_dir, for_training=False)
    samples = train + val
    if len({s.label for s in samples}) < 2:
        raise DataError(f"evaluation needs both NORMAL and PNEUMONIA images under {data_dir}")
    samples, images = load_images(samples, predictor.image_size, use_cache=False,
                                  desc="decoding")
    y = np.array([s.label for s in samples])
    logits = []
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(images), batch_size), desc="predicting", unit="batch",
                      leave=False):
        logits.extend(p.logit for p in predictor.predict_batch(images[start:start + batch_size],
                                                               heatmaps=False))
    logits = np.array(logits)
    p = predictor.calibrate(logits)
    metrics = screening_metrics(y, p, predictor.threshold, seed=seed)
    metrics["model"] = {"name": predictor.name, "version": predictor.version,
                        "bundle": str(predictor.bundle_path)}
    metrics["data_dir"] = str(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots.all_evaluation_plots(y, p, metrics, out_dir, p_uncalibrated=sigmoid(logits))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out_dir / "predictions.csv", "w") as handle:
        handle.write("path,label,probability\n")
        for sample, probability in zip(samples, p):
            handle.write(f"{sample.path},{['NORMAL', 'PNEUMONIA'][sample.label]},{probability:.6f}\n")
    return metrics

"""Fit the inconclusive band of an already trained bundle on its own validation split.

``pneumo train`` fits the band itself; bundles trained before it existed lack
one. This rebuilds the bundle's validation split from what its card records
(data folder, seed, design, fraction), refuses to go on unless the split's
counts and the model's validation ROC AUC and accuracy match the card (so the
images are the very ones the threshold was chosen on), then fits the band with
the card's threshold and calibration, unchanged, and writes it into the card.
The network and every other file stay as they are; card.json is not among the
checksummed files.

    python scripts/band_from_validation.py models/pneumo-xception [--data DIR] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pneumo.bundle import CARD_FILE, read_card
from pneumo.calibration import choose_inconclusive_band
from pneumo.config import TrainConfig
from pneumo.data import load_images
from pneumo.metrics import screening_metrics
from pneumo.predictor import Predictor
from pneumo.train import prepare_split, _summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", default=None, help="the training folder, if it moved")
    parser.add_argument("--write", action="store_true", help="write the band into the card")
    args = parser.parse_args()
    bundle = Path(args.bundle)
    card = read_card(bundle)
    config = TrainConfig(**card["training"]["config"])
    if args.data:
        config.data_dir = args.data
    _, val, _ = prepare_split(config)
    recorded = card["training"]["data"]["validation"]
    if _summary(val) != recorded:
        print(f"the rebuilt validation split {_summary(val)} is not the card's {recorded}")
        return 1
    predictor = Predictor.from_bundle(bundle)
    val, images = load_images(val, predictor.image_size, use_cache=False, progress=False,
                              normalization=predictor.normalization)
    y = np.array([s.label for s in val])
    logits = np.concatenate([[r.logit for r in predictor.predict_batch(images[i:i + 32],
                                                                       heatmaps=False)]
                             for i in range(0, len(images), 32)])
    p = predictor.calibrate(logits)
    metrics = screening_metrics(y, p, predictor.threshold, n_resamples=10)
    for name in ("roc_auc", "accuracy"):
        if abs(metrics[name] - card["validation"][name]) > 2e-3:
            print(f"validation {name} {metrics[name]:.4f} differs from the card's "
                  f"{card['validation'][name]:.4f}: not the same split or model")
            return 1
    band = choose_inconclusive_band(y, p, predictor.threshold)
    print(json.dumps(band, indent=2))
    if band is None:
        print("no band: no region of clearly lower accuracy near the threshold")
        return 0
    if args.write:
        band["fitted_on"] = "validation split of the training run (scripts/band_from_validation.py)"
        card["inconclusive"] = band
        (bundle / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
        print(f"written to {bundle / CARD_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

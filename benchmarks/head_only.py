"""Does fine-tuning help on other populations? The head alone against the full run.

``pneumo train`` trains in two phases; the run folder keeps phase 1's head
weights (``head.weights.h5``). This rebuilds the model of phase 1 (ImageNet
backbone, frozen, with that head), and measures it and the finished bundle on
the same sets: every source's validation part (as training split it) and
labelled folders never trained on. ROC AUC only, with 95% bootstrap intervals:
the threshold and calibration were fitted for the finished model. A run stopped
during fine-tuning is measured at its last checkpoint (``last.weights.h5``).

    python benchmarks/head_only.py runs/v2 ../shared/data/shift-dev
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a pneumo train run folder")
    parser.add_argument("folders", nargs="*", help="labelled folders never trained on")
    args = parser.parse_args()

    import keras
    from sklearn.metrics import roc_auc_score

    from pneumo.config import TrainConfig
    from pneumo.data import discover, load_images, subgroups
    from pneumo.metrics import bootstrap_interval
    from pneumo.models import build_model, head_only, set_trainable_blocks, training_model
    from pneumo.train import prepare_split

    fields = json.loads((args.run / "config.json").read_text())
    config = TrainConfig(**{k: v for k, v in fields.items()
                            if k in TrainConfig.__dataclass_fields__})
    _, val, _ = prepare_split(config)
    sets = {}
    for sample in val:
        sets.setdefault(sample.source, []).append(sample)
    for folder in args.folders:
        train, more = discover(folder, for_training=False)
        sets[Path(folder).name] = train + more
    for name, samples in list(sets.items()):
        sets.update(subgroups(name, samples))

    frozen = build_model(config.image_size, config.backbone_weights, config.dropout)
    head_only(frozen).load_weights(args.run / "head.weights.h5")  # shares frozen's head layers
    if (args.run / "bundle" / "model.keras").is_file():
        finished = keras.saving.load_model(args.run / "bundle" / "model.keras", compile=False)
    else:  # a run stopped during fine-tuning: its last epoch's checkpoint of the trainer
        finished = build_model(config.image_size, config.backbone_weights, config.dropout)
        set_trainable_blocks(finished, config.fine_tune_blocks)
        training_model(finished, config.seed).load_weights(args.run / "last.weights.h5")
    everything = list({s.path: s for part in sets.values() for s in part}.values())
    kept, images = load_images(everything, config.image_size, normalization=config.normalization,
                               use_cache=False)
    index = {s.path: i for i, s in enumerate(kept)}
    logits = {name: model.predict(images, batch_size=32, verbose=0).reshape(-1)
              for name, model in (("head only", frozen), ("fine-tuned", finished))}
    print("| set | images | head only (frozen backbone) | top blocks fine-tuned |")
    print("|---|---|---|---|")
    for name, samples in sets.items():
        rows = [index[s.path] for s in samples if s.path in index]
        y = np.array([s.label for s in samples if s.path in index])
        cells = []
        for model_name in ("head only", "fine-tuned"):
            z = logits[model_name][rows]
            low, high = bootstrap_interval(y, z, roc_auc_score, 1000, 0)
            cells.append(f"{roc_auc_score(y, z):.3f} ({low:.3f}-{high:.3f})")
        print(f"| {name} | {len(rows)} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

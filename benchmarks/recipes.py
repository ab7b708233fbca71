"""Which input recipe generalises: frozen-backbone features compared across sets.

Fine-tuning a recipe on two CPU cores takes most of an hour, so the input
choices are first compared where they are cheap: the ImageNet Xception's pooled
features of every image, extracted once per (input size, intensity
normalisation), with a logistic-regression head on top. What it ranks is the
input side of the recipe (size, normalisation) and the training mix (which
sources, how they are weighted); fine-tuning is measured by ``pneumo train``
itself (docs/training.md).

Sets (none of them the held-back halves):
- the training collection, split by patient as ``pneumo train`` splits it
  (seed 1337); a class-balanced subset of its training part trains the head and
  a subset of its validation part measures in-distribution fit;
- ``shift-dev``: never trained on, measures the shift to other children;
- ``nih-dev``: adults from another hospital; when the mix includes it, its
  predictions come from 5-fold patient-grouped cross-validation, so no image is
  scored by a head that saw its patient.

    python benchmarks/recipes.py --data ../shared/data --weights \\
        ../shared/weights/xception_imagenet_notop.weights.h5 --out runs/recipes

Writes ``features-*.npz`` (cache) and ``recipes.md`` / ``recipes.json`` in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SIZES = (224, 299)
NORMALIZATIONS = ("none", "clahe", "equalize")


def _sets(data: Path, train_per_class: int, val_per_class: int):
    from pneumo.config import TrainConfig
    from pneumo.data import discover, limit_per_class
    from pneumo.train import prepare_split

    train, val, _ = prepare_split(TrainConfig(data_dir=str(data / "chest_xray" / "train")))
    shift, _ = discover(data / "shift-dev", for_training=False)
    nih, _ = discover(data / "external" / "nih-dev", for_training=False)
    return {"train": limit_per_class(train, train_per_class, 1337),
            "val": limit_per_class(val, val_per_class, 1337), "shift-dev": shift, "nih-dev": nih}


def _features(sets: dict, size: int, normalization: str, weights: str, out: Path) -> dict:
    """Pooled backbone features of every set, cached per (size, normalisation)."""
    cache = out / f"features-{size}-{normalization}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return {name: stored[name] for name in sets}
    import keras

    from pneumo.data import load_images
    from pneumo.models import build_model

    model = build_model(size, weights)
    pooled = keras.Model(model.input, model.get_layer("pool").output)
    result = {}
    started = time.monotonic()
    for name, samples in sets.items():
        kept, images = load_images(samples, size, normalization=normalization, use_cache=False,
                                   desc=f"{name} {size} {normalization}")
        if len(kept) != len(samples):
            raise SystemExit(f"{len(samples) - len(kept)} unreadable images in {name}")
        result[name] = pooled.predict(images, batch_size=32, verbose=0)
    print(f"features {size} {normalization}: {time.monotonic() - started:.0f} s", flush=True)
    np.savez(cache, **result)
    return result


def _weights(y: np.ndarray, source: np.ndarray, balance: str) -> np.ndarray:
    """Sample weights: every class (``class``) or every (source, class) cell (``source``)
    contributes equally to the loss."""
    keys = list(zip(source, y)) if balance == "source" else list(y)
    cells = {key: keys.count(key) for key in set(keys)}
    return np.array([len(keys) / (len(cells) * cells[key]) for key in keys])


def _head(x, y, w, smoothing: float = 0.0):
    """A logistic head. ``smoothing`` > 0 trains it on smoothed labels, y(1 - e) + e/2, as
    ``pneumo train --label-smoothing`` does: each image then counts as a positive with
    weight w * target and as a negative with weight w * (1 - target), which is exactly
    the cross-entropy against the soft target."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if smoothing > 0:
        target = y * (1 - smoothing) + smoothing / 2
        x, y, w = (np.concatenate([x, x]), np.concatenate([np.ones_like(y), np.zeros_like(y)]),
                   np.concatenate([w * target, w * (1 - target)]))
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
    head.fit(x, y, logisticregression__sample_weight=w)
    return head


def _auc(y, p, seed=0):
    from sklearn.metrics import roc_auc_score

    from pneumo.metrics import bootstrap_interval

    return [float(roc_auc_score(y, p)), *bootstrap_interval(y, p, roc_auc_score, 500, seed)]


def evaluate_mix(features: dict, labels: dict, nih_groups: np.ndarray, nih_views: np.ndarray,
                 mix: str, smoothing: float = 0.0) -> dict:
    """AUCs of one head recipe: ``mix`` is ``children`` (training collection only) or
    ``children+nih-<balance>`` (NIH folds added, balanced by class or by source and class);
    ``smoothing``: label smoothing of the head's targets."""
    from sklearn.model_selection import StratifiedGroupKFold

    x_train, y_train = features["train"], labels["train"]
    scores = {"val": [], "shift-dev": []}
    p_nih = np.zeros(len(labels["nih-dev"]))
    if mix == "children":
        head = _head(x_train, y_train, _weights(y_train, np.zeros(len(y_train)), "class"),
                     smoothing)
        for name in scores:
            scores[name].append(head.predict_proba(features[name])[:, 1])
        p_nih = head.predict_proba(features["nih-dev"])[:, 1]
    else:
        balance = mix.rsplit("-", 1)[1]
        folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=1337)
        y_nih = labels["nih-dev"]
        for fit_idx, held_idx in folds.split(features["nih-dev"], y_nih, nih_groups):
            x = np.concatenate([x_train, features["nih-dev"][fit_idx]])
            y = np.concatenate([y_train, y_nih[fit_idx]])
            source = np.array([0] * len(y_train) + [1] * len(fit_idx))
            head = _head(x, y, _weights(y, source, balance), smoothing)
            for name in scores:
                scores[name].append(head.predict_proba(features[name])[:, 1])
            p_nih[held_idx] = head.predict_proba(features["nih-dev"][held_idx])[:, 1]
    result = {name: _auc(labels[name], np.mean(ps, axis=0)) for name, ps in scores.items()}
    result["nih-dev"] = _auc(labels["nih-dev"], p_nih)
    for view in ("PA", "AP"):
        keep = nih_views == view
        result[f"nih-dev {view}"] = _auc(labels["nih-dev"][keep], p_nih[keep])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/recipes"))
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--val-per-class", type=int, default=250)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--normalizations", nargs="+", default=list(NORMALIZATIONS))
    parser.add_argument("--label-smoothing", type=float, nargs="+", default=[0.0],
                        help="label smoothing values of the head's targets to compare")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    sets = _sets(args.data, args.train_per_class, args.val_per_class)
    labels = {name: np.array([s.label for s in samples]) for name, samples in sets.items()}
    nih_groups = np.array([s.group for s in sets["nih-dev"]])
    nih_views = np.array([s.view for s in sets["nih-dev"]])
    print({name: len(samples) for name, samples in sets.items()}, flush=True)

    results = []
    for size in args.sizes:
        for normalization in args.normalizations:
            features = _features(sets, size, normalization, args.weights, args.out)
            for mix in ("children", "children+nih-class", "children+nih-source"):
                for smoothing in args.label_smoothing:
                    row = {"size": size, "normalization": normalization, "mix": mix,
                           "label_smoothing": smoothing,
                           **evaluate_mix(features, labels, nih_groups, nih_views, mix,
                                          smoothing)}
                    results.append(row)
                    print(json.dumps(row), flush=True)
            (args.out / "recipes.json").write_text(json.dumps(results, indent=1) + "\n")

    columns = ["val", "shift-dev", "nih-dev", "nih-dev PA", "nih-dev AP"]
    lines = ["| size | normalisation | head trained on | label smoothing | "
             + " | ".join(columns) + " |", "|---|---|---|---|" + "---|" * len(columns)]
    for row in results:
        cells = [f"{row[c][0]:.3f} ({row[c][1]:.3f}-{row[c][2]:.3f})" for c in columns]
        lines.append(f"| {row['size']} | {row['normalization']} | {row['mix']} | "
                     f"{row['label_smoothing']:g} | "
                     + " | ".join(cells) + " |")
    (args.out / "recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

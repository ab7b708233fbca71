"""Which depth of the backbone, and which pooling, generalise: frozen features compared.

The first shipped heads read the global average of Xception's last feature map
(block 14: 10 x 10 x 2048 at 299 pixels). Two things about that reading may
not travel to other hospitals: the average over the whole film also averages
what lies outside the lungs (burned-in markers, collimation edges, the arms),
and the last blocks' features are the most specific to ImageNet's objects.
This benchmark asks, on frozen features, whether other readings of the same
pass generalise better:

- other poolings of the last map: max, generalised mean (GeM, p = 3), the mean
  of each channel's top 10 positions, the average of the central 8 x 8 or
  6 x 6 positions only, average and max side by side;
- other depths: the average of each residual block's output, blocks 2 to 13
  (2-4 are the entry flow, 5-12 the middle flow, 13 the exit), and a few
  depths side by side.

The sets, the head (logistic regression on standardised features) and the
NIH 5-fold patient-grouped cross-validation are those of ``recipes.py``, at
its best input (299 pixels, no normalisation) and mix (children + NIH,
balanced by source and class), so the shipped reading's row must reproduce
that table's. None of it touches the held-back halves.

    python benchmarks/depth_and_pooling.py --data ../shared/data --weights \\
        ../shared/weights/xception_imagenet_notop.weights.h5 --out runs/depth

Writes ``maps-299.npz`` (cache: the last map in float16, every block's average
and max) and ``depth_and_pooling.md`` / ``.json`` in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from recipes import _sets, evaluate_mix

SIZE = 299
BLOCKS = range(2, 14)  # the residual blocks: 2-4 entry flow, 5-12 middle flow, 13 exit


def _maps(sets: dict, weights: str, out: Path) -> dict:
    """Per set: the last feature map (float16, ``<set>/last``) and the average and the max
    over positions of every residual block's output (``<set>/block<N>/average|max``), cached."""
    cache = out / f"maps-{SIZE}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return {key: stored[key] for key in stored.files}
    import keras

    from pneumo.data import load_images
    from pneumo.models import backbone_of, build_model

    model = build_model(SIZE, weights)
    backbone = backbone_of(model)
    # Keras numbers layer names per process, so blocks are found by order: the residual
    # additions are the outputs of blocks 2 to 13, in turn
    adds = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == len(BLOCKS), len(adds)
    outputs = [backbone.output]
    for add in adds:
        outputs += [keras.layers.GlobalAveragePooling2D()(add.output),
                    keras.layers.GlobalMaxPooling2D()(add.output)]
    inner = keras.Model(backbone.input, outputs)
    x = model.get_layer("scale")(model.input)
    reader = keras.Model(model.input, inner(model.get_layer("to_rgb")([x, x, x])))
    keys = ["last"] + [f"block{b}/{how}" for b in BLOCKS for how in ("average", "max")]
    result = {}
    started = time.monotonic()
    for name, samples in sets.items():
        kept, images = load_images(samples, SIZE, use_cache=True, desc=f"{name} {SIZE}")
        if len(kept) != len(samples):
            raise SystemExit(f"{len(samples) - len(kept)} unreadable images in {name}")
        parts = {key: [] for key in keys}
        for start in range(0, len(images), 32):
            for key, output in zip(keys, reader.predict(images[start:start + 32], verbose=0)):
                parts[key].append(output.astype(np.float16) if key == "last" else output)
        result.update({f"{name}/{key}": np.concatenate(part) for key, part in parts.items()})
        print(f"{name}: {len(images)} images, {time.monotonic() - started:.0f} s", flush=True)
    np.savez(cache, **result)
    return result


def _pool(last: np.ndarray, how: str) -> np.ndarray:
    """One reading of the last map (N, H, W, C) as (N, C) or (N, 2C)."""
    x = last.astype(np.float32)
    n, h, w, c = x.shape
    if how == "average":
        return x.mean(axis=(1, 2))
    if how == "max":
        return x.max(axis=(1, 2))
    if how == "gem3":  # the map is a ReLU's output, so never negative
        return np.cbrt((x ** 3).mean(axis=(1, 2)))
    if how == "top10":
        flat = np.sort(x.reshape(n, h * w, c), axis=1)
        return flat[:, -10:].mean(axis=1)
    if how.startswith("centre"):
        side = int(how.removeprefix("centre"))
        top, left = (h - side) // 2, (w - side) // 2
        return x[:, top:top + side, left:left + side].mean(axis=(1, 2))
    if how == "average+max":
        return np.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=1)
    raise ValueError(how)


READINGS = {
    # how the last map (block 14) is pooled
    "block 14, average (shipped)": ("average", ()),
    "block 14, max": ("max", ()),
    "block 14, GeM, p = 3": ("gem3", ()),
    "block 14, top-10 mean": ("top10", ()),
    "block 14, centre 8 x 8 average": ("centre8", ()),
    "block 14, centre 6 x 6 average": ("centre6", ()),
    "block 14, average + max": ("average+max", ()),
    # which depth: one block's output, averaged
    **{f"block {b}, average": (None, (f"block{b}/average",)) for b in BLOCKS},
    # depths side by side
    "block 14 + 13 + 12, averages": ("average", ("block13/average", "block12/average")),
    "block 14 + 13 + 12 + 4, averages": ("average", ("block13/average", "block12/average",
                                                     "block4/average")),
    "block 12, average + max": (None, ("block12/average", "block12/max")),
    "block 8 + 12, averages": (None, ("block8/average", "block12/average")),
}


def _features(maps: dict, names: list[str], reading: str) -> dict:
    pooling, blocks = READINGS[reading]
    features = {}
    for name in names:
        parts = [_pool(maps[f"{name}/last"], pooling)] if pooling else []
        parts += [maps[f"{name}/{key}"] for key in blocks]
        features[name] = np.concatenate(parts, axis=1)
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/depth"))
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--val-per-class", type=int, default=250)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    sets = _sets(args.data, args.train_per_class, args.val_per_class)
    labels = {name: np.array([s.label for s in samples]) for name, samples in sets.items()}
    nih_groups = np.array([s.group for s in sets["nih-dev"]])
    nih_views = np.array([s.view for s in sets["nih-dev"]])
    print({name: len(samples) for name, samples in sets.items()}, flush=True)
    maps = _maps(sets, args.weights, args.out)

    results = []
    for reading in READINGS:
        started = time.monotonic()
        row = {"reading": reading,
               **evaluate_mix(_features(maps, list(sets), reading), labels, nih_groups,
                              nih_views, "children+nih-source"),
               "seconds": round(time.monotonic() - started, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "depth_and_pooling.json").write_text(json.dumps(results, indent=1) + "\n")

    columns = ["val", "shift-dev", "nih-dev", "nih-dev PA", "nih-dev AP"]
    lines = ["| features | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in results:
        cells = [f"{row[c][0]:.3f} ({row[c][1]:.3f}-{row[c][2]:.3f})" for c in columns]
        lines.append(f"| {row['reading']} | " + " | ".join(cells) + " |")
    (args.out / "depth_and_pooling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""``pneumo refit-gate``: fit a bundle's input gate again; the network is untouched.

The gate (``gate.py``) describes the X-rays a model was trained on. Two cases
call for fitting it again without retraining: a better gate design for an
existing model (the shipped bundle's gate was refitted this way, see
docs/reliability.md), and a site whose own X-rays (adults, another detector)
the gate warns about or refuses too often. The images are split exactly as
``pneumo train`` splits them, with the card's seed, validation fraction and
design: from the model's own training folder this gives back training's split,
so the cut-offs are still percentiles on X-rays the PCA never saw. The new
bundle is a checked copy with the new ``gate.npz`` and card entry.
"""

from __future__ import annotations

import datetime
import logging
import tempfile
from pathlib import Path

import numpy as np

from .bundle import check_destination, rebundle
from .config import TrainConfig, default_bundle_path
from .data import load_images
from .gate import GATE_FILE, N_COMPONENTS, REJECT_PERCENTILE, WARN_PERCENTILE, fit_gate
from .predictor import Predictor
from .train import prepare_split

log = logging.getLogger(__name__)


def pooled_features(predictor: Predictor, images: np.ndarray, batch_size: int = 32,
                    desc: str = "features") -> np.ndarray:
    """``(N, C)`` globally pooled backbone features of prepared inputs, the gate's input."""
    from tqdm.auto import tqdm

    parts = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch",
                      disable=None, leave=False):
        features, _ = predictor.engine(np.ascontiguousarray(images[start:start + batch_size]))
        parts.append(features.mean(axis=(1, 2)))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def split_config(card: dict, data_dir: str | Path,
                 extra_sources: list[str | Path] = ()) -> TrainConfig:
    """The card's training configuration (seed, validation fraction and design) for
    ``data_dir`` and ``extra_sources``; defaults where the card has none."""
    fields = dict(card.get("training", {}).get("config", {}))
    known = {k: v for k, v in fields.items() if k in TrainConfig.__dataclass_fields__
             and k not in ("data_dir", "extra_sources", "calibrate_on")}
    return TrainConfig(data_dir=str(data_dir), extra_sources=[str(f) for f in extra_sources],
                       **known)


def refit_gate(data_dirs: list[str | Path] | str | Path, out: str | Path,
               model: str | Path | None = None, *,
               n_components: int = N_COMPONENTS, reject_percentile: float = REJECT_PERCENTILE,
               warn_percentile: float = WARN_PERCENTILE) -> dict:
    """Write a copy of the bundle ``model`` to ``out`` with its input gate fitted on the
    X-rays under ``data_dirs`` (each a source whose validation part must stay within
    the percentiles); returns the card's new ``input_gate`` entry."""
    if isinstance(data_dirs, (str, Path)):
        data_dirs = [data_dirs]
    if not 0 < warn_percentile <= reject_percentile < 100:
        raise ValueError("percentiles must satisfy 0 < warn <= reject < 100")
    source = Path(model) if model else default_bundle_path()
    check_destination(Path(out))
    predictor = Predictor.from_bundle(source)
    config = split_config(predictor.card, data_dirs[0], data_dirs[1:])
    train, val, _ = prepare_split(config)
    log.info("gate split: %d images to describe, %d to set the cut-offs", len(train), len(val))
    train, x_train = load_images(train, predictor.image_size, use_cache=False,
                                 normalization=predictor.normalization, desc="decoding (gate fit)")
    val, x_val = load_images(val, predictor.image_size, use_cache=False,
                             normalization=predictor.normalization,
                             desc="decoding (gate cut-offs)")
    f_train = pooled_features(predictor, x_train, desc="features (gate fit)")
    f_val = pooled_features(predictor, x_val, desc="features (gate cut-offs)")
    with tempfile.TemporaryDirectory(prefix="pneumo-gate-") as scratch:
        gate_file = Path(scratch) / GATE_FILE
        entry = fit_gate(f_train, f_val, gate_file, n_components=n_components,
                         reject_percentile=reject_percentile, warn_percentile=warn_percentile,
                         val_sources=np.array([s.source for s in val]))
        entry["fitted"] = {"date": datetime.date.today().isoformat(),
                           "by": "pneumo refit-gate", "engine": predictor.engine.name}
        card = {**predictor.card, "input_gate": entry}
        rebundle(source, out, card, extras={GATE_FILE: gate_file})
    return entry


def summary(entry: dict) -> str:
    """The new gate in a few lines, for the terminal."""
    return (f"input gate: {entry['n_components']} components; warn above "
            f"{entry['warn_above']:.3f} ({entry['warn_percentile']:g}th validation percentile), "
            f"refuse above {entry['reject_above']:.3f} ({entry['reject_percentile']:g}th)\n"
            f"X-rays it would refuse: {entry['false_rejection_validation']:.2%} of "
            f"{entry['images']['validation']} validation, {entry['false_rejection_train']:.2%} "
            f"of {entry['images']['train']} fit images")

"""Training: data -> patient-grouped split -> two-phase transfer learning ->
calibration and operating point on validation -> a run folder and a bundle.

Phase 1 trains the head on cached features of the frozen backbone (one forward
pass over the data instead of one per epoch, which is what makes the default
run fit in 90 minutes on two CPU cores). Phase 2 fine-tunes the top Xception
blocks at a low learning rate, with augmentation, BatchNorm in inference mode,
a backup every epoch (an interrupted run resumes) and early stopping that
restores the best epoch by the validation loss, weighted like the training loss so
that every source counts.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from . import __version__, plots
from .bundle import save_bundle
from .calibration import calibrate, choose_inconclusive_band, choose_threshold, \
    expected_calibration_error, fit_calibration, log_loss, sigmoid
from .config import CLASS_NAMES, LEARNING_CURVES, RUN_PLOTS, TrainConfig
from .data import DataError, discover, limit_per_class, load_images, make_dataset, \
    merge_duplicates, source_name, split_by_block, split_by_patient, subgroups
from .gate import GATE_FILE, fit_gate
from .metrics import screening_metrics
from .models import (N_BLOCKS, build_model, head_only, resolve_backbone_weights,
                     set_trainable_blocks, training_model)
from .preprocessing import PREPROCESSING_DESCRIPTION, PREPROCESSING_VERSION

log = logging.getLogger(__name__)


def sample_weights(samples, balance: str) -> np.ndarray:
    """Loss weights that make every class (``"class"``) or every (source, class) cell
    (``"source"``) count equally, however many images each holds. With one source both
    are the balanced class weights (NORMAL 1.94, PNEUMONIA 0.67 on the collection)."""
    if balance not in ("source", "class"):
        raise ValueError(f"unknown balance {balance!r}: expected 'source' or 'class'")
    keys = [(s.source, s.label) if balance == "source" else s.label for s in samples]
    counts = Counter(keys)
    return np.array([len(keys) / (len(counts) * counts[key]) for key in keys], dtype=np.float32)


def _split_source(data_dir: str, config: TrainConfig):
    """One training folder split as ``pneumo train`` splits it: duplicates merged, a
    trustworthy val/ kept, else by patient or block, seeded."""
    train, val = discover(data_dir, for_training=True)
    val_paths = {s.path for s in val}
    everything, n_duplicates = merge_duplicates(train + val)
    val = [s for s in everything if s.path in val_paths]
    val_groups = {s.group for s in val}
    # A patient (or a duplicate) also present in the layout's own val/ stays there.
    train = [s for s in everything if s.path not in val_paths and s.group not in val_groups]
    train = limit_per_class(train, config.limit_per_class, config.seed)
    if not val:
        splitter = split_by_block if config.validation_design == "block" else split_by_patient
        train_idx, val_idx = splitter(train, config.val_fraction, config.seed)
        train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
    for name, part in (("training", train), ("validation", val)):
        if len({s.label for s in part}) < 2:
            raise DataError(f"the {name} split of {data_dir} lacks one class; add images or "
                            "change --val-fraction")
    shared = {s.group for s in train} & {s.group for s in val}
    if shared:
        raise DataError(f"{len(shared)} patients on both sides of the split")  # a bug, never data
    return train, val, n_duplicates


def prepare_split(config: TrainConfig):
    """``(train, val, n_duplicates)`` over every training source, each split on its own so
    that each has a patient-grouped validation part (the first source's split is the one
    a single-folder run makes)."""
    names = [source_name(d) for d in config.sources]
    if len(set(names)) < len(names):
        raise DataError(f"two training folders share the name {Counter(names).most_common(1)[0][0]!r}:"
                        " each source needs a name of its own")
    train, val, n_duplicates = [], [], 0
    for data_dir in config.sources:
        part_train, part_val, n = _split_source(data_dir, config)
        train, val, n_duplicates = train + part_train, val + part_val, n_duplicates + n
    return train, val, n_duplicates


def _summary(samples) -> dict:
    labels = np.array([s.label for s in samples])
    return {"images": int(len(samples)),
            **{c.lower(): int((labels == i).sum()) for i, c in enumerate(CLASS_NAMES)},
            "patients": len({s.group for s in samples})}


def _history_rows(history, phase: str) -> list[dict]:
    keys = list(history.history)
    n = len(history.history[keys[0]]) if keys else 0
    rows = []
    for epoch in range(n):
        row = {"phase": phase}
        for key in keys:
            name = key.replace("binary_accuracy", "accuracy")
            row[name] = float(history.history[key][epoch])
        rows.append(row)
    return rows


def _write_history(rows: list[dict], path: Path) -> None:
    columns = ["epoch", "phase", "loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc",
               "learning_rate"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for epoch, row in enumerate(rows, start=1):
            writer.writerow({"epoch": epoch, **row})


def _compile(model, learning_rate: float, label_smoothing: float = 0.0) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True,
                                                       label_smoothing=label_smoothing),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0),
                           keras.metrics.AUC(from_logits=True, name="auc")])


def fold_standardisation(kernel: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                         scale: np.ndarray) -> list[np.ndarray]:
    """A dense layer's weights on ``(x - mean) / scale`` rewritten to act on ``x`` itself,
    so that the saved network (and its class activation map) needs no scaling layer."""
    folded = kernel / scale[:, None]
    return [folded.astype(kernel.dtype), (bias - mean @ folded).astype(bias.dtype)]


def _train_head(model, run_dir: Path, data: dict, config: TrainConfig) -> list[dict]:
    """Phase 1: the head on pooled features of the frozen backbone, extracted once.

    Kept in the run folder, so a resumed run skips it."""
    import keras

    head_weights, head_history = run_dir / "head.weights.h5", run_dir / "history_head.json"
    head = head_only(model)  # shares its layers with ``model``
    if head_weights.exists() and head_history.exists():
        log.info("resuming: phase 1 already done in %s", run_dir)
        head.load_weights(head_weights)
        return json.loads(head_history.read_text())
    log.info("phase 1: extracting frozen-backbone features")
    pooled = keras.Model(model.input, model.get_layer("pool").output)
    verbose = "auto" if sys.stderr.isatty() else 0
    f_train = pooled.predict(data["x_train"], batch_size=config.batch_size, verbose=verbose)
    f_val = pooled.predict(data["x_val"], batch_size=config.batch_size, verbose=verbose)
    # The head learns on standardised features: the channels of a middle block's residual
    # sums differ in scale by orders of magnitude, and unscaled they cost the head 0.015
    # of shift-dev AUC (docs/training.md). The scaling is then folded into its weights.
    mean, scale = f_train.mean(axis=0), f_train.std(axis=0) + 1e-6
    _compile(head, config.head_learning_rate, config.label_smoothing)
    history = head.fit(
        (f_train - mean) / scale, data["y_train"].astype("float32"),
        sample_weight=data["w_train"],
        validation_data=((f_val - mean) / scale, data["y_val"].astype("float32"), data["w_val"]),
        epochs=config.head_epochs, batch_size=config.batch_size, verbose=2,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                                 restore_best_weights=True)])
    logit = model.get_layer("logit")
    logit.set_weights(fold_standardisation(*logit.get_weights(), mean, scale))
    rows = _history_rows(history, "head")
    head.save_weights(head_weights)
    head_history.write_text(json.dumps(rows))
    return rows


def _fine_tune(model, run_dir: Path, data: dict, config: TrainConfig) -> list[dict]:
    """Phase 2: the top blocks with augmentation, resumable, best epoch by the weighted
    validation loss (the pooled AUC would be the largest source's alone)."""
    import keras

    if config.fine_tune_blocks <= 0 or config.fine_tune_epochs <= 0:
        return []
    n_trainable = set_trainable_blocks(model, config.fine_tune_blocks)
    log.info("phase 2: fine-tuning the top %d blocks (%d backbone weights)",
             config.fine_tune_blocks, n_trainable)
    trainer = training_model(model, config.seed) if config.augment else model
    _compile(trainer, config.fine_tune_learning_rate, config.label_smoothing)
    history = trainer.fit(
        make_dataset(data["x_train"], data["y_train"], batch_size=config.batch_size,
                     shuffle=True, seed=config.seed, sample_weights=data["w_train"]),
        validation_data=make_dataset(data["x_val"], data["y_val"], batch_size=config.batch_size,
                                     shuffle=False, seed=config.seed,
                                     sample_weights=data["w_val"]),
        epochs=config.fine_tune_epochs, verbose=2, shuffle=False,
        callbacks=[
            keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
            keras.callbacks.ModelCheckpoint(str(run_dir / "last.weights.h5"),
                                            save_weights_only=True),
            keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=config.patience,
                                          restore_best_weights=True),
        ])
    return _history_rows(history, "fine-tune")


def _equal_set_weights(set_names: np.ndarray) -> np.ndarray:
    """Weights under which every set counts as much as any other, whatever its size."""
    counts = Counter(set_names.tolist())
    return np.array([len(set_names) / (len(counts) * counts[name]) for name in set_names])


def _calibrate(val_logits: np.ndarray, val: list, extra: dict[str, tuple[np.ndarray, list]],
               run_dir: Path, config: TrainConfig) -> dict:
    """Calibration and operating point, fitted on every source's validation part and the
    ``--calibrate-on`` sets, each set counting equally; then the metrics of the pooled
    validation (with its plots), of each validation part and calibration set, and of
    their subgroups by view and age where a manifest gives them."""
    samples = [*val, *(s for _, part in extra.values() for s in part)]
    logits = np.concatenate([val_logits, *(lg for lg, _ in extra.values())])
    y = np.array([s.label for s in samples])
    sets = np.array([s.source for s in val] + [name for name, (_, part) in extra.items()
                                                for _ in part])
    y_val = y[:len(val)]
    weights = _equal_set_weights(sets) if len(set(sets.tolist())) > 1 else None
    temperature, bias = fit_calibration(logits, y, weights)
    p_all, p_all_raw = calibrate(logits, temperature, bias), sigmoid(logits)
    threshold, method = choose_threshold(y, p_all, config.target_sensitivity, weights)
    p_raw, p = p_all_raw[:len(val)], p_all[:len(val)]
    metrics = screening_metrics(y_val, p, threshold, seed=config.seed)
    metrics.update(threshold_method=method, ece_uncalibrated=expected_calibration_error(y_val, p_raw),
                   loss_uncalibrated=log_loss(y_val, p_raw), temperature=temperature,
                   calibration_bias=bias,
                   calibrated_on={name: int(n) for name, n in Counter(sets.tolist()).items()})
    # None when the sets show no region of clearly lower accuracy near the threshold
    metrics["inconclusive"] = choose_inconclusive_band(y, p_all, threshold)
    rows = {}  # row name -> indices into samples: each set, then its subgroups
    for name in dict.fromkeys(sets.tolist()):
        rows[name] = [i for i, s in enumerate(sets) if s == name]
        position = {id(samples[i]): i for i in rows[name]}
        for group, part in subgroups(name, [samples[i] for i in rows[name]]).items():
            rows[group] = [position[id(s)] for s in part]
    metrics["by_set"] = {
        name: {**screening_metrics(y[members], p_all[members], threshold, seed=config.seed),
               "ece_uncalibrated": expected_calibration_error(y[members], p_all_raw[members]),
               "loss_uncalibrated": log_loss(y[members], p_all_raw[members])}
        for name, members in rows.items()}
    # what calibration was fitted to: every set counting equally (subgroups excluded)
    whole = [metrics["by_set"][name] for name in dict.fromkeys(sets.tolist())]
    metrics["calibration_check"] = {
        "measured_on": "the mean over the calibration sets, each counting equally",
        "ece_before": float(np.mean([m["ece_uncalibrated"] for m in whole])),
        "ece_after": float(np.mean([m["ece"] for m in whole]))}
    plots.all_evaluation_plots(y_val, p, metrics, run_dir, p_uncalibrated=p_raw)
    return metrics


def _calibration_sets(config: TrainConfig, logits_of) -> dict[str, tuple[np.ndarray, list]]:
    """``{name: (logits, samples)}`` of every ``--calibrate-on`` folder."""
    result = {}
    for folder in config.calibrate_on:
        name = source_name(folder)
        if name in result or folder in config.sources:
            raise DataError(f"{folder}: a calibration set must be new and not a training source")
        train, val = discover(folder, for_training=False)
        samples, images = load_images(train + val, config.image_size,
                                      normalization=config.normalization,
                                      desc=f"decoding {name}")
        result[name] = (logits_of(images), samples)
    return result


def _data_summary(config: TrainConfig, train, val, n_duplicates: int) -> dict:
    by_source = {}
    for folder in config.sources:
        name = source_name(folder)
        by_source[name] = {"folder": str(folder),
                           "train": _summary([s for s in train if s.source == name]),
                           "validation": _summary([s for s in val if s.source == name])}
    return {"sources": by_source, "train": _summary(train), "validation": _summary(val),
            "byte_identical_duplicates": n_duplicates,
            "split": f"{config.validation_design}-grouped, stratified, seed {config.seed}, "
                     "each source on its own",
            "balance": config.balance}


def _model_card(config: TrainConfig, command: str, run_name: str, metrics: dict, gate: dict,
                data_summary: dict, timings: dict) -> dict:
    metrics = dict(metrics)
    validation_by_set = metrics.pop("by_set")
    how = (f"its top {config.fine_tune_blocks} blocks fine-tuned" if config.fine_tune_blocks
           else "frozen, with a head trained on its features")
    depth = ("" if config.feature_block == N_BLOCKS
             else f" up to block {config.feature_block} of {N_BLOCKS}")
    return {
        "name": "pneumo-xception",
        "version": f"{__version__}+{run_name}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "description": f"Xception (ImageNet){depth}, {how}, telling NORMAL from PNEUMONIA on frontal "
                       "chest X-rays (" + ", ".join(data_summary["sources"]) + ").",
        "class_names": list(CLASS_NAMES),
        "positive_class": CLASS_NAMES[1],
        "input": {"size": config.image_size, "channels": 1, "dtype": "uint8",
                  "value_range": [0, 255], "preprocessing": PREPROCESSING_DESCRIPTION,
                  "preprocessing_version": PREPROCESSING_VERSION,
                  "normalization": config.normalization},
        "head": f"global average pooling of block {config.feature_block}'s output -> dropout -> "
                "dense(1) logit; heatmap = class activation map",
        "threshold": metrics["threshold"],
        "threshold_method": metrics["threshold_method"],
        "calibration": {"method": "temperature scaling with bias (Platt): "
                                  "p = sigmoid(logit / temperature + bias)",
                        "temperature": metrics["temperature"], "bias": metrics["calibration_bias"],
                        "ece_before": metrics["calibration_check"]["ece_before"],
                        "ece_after": metrics["calibration_check"]["ece_after"],
                        "ece_measured_on": metrics["calibration_check"]["measured_on"],
                        "fitted_on": metrics["calibrated_on"]},
        "training": {
            "command": command,
            "config": config.to_dict(),
            "data": data_summary,
            "augmentation": ("rotation +-10 deg, shift +-6%, zoom +-10%, brightness +-10%, "
                             "contrast +-15%; no flips (anatomy is not mirror-symmetric)")
            if config.augment else "none",
            "timings": timings,
        },
        "validation": metrics,
        "validation_by_set": validation_by_set,
        "input_gate": gate,
        **({"inconclusive": metrics["inconclusive"]} if metrics.get("inconclusive") else {}),
    }


#: What phase 1 depends on: a run folder resumed with another value of one of these
#: would mix two recipes (or fail to load the head's weights), so it is refused.
RECIPE_FIELDS = ("data_dir", "extra_sources", "image_size", "normalization", "feature_block",
                 "seed", "validation_design", "val_fraction", "balance", "dropout",
                 "label_smoothing", "limit_per_class")


def _recipe(config: dict) -> dict:
    """The fields of ``RECIPE_FIELDS`` in ``config``, folders resolved however spelled."""
    recipe = {field: config[field] for field in RECIPE_FIELDS if field in config}
    for field in ("data_dir", "extra_sources"):
        if field in recipe:
            folders = recipe[field] if isinstance(recipe[field], list) else [recipe[field]]
            recipe[field] = [str(Path(folder).resolve()) for folder in folders]
    return recipe


def _check_resumable(run_dir: Path, config: TrainConfig) -> None:
    """Refuse to resume ``run_dir`` with a recipe other than the one it was started with."""
    if not (run_dir / "head.weights.h5").exists():
        return  # nothing trained yet: the run starts afresh
    try:
        started = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return  # no readable record to compare with
    started.setdefault("feature_block", N_BLOCKS)  # runs from before the option ended there
    before, now = _recipe(started), _recipe(config.to_dict())
    changed = [field for field in before if before[field] != now[field]]
    if changed:
        was = ", ".join(f"{field} = {started[field]!r}" for field in changed)
        raise ValueError(f"run folder {run_dir} was started with {was}: resume it with the "
                         "same options, or give another --run-name")


def run_training(config: TrainConfig, command: str = "") -> Path:
    """Train, calibrate, evaluate on validation and write the run folder. Returns it."""
    import keras

    started = time.monotonic()
    resolve_backbone_weights(config.backbone_weights)  # fail before any slow work
    keras.utils.set_random_seed(config.seed)
    train, val, n_duplicates = prepare_split(config)  # before any folder is made
    run_name = config.run_name or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.out_dir) / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_resumable(run_dir, config)
    (run_dir / "config.json").write_text(json.dumps({**config.to_dict(), "command": command},
                                                    indent=2) + "\n")
    log.info("split by %s: %d training images (%d patients), %d validation (%d patients)",
             config.validation_design, len(train), len({s.group for s in train}), len(val),
             len({s.group for s in val}))
    train, x_train = load_images(train, config.image_size, normalization=config.normalization,
                                 desc="decoding training images")
    val, x_val = load_images(val, config.image_size, normalization=config.normalization,
                             desc="decoding validation images")
    data = {"x_train": x_train, "y_train": np.array([s.label for s in train]),
            "w_train": sample_weights(train, config.balance),
            "x_val": x_val, "y_val": np.array([s.label for s in val]),
            "w_val": sample_weights(val, config.balance)}
    model = build_model(config.image_size, config.backbone_weights, config.dropout,
                        config.feature_block)

    timings = {}
    t0 = time.monotonic()
    rows = _train_head(model, run_dir, data, config)
    timings["phase1_seconds"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    rows += _fine_tune(model, run_dir, data, config)
    timings["phase2_seconds"] = round(time.monotonic() - t0, 1)
    _write_history(rows, run_dir / "history.csv")
    plots.learning_curves(rows, run_dir / LEARNING_CURVES)

    # One pass of the final model over both splits: logits to calibrate, features for the gate.
    t0 = time.monotonic()
    pooled_and_logit = keras.Model(model.input, [model.get_layer("pool").output, model.output])
    f_val, logits = pooled_and_logit.predict(x_val, batch_size=config.batch_size, verbose=0)
    f_train, _ = pooled_and_logit.predict(x_train, batch_size=config.batch_size, verbose=0)
    gate = fit_gate(f_train, f_val, run_dir / GATE_FILE,
                    val_sources=np.array([s.source for s in val]))
    extra = _calibration_sets(config, lambda images: model.predict(
        images, batch_size=config.batch_size, verbose=0).reshape(-1))
    metrics = _calibrate(logits.reshape(-1), val, extra, run_dir, config)
    timings["calibration_and_gate_seconds"] = round(time.monotonic() - t0, 1)
    timings["total_seconds"] = round(time.monotonic() - started, 1)
    metrics["timings"] = timings
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    card = _model_card(config, command, run_name, metrics, gate,
                       _data_summary(config, train, val, n_duplicates), timings)
    extras = {f"plots/{name}": run_dir / name for name in RUN_PLOTS}
    extras[GATE_FILE] = run_dir / GATE_FILE
    save_bundle(run_dir / "bundle", model, card, extras)
    log.info("run written to %s (%.0f s)", run_dir, timings["total_seconds"])
    return run_dir

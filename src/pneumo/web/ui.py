"""The pages: the screening page and "About this model" (the model card).

Both render what the loaded bundle's card says; nothing clinical is typed here.
The page talks to the JSON API from ``static/app.js``.
"""

from __future__ import annotations

import datetime as dt
import math

from flask import Blueprint, abort, current_app, render_template, send_file

from .. import config
from .errors import human_size
from .inference import get_holder

bp = Blueprint("ui", __name__)

#: Plots a bundle may carry in ``plots/``, in page order, with their captions.
PLOTS = (
    (config.ROC, "ROC curve",
     ("Sensitivity against 1 - specificity over all thresholds, on validation; the marked "
      "point is the operating threshold.")),
    (config.CONFUSION, "Confusion matrix",
     "Validation images by true and predicted class at the operating threshold."),
    (config.PRECISION_RECALL, "Precision-recall curve",
     "Positive predictive value against sensitivity, on validation."),
    (config.RELIABILITY, "Calibration",
     ("Predicted probability against the observed share of pneumonia, before and after "
      "calibration; the diagonal is perfect calibration.")),
    (config.LEARNING_CURVES, "Learning curves",
     ("Accuracy and loss per epoch, training against validation; the dashed line marks "
      "the start of fine-tuning.")),
)

#: Validation metrics shown on the About page: key, name, meaning, shown as a percentage.
METRICS = (
    ("roc_auc", "ROC AUC", "Chance that a pneumonia image scores above a normal one.", False),
    ("average_precision", "Average precision", "Area under the precision-recall curve.", False),
    ("sensitivity", "Sensitivity", "Share of pneumonia images flagged.", True),
    ("specificity", "Specificity", "Share of normal images cleared.", True),
    ("ppv", "Positive predictive value",
     "Share of flagged images that had pneumonia (depends on prevalence).", True),
    ("npv", "Negative predictive value",
     "Share of cleared images that were normal (depends on prevalence).", True),
    ("accuracy", "Accuracy", "Share of all images classified correctly.", True),
    ("f1", "F1 score", "Harmonic mean of sensitivity and PPV.", False),
    ("loss", "Log loss", "Cross-entropy of the calibrated probabilities (lower is better).",
     False),
    ("ece", "Expected calibration error",
     "Mean gap between predicted and observed probability (lower is better).", False),
)


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


bp.add_app_template_filter(human_size, "size")


@bp.app_template_filter("pct")
def pct(value, digits: int = 1) -> str:
    """0.9342 -> '93.4%'; missing or undefined values -> an en dash."""
    value = _number(value)
    return "\u2013" if value is None else f"{value * 100:.{digits}f}%"


@bp.app_template_filter("num")
def num(value, digits: int = 3) -> str:
    value = _number(value)
    return "\u2013" if value is None else f"{value:.{digits}f}"


@bp.app_template_filter("when")
def when(value) -> str:
    """An ISO timestamp as '26 Nov 2025, 14:00 UTC'; anything else unchanged."""
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    return moment.strftime("%d %b %Y, %H:%M") + (" UTC" if moment.tzinfo else "")


def method_label(method) -> str | None:
    """How the card's threshold was chosen, in words."""
    if not method:
        return None
    method = str(method)
    if method == "youden_j":
        return "Youden's J, the best sum of sensitivity and specificity"
    if method.startswith("sensitivity>="):
        target = _number(method.split(">=", 1)[1])
        if target is not None:
            return f"the highest threshold reaching {target * 100:g}% sensitivity"
    return method


def _interval(metrics: dict, key: str):
    interval = metrics.get(f"{key}_ci95")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        low, high = (_number(v) for v in interval)
        if low is not None and high is not None:
            return low, high
    return None


def operating_point(card: dict) -> dict:
    """Threshold and validation sensitivity/specificity at it, as the card states them."""
    validation = card.get("validation") or {}
    return {
        "threshold": card["threshold"],
        "method": method_label(card.get("threshold_method")
                               or validation.get("threshold_method")),
        "sensitivity": _number(validation.get("sensitivity")),
        "sensitivity_ci": _interval(validation, "sensitivity"),
        "specificity": _number(validation.get("specificity")),
        "specificity_ci": _interval(validation, "specificity"),
        "n": validation.get("n"),
        "band": inconclusive_band(card),
    }


def inconclusive_band(card: dict) -> dict | None:
    """The card's inconclusive band and what was measured inside and outside it, for
    readers deciding how much a result there is worth; None when the card has none."""
    band = card.get("inconclusive")
    if not isinstance(band, dict) or _number(band.get("lower")) is None \
            or _number(band.get("upper")) is None:
        return None
    return {"lower": _number(band["lower"]), "upper": _number(band["upper"]),
            "n": band.get("n"), "n_inside": band.get("n_inside"),
            "accuracy_inside": _number(band.get("accuracy_inside")),
            "accuracy_outside": _number(band.get("accuracy_outside"))}


def population_rows(card: dict) -> tuple[list[dict], str | None]:
    """Figures per population (each training source's validation part, each calibration
    or development set, each view and age group), and how they were measured: from
    ``pneumo evaluate`` through the input gate when the card carries its report, else
    from training's own pass over the sets."""
    measured = card.get("development_sets")
    if measured:
        sets, how = measured.get("sets") or {}, f"by {measured.get('by') or 'pneumo evaluate'}"
    else:
        sets, how = card.get("validation_by_set") or {}, "at training, on every image"
    rows = []
    for name, m in sets.items():
        rows.append({"name": name, "images": m.get("images", m.get("n")),
                     "refused": m.get("refused"), "refused_rate": _number(m.get("refused_rate")),
                     "auc": _number(m.get("roc_auc")), "auc_ci": _interval(m, "roc_auc"),
                     "sensitivity": _number(m.get("sensitivity")),
                     "sensitivity_ci": _interval(m, "sensitivity"),
                     "specificity": _number(m.get("specificity")),
                     "specificity_ci": _interval(m, "specificity"),
                     "subgroup": ", " in name})
    return rows, how if rows else None


def card_view(card: dict, plots: list) -> dict:
    """What the About page shows, extracted from the card with every part optional."""
    validation = card.get("validation") or {}
    metrics = [{"name": name, "help": help_text, "percent": percent,
                "value": _number(validation.get(key)), "ci": _interval(validation, key)}
               for key, name, help_text, percent in METRICS if key in validation]
    training = card.get("training") or {}
    data = training.get("data") or {}
    limitations = card.get("limitations") or []
    if isinstance(limitations, str):
        limitations = [limitations]
    populations, measured_by = population_rows(card)
    fitted_on = (card.get("calibration") or {}).get("fitted_on") or {}
    return {
        "name": card.get("name", "pneumo model"),
        "version": card.get("version", "unknown"),
        "created": card.get("created"),
        "description": card.get("description"),
        "intended_use": card.get("intended_use"),
        "limitations": limitations,
        "operating_point": operating_point(card),
        "metrics": metrics,
        "n": validation.get("n"),
        "n_normal": validation.get("n_normal"),
        "n_pneumonia": validation.get("n_pneumonia"),
        "confusion": validation.get("confusion_matrix"),
        "calibration": card.get("calibration") or {},
        "data": {"train": data.get("train"), "validation": data.get("validation"),
                 "sources": data.get("sources") or {},
                 "split": data.get("split"),
                 "duplicates": data.get("byte_identical_duplicates")},
        "populations": populations,
        "populations_measured_by": measured_by,
        "calibrated_on": ", ".join(f"{name} ({n:,} images)" for name, n in fitted_on.items())
        if len(fitted_on) > 1 else None,
        "augmentation": training.get("augmentation"),
        "class_weights": training.get("class_weights"),
        "input": card.get("input") or {},
        "head": card.get("head"),
        "libraries": card.get("libraries") or {},
        "class_names": card.get("class_names") or [],
        "plots": plots,
    }


def available_plots() -> list[dict]:
    folder = get_holder().bundle_path / "plots"
    return [{"file": name, "title": title, "caption": caption}
            for name, title, caption in PLOTS if (folder / name).is_file()]


@bp.app_context_processor
def model_context() -> dict:
    """``model`` (name and version) for every page's footer, once loaded."""
    predictor = get_holder().predictor
    return {"model": {"name": predictor.name, "version": predictor.version} if predictor else None}


@bp.get("/")
def index():
    """The screening page: upload, preview, result and heatmap."""
    holder = get_holder()
    predictor = holder.predictor
    context = {"ready": predictor is not None, "failed": bool(holder.error),
               "max_bytes": current_app.config["MAX_CONTENT_LENGTH"]}
    if predictor is not None:
        context["op"] = operating_point(predictor.card)
    return render_template("index.html", **context), 200 if predictor is not None else 503


@bp.get("/about")
def about():
    """The model card as a page."""
    holder = get_holder()
    if holder.predictor is None:
        abort(503)
    return render_template("about.html", card=card_view(holder.predictor.card,
                                                        available_plots()))


@bp.get("/about/plots/<name>")
def plot(name: str):
    """One of the bundle's validation plots (allow-listed names only)."""
    if name not in {entry[0] for entry in PLOTS}:
        abort(404)
    path = get_holder().bundle_path / "plots" / name
    if not path.is_file():
        abort(404)
    return send_file(path, mimetype="image/png", max_age=3600)

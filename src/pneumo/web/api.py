"""The JSON API, version 1: predict one file or a batch, health, the model card.

The label, probability and threshold always come from the ``Predictor`` (the
bundle's card); this module only moves them into JSON. The contract is
written down in ``openapi.py`` and checked against real responses by the tests.

Every prediction goes through the screening flow (``pneumo.screening``): the
image checks run before the network, so a photograph or a blank costs no
inference; the feature distance comes with the forward pass. A rejected input is answered
422 ``not_a_chest_xray`` with the reasons and no label; a doubtful one keeps
its prediction and carries the reasons in ``input_check``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import time

import numpy as np
from flask import Blueprint, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from PIL import Image

from ..explain import heatmap_png
from ..gate import Assessment
from ..imaging import DecodedImage, ImageError
from ..screening import DISCLAIMER, Admitted, Refusal, admit, conclude
from ..studies import input_png
from . import auth, history, openapi
from .errors import (BAD_REQUEST, ERRORS, MODEL_UNAVAILABLE, NOT_A_CHEST_XRAY,
                     TIME_BUDGET, TOO_MANY_FILES, ApiError, error_body)
from .inference import get_holder, get_predictor, unavailable_message
from .uploads import clean_name, read_upload, uploaded_files

bp = Blueprint("api", __name__, url_prefix="/api/v1")



class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, minus what is not JSON: NaN and infinities (a metric undefined on
    one class) become null, numpy scalars become numbers, and keys keep their order."""

    sort_keys = False

    def dumps(self, obj, **kwargs) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(_finite(obj), **kwargs)


def _finite(value):
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _flag(name: str, default: bool) -> bool:
    """A boolean query parameter; ApiError 400 for anything but true/false/1/0/yes/no."""
    raw = request.args.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise BAD_REQUEST(f"query parameter '{name}' must be true or false, not {raw[:20]!r}")


def _admit(predictor, data: bytes, at_least: int | None = None) -> Admitted:
    """``screening.admit``; a refusal raised as the error this file is answered with."""
    admitted = admit(predictor, data, at_least)
    if isinstance(admitted, Refusal):
        raise _error(admitted)
    return admitted


def _error(refusal: Refusal) -> ApiError:
    """The status and code a refusal is answered with: the decoder's own for a file it
    cannot read, 422 ``not_a_chest_xray`` with the reasons and no label for the gate's.
    Any other error reading the upload is the server's, raised again (500)."""
    if isinstance(refusal.error, ImageError):
        return ERRORS[refusal.error.code](str(refusal.error))
    if refusal.error is not None:
        raise refusal.error
    assessment = refusal.assessment
    return NOT_A_CHEST_XRAY(f"{NOT_A_CHEST_XRAY.message}: " + "; ".join(assessment.reasons),
                            extra={"input_check": assessment.to_dict()})


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    """``(width, height)`` scaled down so the long side is at most ``side``."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _gray_png(pixels: np.ndarray, size: tuple[int, int]) -> bytes:
    image = Image.fromarray(pixels, mode="L")
    if image.size != size:
        image = image.resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def model_info(predictor) -> dict:
    return {"name": predictor.name, "version": predictor.version}


def _fields(prediction, decoded: DecodedImage, assessment: Assessment, *,
            with_image: bool) -> dict:
    """The JSON for one prediction, heatmap sized to the image's aspect ratio."""
    width, height = decoded.size
    body = {
        **prediction.to_dict(),
        "input_check": assessment.to_dict(),
        "input": {"format": decoded.format, "width": int(width), "height": int(height),
                  "metadata": decoded.metadata},
        "heatmap": None,
        "heatmap_shows": None,
        "disclaimer": DISCLAIMER,
    }
    if prediction.heatmap is not None:
        size = _fit(width, height, current_app.config["PNEUMO_HEATMAP_SIDE"])
        body["heatmap"] = _data_url(heatmap_png(prediction.heatmap, size))
        body["heatmap_shows"] = f"evidence for {prediction.label}"
    if with_image:
        size = _fit(width, height, current_app.config["PNEUMO_IMAGE_SIDE"])
        body["image"] = _data_url(_gray_png(decoded.pixels, size))
    return body


def _study_pngs(inputs: list[np.ndarray], wanted: bool):
    """``(pngs, meanwhile)``: ``meanwhile()`` fills ``pngs`` with the studies' PNGs of
    ``inputs``, for this thread to run while the network does; ``(pngs, None)`` when
    these predictions will not be kept."""
    pngs: list[bytes] = []
    if not history.will_keep(wanted):
        return pngs, None
    return pngs, lambda: pngs.extend(input_png(model_input) for model_input in inputs)


def _infer(predictor, batch: np.ndarray, heatmaps: bool, meanwhile=None):
    return get_holder().predict(batch, heatmaps, meanwhile=meanwhile,
                                timeout=float(current_app.config["PNEUMO_INFERENCE_TIMEOUT"]))


@bp.post("/predict")
def predict():
    """One X-ray (multipart field ``file``) -> label, probability, threshold, heatmap."""
    heatmaps, with_image = _flag("heatmap", True), _flag("image", False)
    wanted = _flag("keep", True)
    predictor = get_predictor()
    files = uploaded_files()
    if len(files) > 1:
        raise BAD_REQUEST(f"{len(files)} files were sent; send one, or use /api/v1/predict/batch")
    upload = read_upload(files[0])
    admitted = _admit(predictor, upload.data,
                      current_app.config["PNEUMO_IMAGE_SIDE"] if with_image else None)
    pngs, meanwhile = _study_pngs([admitted.model_input], wanted)
    prediction = _infer(predictor, admitted.model_input[None], heatmaps, meanwhile)[0]
    screened = conclude(predictor, admitted.checks, prediction)
    if isinstance(screened, Refusal):
        raise _error(screened)
    study_id, not_kept = history.keep(prediction, admitted.model_input, screened.assessment,
                                      predictor, wanted, image_png=pngs[0] if pngs else None)
    return jsonify({"filename": upload.name,
                    **_fields(prediction, admitted.decoded, screened.assessment,
                              with_image=with_image),
                    "model": model_info(predictor), "study_id": study_id,
                    **({"study_error": not_kept} if not_kept else {})})


@bp.post("/predict/batch")
def predict_batch():
    """Several X-rays (repeated field ``file``) -> one result or error entry per file;
    each prediction is kept as a study, as a single one would be."""
    heatmaps, wanted = _flag("heatmap", True), _flag("keep", True)
    predictor = get_predictor()
    files = uploaded_files()
    limit = int(current_app.config["PNEUMO_MAX_BATCH_FILES"])
    if len(files) > limit:
        raise TOO_MANY_FILES(f"{len(files)} files were sent; at most {limit} per batch")
    budget = float(current_app.config["PNEUMO_BATCH_TIME_BUDGET"])
    started = time.monotonic()
    entries: list[dict] = []
    accepted: list[tuple[int, Admitted]] = []
    for index, storage in enumerate(files):
        entry = {"index": index, "filename": clean_name(storage.filename) or None, "ok": False}
        entries.append(entry)
        if index and time.monotonic() - started > budget:
            _fail(entry, TIME_BUDGET(f"not decoded: this batch used up its {budget:g} s for "
                                     "decoding before reaching this file; send it again"))
            continue
        try:
            admitted = _admit(predictor, read_upload(storage).data)
        except ApiError as exc:
            _fail(entry, exc)
            continue
        # Keep what the answer needs, not the full-size pixels: sixteen large images held
        # at once would cost sixteen times the memory of one.
        admitted.decoded = dataclasses.replace(admitted.decoded,
                                               pixels=admitted.model_input[:, :, 0])
        accepted.append((index, admitted))
    succeeded = 0
    if accepted:
        inputs = [admitted.model_input for _, admitted in accepted]
        pngs, meanwhile = _study_pngs(inputs, wanted)
        predictions = _infer(predictor, np.stack(inputs), heatmaps, meanwhile)
        for number, ((index, admitted), prediction) in enumerate(zip(accepted, predictions)):
            screened = conclude(predictor, admitted.checks, prediction)
            if isinstance(screened, Refusal):
                _fail(entries[index], _error(screened))
                continue
            succeeded += 1
            study_id, not_kept = history.keep(prediction, admitted.model_input,
                                              screened.assessment, predictor, wanted,
                                              image_png=pngs[number] if pngs else None)
            entries[index].update(ok=True, status=200,
                                  **_fields(prediction, admitted.decoded, screened.assessment,
                                            with_image=False),
                                  study_id=study_id,
                                  **({"study_error": not_kept} if not_kept else {}))
    return jsonify({"model": model_info(predictor), "count": len(entries),
                    "succeeded": succeeded, "results": entries})


def _fail(entry: dict, error: ApiError) -> None:
    """Turn a batch entry into the error this file alone would have been given."""
    entry.update(status=error.status, **error.body())


@bp.get("/health")
def health():
    """200 once the model is loaded; 503 while it loads or if it failed."""
    holder = get_holder()
    if holder.predictor is None:
        status = "failed" if holder.error else "loading"
        response = jsonify({"status": status,
                            **error_body(MODEL_UNAVAILABLE.code, unavailable_message(holder))})
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response
    return jsonify({"status": "ready", "model": model_info(holder.predictor)})


#: What anyone may read of the model card: what the model is, what it expects, how it
#: decides and how well it did. How it was trained (folders, commands) and which library
#: versions and files this server runs need the token (or the local user).
PUBLIC_CARD_FIELDS = ("name", "version", "created", "description", "class_names",
                      "positive_class", "input", "threshold", "threshold_method", "calibration",
                      "validation", "validation_by_set", "development_sets", "inconclusive",
                      "input_gate", "intended_use", "limitations")


@bp.get("/model")
def model_card():
    """The model card of the loaded bundle: its public part, or all of it with the token."""
    card = get_predictor().card
    if not auth.authenticated():
        card = {key: card[key] for key in PUBLIC_CARD_FIELDS if key in card}
    return jsonify(card)


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3.1 description of this API (relative server URL: never the Host
    header a client sent)."""
    return jsonify(openapi.spec(
        max_batch_files=int(current_app.config["PNEUMO_MAX_BATCH_FILES"])))

"""Kept studies: the history and study pages, feedback, reports (PDF and FHIR) and their
API routes.

The history holds results about patients, so every route here needs the API
token, unless the app was started for one local user (``auth.py``). Studies
are kept by default when someone can read them: with a token, or for the
local user (``PNEUMO_KEEP_STUDIES``: None decides so, True/False force it);
only predictions that could read the history are kept. An app told to keep
studies that nobody could read refuses to start.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import sqlite3
import threading

from flask import (Blueprint, Flask, current_app, jsonify, redirect, render_template,
                   request, url_for)

from ..config import CLASS_NAMES
from ..studies import PAGE_SIZE, VERDICTS, StudyNotFound, StudyStore, default_data_dir
from . import auth
from .errors import BAD_REQUEST, HISTORY_OFF, NOT_FOUND

bp = Blueprint("history", __name__)
log = logging.getLogger(__name__)


@bp.before_request
def _authenticate():
    """History, studies, feedback and reports need the token when one is configured."""
    return auth.require()

_EXTENSION = "pneumo.studies"
_FAILURES = "pneumo.studies.failures"


def init_app(app: Flask) -> None:
    """Open (creating or migrating) the database when studies are kept."""
    keep = app.config.get("PNEUMO_KEEP_STUDIES")
    readable = bool(app.config.get("PNEUMO_LOCAL_USER")) or bool(app.extensions.get("pneumo.auth"))
    if keep is None:
        keep = readable
    if keep and not readable:
        raise RuntimeError("keeping studies needs an API token: set PNEUMO_API_TOKEN (see "
                           "`pneumo token`), or serve on loopback for one local user, or set "
                           "PNEUMO_KEEP_STUDIES=0")
    store = None
    if keep:
        store = StudyStore(app.config.get("PNEUMO_DATA_DIR") or default_data_dir())
    app.extensions[_EXTENSION] = store
    app.extensions[_FAILURES] = _WriteFailures()
    app.register_blueprint(bp)

    @app.context_processor
    def history_enabled():
        return {"history_enabled": store is not None}


def get_store() -> StudyStore | None:
    return current_app.extensions.get(_EXTENSION)


def will_keep(wanted: bool = True) -> bool:
    """Whether this request's prediction becomes a study: studies on, the client did not
    say ``?keep=false``, and it may write the history (a client without the token may
    screen, but not write it)."""
    return get_store() is not None and wanted and auth.authenticated()


#: What a prediction says when its study could not be written.
NOT_KEPT = ("this result was not kept in the history: the database could not be written "
            "(the disk may be full); it is shown here only")


class _WriteFailures:
    """Logs a failing database once, when writes start failing, and once when they work
    again: a full disk would otherwise log every prediction until someone frees space."""

    def __init__(self):
        self.failing = False
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            first, self.failing = not self.failing, True
        if first:
            log.error("studies are not being kept: writing to the database failed (%s: %s); "
                      "predictions are answered without being kept until a write succeeds",
                      type(exc).__name__, exc)

    def succeeded(self) -> None:
        with self._lock:
            was, self.failing = self.failing, False
        if was:
            log.info("studies are being kept again: a database write succeeded")


def keep(prediction, model_input, assessment, predictor, wanted: bool = True,
         image_png: bytes | None = None) -> tuple[str | None, str | None]:
    """Keep a prediction as a study if ``will_keep(wanted)``: ``(study id, None)``, or
    ``(None, None)`` when it is not to be kept, or ``(None, NOT_KEPT)`` when writing it
    failed. The prediction is answered in every case: it is already made.
    ``image_png``: ``studies.input_png(model_input)``, if already encoded."""
    if not will_keep(wanted):
        return None, None
    failures: _WriteFailures = current_app.extensions[_FAILURES]
    try:
        study_id = get_store().add(prediction, model_input, input_status=assessment.status,
                                   model_name=predictor.name, model_version=predictor.version,
                                   image_png=image_png)
    except (sqlite3.Error, OSError) as exc:
        failures.failed(exc)
        return None, NOT_KEPT
    failures.succeeded()
    return study_id, None


#: The highest page number accepted: nine digits.
MAX_PAGE = 999_999_999


def _store_or_404() -> StudyStore:
    store = get_store()
    if store is None:
        raise HISTORY_OFF()
    return store


def _date(query: dict, name: str) -> dt.date | None:
    value = query.get(name)
    if value is None:
        return None
    value = value.strip()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BAD_REQUEST(f"{name} must be a date as YYYY-MM-DD") from None


_FORM_FIELDS = ("since", "until", "label")


def _form_query() -> dict:
    """The history page's search form, read as the API reads its query: the form sends
    empty fields for 'any', and a label typed in any case."""
    query = {name: value for name, value in request.args.items()
             if name not in _FORM_FIELDS or value.strip()}
    if "label" in query:
        query["label"] = query["label"].strip().upper()
    return query


def _search(query) -> dict:
    store = _store_or_404()
    label = query.get("label")
    if label is not None and label not in CLASS_NAMES:
        raise BAD_REQUEST("label must be NORMAL or PNEUMONIA")
    raw_page = query.get("page", "1").strip()
    if not re.fullmatch(r"[0-9]{1,9}", raw_page) or not 1 <= int(raw_page) <= MAX_PAGE:
        raise BAD_REQUEST("page must be a whole number from 1")
    page = int(raw_page)
    since, until = _date(query, "since"), _date(query, "until")
    studies, total = store.search(since=since, until=until, label=label, page=page)
    return {"studies": studies, "total": total, "page": page,
            "pages": max(1, math.ceil(total / PAGE_SIZE)),
            "query": {"since": since.isoformat() if since else "",
                      "until": until.isoformat() if until else "", "label": label or ""}}


def _get(study_id: str):
    store = _store_or_404()
    try:
        return store.get(study_id)
    except StudyNotFound:
        raise NOT_FOUND("no study with this id") from None


# -- API -----------------------------------------------------------------------------------

@bp.get("/api/v1/studies")
def api_studies():
    """Kept studies, newest first: ?since=&until= (YYYY-MM-DD, UTC), ?label=, ?page=."""
    found = _search(request.args)
    return jsonify({**found, "studies": [s.to_dict() for s in found["studies"]]})


@bp.get("/api/v1/studies/<study_id>")
def api_study(study_id: str):
    """One study and its feedback."""
    return jsonify(_get(study_id).to_dict())


@bp.get("/api/v1/studies/<study_id>/fhir")
def api_study_fhir(study_id: str):
    """The study as a FHIR R4 DiagnosticReport with its Observation (``pneumo.fhir``)."""
    from .. import fhir

    return current_app.response_class(fhir.report_json(_get(study_id)),
                                      content_type=fhir.MEDIA_TYPE)


@bp.get("/api/v1/studies/<study_id>/thumbnail.png")
def api_thumbnail(study_id: str):
    """The study's thumbnail (PNG)."""
    store = _store_or_404()
    try:
        data = store.image(study_id)
    except StudyNotFound:
        raise NOT_FOUND("no study with this id") from None
    return current_app.response_class(data, mimetype="image/png")


@bp.route("/api/v1/studies/<study_id>/report.pdf", methods=["GET", "POST"])
def api_report(study_id: str):
    """The study's one-page PDF report; a POST's form field ``notes`` adds the reader's
    typed notes (never in the URL, which proxies and servers log)."""
    import io

    import numpy as np
    from PIL import Image

    from ..report import study_report_pdf
    from .inference import get_holder, get_predictor

    if "notes" in request.args:
        raise BAD_REQUEST("notes are not accepted in the URL, where proxy and server logs keep "
                          "them: POST them as the form field 'notes'")
    study = _get(study_id)
    notes = request.form.get("notes", "") if request.method == "POST" else ""
    if len(notes) > 2000:
        raise BAD_REQUEST("notes are longer than 2000 characters")
    with Image.open(io.BytesIO(get_store().image(study_id, "model_input"))) as image:
        gray = np.asarray(image.convert("L"))
    heatmap = None
    predictor = get_predictor()
    if (predictor.name, predictor.version) == (study.model_name, study.model_version) \
            and gray.shape == (predictor.image_size, predictor.image_size):
        # the heatmap is not stored: the same model on the same input gives it again
        result = get_holder().predict(gray[None, :, :, None], True, timeout=float(
            current_app.config["PNEUMO_INFERENCE_TIMEOUT"]))[0]
        heatmap = result.heatmap
    pdf = study_report_pdf(study, gray, heatmap, notes=notes)
    response = current_app.response_class(pdf, mimetype="application/pdf")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="pneumo-report-{study.id[:8]}.pdf"')
    return response


@bp.post("/api/v1/studies/<study_id>/feedback")
def api_feedback(study_id: str):
    """The reader's verdict: JSON ``{"verdict": "agree"|"NORMAL"|"PNEUMONIA", "comment"}``."""
    store = _store_or_404()
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("verdict"), str) \
            or not isinstance(body.get("comment", ""), str):
        raise BAD_REQUEST("send JSON with 'verdict' (agree, NORMAL or PNEUMONIA) and "
                          "optionally 'comment' (text)")
    try:
        study = store.set_feedback(study_id, body["verdict"], body.get("comment", ""))
    except StudyNotFound:
        raise NOT_FOUND("no study with this id") from None
    except ValueError as exc:
        raise BAD_REQUEST(str(exc)) from None
    return jsonify(study.to_dict())


# -- pages ---------------------------------------------------------------------------------

@bp.get("/history")
def history_page():
    """Kept studies, searchable by date and result, ``PAGE_SIZE`` a page."""
    return render_template("history.html", **_search(_form_query()), labels=CLASS_NAMES)


@bp.get("/studies/<study_id>")
def study_page(study_id: str):
    """One study with its feedback form."""
    return render_template("study.html", study=_get(study_id), labels=CLASS_NAMES,
                           saved=request.args.get("saved") == "1")


@bp.post("/studies/<study_id>/feedback")
def study_feedback(study_id: str):
    """The feedback form (cross-site posts are refused by security.py)."""
    store = _store_or_404()
    verdict = request.form.get("verdict", "")
    if verdict not in VERDICTS:
        raise BAD_REQUEST("choose agree, NORMAL or PNEUMONIA")
    try:
        store.set_feedback(study_id, verdict, request.form.get("comment", ""))
    except StudyNotFound:
        raise NOT_FOUND("no study with this id") from None
    except ValueError as exc:
        raise BAD_REQUEST(str(exc)) from None
    return redirect(url_for("history.study_page", study_id=study_id, saved=1), code=303)

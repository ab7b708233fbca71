"""Every error as JSON ``{"error": {"code", "message"}}`` under ``/api/`` and as a
plain-words page elsewhere; never a traceback, whatever the debug setting of a
library underneath.

``ERRORS`` is the one list of error codes: each with its status and what it
means. Code raises them as ``raise NOT_FOUND("no study with this id")``, the
handlers below render them, and ``openapi.py`` builds its closed list of codes
from the same registry, so a new code is one line here.
"""

from __future__ import annotations

import dataclasses
import logging

from flask import Flask, current_app, jsonify, make_response, render_template, request
from flask.globals import request_ctx
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ErrorCode:
    """One kind of error: its stable machine-readable ``code``, HTTP ``status``, and
    ``message``, what it means in plain words (the default message and the API docs)."""

    code: str
    status: int
    message: str

    def __call__(self, message: str | None = None, *, extra: dict | None = None,
                 headers: dict | None = None) -> ApiError:
        """The exception to raise: ``raise NOT_FOUND("no study with this id")``."""
        return ApiError(self, message or self.message, extra=extra, headers=headers)


#: Every error code the app sends, by code.
ERRORS: dict[str, ErrorCode] = {}


def _register(code: str, status: int, message: str) -> ErrorCode:
    ERRORS[code] = ErrorCode(code, status, message)
    return ERRORS[code]


BAD_REQUEST = _register("bad_request", 400, "the request was not understood: a bad query "
                                            "parameter, field or body")
MISSING_FILE = _register("missing_file", 400, "no file part, or a file part with no file name")
UNAUTHORIZED = _register("unauthorized", 401, "this needs the API token: send "
                                              "Authorization: Bearer <token>")
CROSS_ORIGIN = _register("cross_origin", 403, "cross-site requests are not accepted")
FORBIDDEN = _register("forbidden", 403, "this request is not allowed")
NOT_FOUND = _register("not_found", 404, "no such resource")
HISTORY_OFF = _register("history_off", 404, "this server does not keep studies")
METHOD_NOT_ALLOWED = _register("method_not_allowed", 405, "method not allowed here")
TOO_LARGE = _register("too_large", 413, "the upload is larger than the limit")
TOO_MANY_FILES = _register("too_many_files", 413, "too many files in one batch")
UNSUPPORTED_TYPE = _register("unsupported_type", 415, "not a PNG, JPEG or DICOM radiograph")
UNREADABLE_IMAGE = _register("unreadable_image", 422, "the image cannot be decoded")
NOT_A_CHEST_XRAY = _register("not_a_chest_xray", 422, "this does not look like a chest X-ray "
                                                      "the model can read")
TOO_MANY_ATTEMPTS = _register("too_many_attempts", 429, "too many wrong tokens from this "
                                                        "address")
INTERNAL_ERROR = _register("internal_error", 500, "internal server error; the problem has "
                                                  "been logged")
MODEL_UNAVAILABLE = _register("model_unavailable", 503, "the model is loading or failed to "
                                                        "load")
TIME_BUDGET = _register("time_budget", 503, "not decoded: the batch used up its decoding time")
TIMEOUT = _register("timeout", 504, "the model did not answer in time")
#: Any other status werkzeug raises; sent with that status (400 is only its placeholder).
HTTP_ERROR = _register("http_error", 400, "another HTTP error")

#: The code for an HTTP error Flask or werkzeug raises, by status (else ``http_error``).
HTTP_CODES = {spec.status: spec for spec in (
    BAD_REQUEST, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED, TOO_LARGE, UNSUPPORTED_TYPE,
    UNREADABLE_IMAGE, INTERNAL_ERROR, MODEL_UNAVAILABLE, TIMEOUT)}

#: What a person reading the page is told, by status.
PAGE_MESSAGES = {
    400: "The request was not understood.",
    403: "This request is not allowed.",
    404: "There is no page at this address.",
    405: "This page cannot be used that way.",
    413: "The upload is too large.",
    500: "Something went wrong on our side. The problem has been logged; please try again.",
    503: "The model is not ready yet. Please try again in a few seconds.",
}


class ApiError(Exception):
    """An error a client caused or should know about: one of ``ERRORS`` and its message.

    ``extra`` holds documented fields that go into the JSON body beside ``error``
    (e.g. ``input_check`` for an image that is not a chest X-ray); ``headers`` go on
    the response (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(self, kind: ErrorCode, message: str | None = None,
                 extra: dict | None = None, headers: dict | None = None):
        message = message or kind.message
        super().__init__(message)
        self.kind = kind
        self.status = kind.status
        self.code = kind.code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict:
        """The JSON body: ``{"error": {"code", "message"}}`` and the extra fields."""
        return {**error_body(self.code, self.message), **self.extra}


def human_size(n: int) -> str:
    """1048576 -> '1 MB', 65536 -> '64 kB'."""
    if n >= 2**20:
        return f"{n / 2**20:g} MB"
    return f"{n / 2**10:g} kB" if n >= 2**10 else f"{n} bytes"


def error_body(code: str, message: str) -> dict:
    if code not in ERRORS:
        raise KeyError(f"unregistered error code {code!r}: add it to errors.ERRORS")
    return {"error": {"code": code, "message": message}}


def wants_json() -> bool:
    """API clients get JSON; people get a page. Decided by path, for every error."""
    return request.path.startswith("/api/")


def _respond(status: int, code: str, message: str, headers=None, extra=None):
    if wants_json():
        response = jsonify({**error_body(code, message), **(extra or {})})
    elif request_ctx.url_adapter is None:  # an untrusted Host: no URL can be built for it
        response = make_response(f"{status}: {PAGE_MESSAGES.get(status, message)}\n")
        response.mimetype = "text/plain"
    else:
        response = make_response(render_template(
            "error.html", status=status, message=PAGE_MESSAGES.get(status, message)))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def handle_api_error(error: ApiError):
    headers = {"Retry-After": "5"} if error.status in (503, 504) else {}
    return _respond(error.status, error.code, error.message, {**headers, **error.headers},
                    error.extra)


def handle_http_exception(error: HTTPException):
    status = error.code or 500
    code = HTTP_CODES.get(status, HTTP_ERROR).code
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = (f"the upload is larger than the {human_size(limit)} limit" if limit
                   else "the upload is too large")
        if "form parts" in (error.description or "").lower():
            message = "the request has too many parts"
    elif status == 405:
        allowed = ", ".join(sorted(getattr(error, "valid_methods", None) or []))
        message = f"method {request.method} is not allowed here" + (
            f"; use {allowed}" if allowed else "")
    elif status == 404:
        message = f"no such resource: {request.path}"
    else:
        message = (error.description or error.name).rstrip(".")
    headers = {}
    if status == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    return _respond(status, code, message, headers)


def handle_unexpected(error: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _respond(500, INTERNAL_ERROR.code, INTERNAL_ERROR.message)


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)

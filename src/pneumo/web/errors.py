"""Every error as JSON ``{"error": {"code", "message"}}`` under ``/api/`` and as a
plain-words page elsewhere; never a traceback, whatever the debug setting of a
library underneath.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, make_response, render_template, request
from flask.globals import request_ctx
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

#: Stable machine-readable codes for the HTTP errors Flask and werkzeug raise.
HTTP_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_type",
    422: "unreadable_image",
    500: "internal_error",
    503: "model_unavailable",
    504: "timeout",
}

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
    """An error a client caused or should know about, with its status and code.

    ``extra`` holds documented fields that go into the JSON body beside ``error``
    (e.g. ``input_check`` for an image that is not a chest X-ray)."""

    def __init__(self, status: int, code: str, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}


def human_size(n: int) -> str:
    """1048576 -> '1 MB', 65536 -> '64 kB'."""
    if n >= 2**20:
        return f"{n / 2**20:g} MB"
    return f"{n / 2**10:g} kB" if n >= 2**10 else f"{n} bytes"


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _respond(status: int, code: str, message: str, headers=None, extra=None):
    if _wants_json():
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
    headers = {"Retry-After": "5"} if error.status in (503, 504) else None
    return _respond(error.status, error.code, error.message, headers, error.extra)


def handle_http_exception(error: HTTPException):
    status = error.code or 500
    code = HTTP_CODES.get(status, "http_error")
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
    return _respond(500, "internal_error", "internal server error; the problem has been logged")


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)

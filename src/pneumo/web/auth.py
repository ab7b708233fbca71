"""Authentication for the history, feedback and reports.

One secret, ``PNEUMO_API_TOKEN`` (at least 16 characters; there is no default,
and none is in the repository). When it is set, every history, study,
feedback and report route needs it: API clients send ``Authorization: Bearer
<token>``; people log in once on ``/login`` and get a session cookie
(HttpOnly, SameSite=Strict, signed with a key made at start-up, so a restart
logs everyone out). Comparisons are constant-time (``hmac.compare_digest``).
Forms, the login included, are also covered by the same-origin rule for posts
in ``security.py``.

A server listening beyond loopback that keeps studies refuses to start without
a token (``history.init_app``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, abort, current_app, jsonify, redirect, render_template,
                   request, session, url_for)

from .errors import error_body

bp = Blueprint("auth", __name__)

MIN_TOKEN_LENGTH = 16
_EXTENSION = "pneumo.auth"


def init_app(app: Flask) -> None:
    token = app.config.get("PNEUMO_API_TOKEN") or None
    if token is not None:
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
            raise RuntimeError(f"PNEUMO_API_TOKEN must be at least {MIN_TOKEN_LENGTH} "
                               "characters (e.g. python -c 'import secrets; "
                               "print(secrets.token_urlsafe(32))')")
        if not app.config.get("SECRET_KEY"):
            app.config["SECRET_KEY"] = secrets.token_bytes(32)  # per process, never stored
        app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                          SESSION_COOKIE_NAME="pneumo_session")
    app.extensions[_EXTENSION] = token
    app.register_blueprint(bp)

    @app.context_processor
    def auth_state():
        return {"auth_required": token is not None,
                "logged_in": token is not None and _session_ok(token)}


def required() -> bool:
    return current_app.extensions.get(_EXTENSION) is not None


def _fingerprint(token: str) -> str:
    """What the session holds: a digest of the token, so that changing the token
    ends every session, and the token itself never sits in a cookie."""
    return hashlib.sha256(b"pneumo-session:" + token.encode()).hexdigest()


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode())


def _session_ok(token: str) -> bool:
    held = session.get("auth")
    return isinstance(held, str) and hmac.compare_digest(held, _fingerprint(token))


def authenticated() -> bool:
    """True when no token is configured, or the request carries it (header or session)."""
    token = current_app.extensions.get(_EXTENSION)
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return _same(header[7:].strip(), token)
    return _session_ok(token)


def require(api: bool):
    """None when authenticated; otherwise the response that stops the request: 401 for
    the API, the login page for people. For ``before_request``."""
    if authenticated():
        return None
    if api:
        response = jsonify(error_body("unauthorized", "this needs the API token: send "
                                                      "Authorization: Bearer <token>"))
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="pneumo"'
        return response
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") \
            or urlsplit(target).netloc:
        return url_for("history.history_page")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The page login: the API token once, then a session cookie."""
    token = current_app.extensions.get(_EXTENSION)
    if token is None:
        abort(404, "this server needs no login")
    failed = False
    if request.method == "POST":
        if _same(request.form.get("token", ""), token):
            session.clear()
            session["auth"] = _fingerprint(token)
            return redirect(_safe_next(request.form.get("next")), code=303)
        failed = True
    page = render_template("login.html", failed=failed, next=request.values.get("next", ""))
    return page, (401 if failed else 200)


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("ui.index"), code=303)

"""Authentication for the history, feedback and reports.

One secret, ``PNEUMO_API_TOKEN``: a strong one (``check_token``; ``pneumo token``
makes one), no default, and none is in the repository. When it is set, every history, study,
feedback and report route needs it: API clients send ``Authorization: Bearer
<token>``; people log in once on ``/login`` and get a session cookie
(HttpOnly, SameSite=Strict, signed with a key made at start-up, so a restart
logs everyone out). The cookie names a session the server keeps in memory, so
logging out ends it even for a copy of the cookie. Comparisons are
constant-time (``hmac.compare_digest``). Forms, the login included, are also
covered by the same-origin rule for posts in ``security.py``.

Guessing is slowed down: after ``MAX_FAILURES`` wrong tokens from one client
address within ``FAILURE_WINDOW`` seconds, that address's tokens are not even
compared until its oldest failure has aged out (429 with ``Retry-After``). The
address is the one the server sees: behind a reverse proxy every client shares
the proxy's, unless the app knows it is there (``PNEUMO_BEHIND_PROXY``, which
takes the client's address from the proxy); the token's strength is the real
protection.

Without a token the history is closed, whatever server runs the app
(``waitress-serve``, ``flask run``, a reverse proxy in front): it opens only
when the app was explicitly started for one local user
(``PNEUMO_LOCAL_USER``, which ``pneumo serve`` sets on a loopback address),
and then only to requests from a loopback address that did not come through a
proxy (no ``Forwarded`` or ``X-Forwarded-For``): a proxy on the same machine
makes every client look local.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import threading
import time
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, current_app, g, redirect,
                   render_template, request, session, url_for)

from .errors import FORBIDDEN, NOT_FOUND, TOO_MANY_ATTEMPTS, UNAUTHORIZED, wants_json

bp = Blueprint("auth", __name__)

MIN_TOKEN_LENGTH = 32
#: Characters a token may hold: what ``secrets.token_urlsafe`` and base64 produce.
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")
#: Fewest distinct characters: 43 random URL-safe characters have about 30.
_MIN_DISTINCT = 12
#: Most logged-in sessions remembered at once (the oldest are logged out first).
MAX_SESSIONS = 10_000
_SESSIONS = "pneumo.auth.sessions"
#: Wrong tokens accepted from one client address per window before it must wait.
MAX_FAILURES = 10
FAILURE_WINDOW = 600.0  # seconds
_EXTENSION = "pneumo.auth"
_FAILURES = "pneumo.auth.failures"


class FailedAttempts:
    """Recent wrong tokens per client address. Thread-safe; remembers at most
    ``max_addresses`` addresses (the least recently seen are forgotten first)."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW,
                 clock=time.monotonic, max_addresses: int = 10_000):
        self.limit, self.window, self.clock = int(limit), float(window), clock
        self.max_addresses = int(max_addresses)
        self._times: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def wait(self, address: str) -> float:
        """Seconds before ``address`` may present a token again; 0 if it may now."""
        with self._lock:
            times = self._recent(address)
            return max(0.0, times[0] + self.window - self.clock()) \
                if len(times) >= self.limit else 0.0

    def failed(self, address: str) -> None:
        with self._lock:
            times = self._recent(address)
            times.append(self.clock())
            self._times[address] = times
            while len(self._times) > self.max_addresses:
                del self._times[next(iter(self._times))]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._times.pop(address, None)

    def _recent(self, address: str) -> collections.deque:
        """``address``'s failures within the window, moved to the most recent end."""
        times = self._times.pop(address, None) or collections.deque()
        oldest = self.clock() - self.window
        while times and times[0] <= oldest:
            times.popleft()
        if times:
            self._times[address] = times
        return times


def make_token() -> str:
    """A new strong token: 32 random bytes, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def check_token(token) -> str | None:
    """Why ``token`` is too weak to guard patients' results, or None if it is strong: at
    least 32 characters of letters, digits and ``._~+/=-`` (no spaces), and not a
    repetition of a few characters."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        return f"it must be at least {MIN_TOKEN_LENGTH} characters"
    if not _TOKEN_CHARS.fullmatch(token):
        return "it may hold only letters, digits and . _ ~ + / = - (no spaces)"
    if len(set(token)) < _MIN_DISTINCT:
        return "it repeats too few characters to be random"
    return None


class Sessions:
    """The logged-in sessions this process knows (ids, oldest first); thread-safe."""

    def __init__(self, limit: int = MAX_SESSIONS):
        self.limit = limit
        self._ids: dict[str, None] = {}
        self._lock = threading.Lock()

    def start(self) -> str:
        session_id = secrets.token_urlsafe(24)
        with self._lock:
            self._ids[session_id] = None
            while len(self._ids) > self.limit:
                del self._ids[next(iter(self._ids))]
        return session_id

    def active(self, session_id) -> bool:
        with self._lock:
            return isinstance(session_id, str) and session_id in self._ids

    def end(self, session_id) -> None:
        with self._lock:
            self._ids.pop(session_id, None)


def init_app(app: Flask) -> None:
    token = app.config.get("PNEUMO_API_TOKEN") or None
    if token is not None:
        weakness = check_token(token)
        if weakness:
            raise RuntimeError(f"PNEUMO_API_TOKEN is too weak: {weakness}; make one with "
                               "`pneumo token`")
        if not app.config.get("SECRET_KEY"):
            app.config["SECRET_KEY"] = secrets.token_bytes(32)  # per process, never stored
        app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                          SESSION_COOKIE_NAME="pneumo_session")
    app.extensions[_EXTENSION] = token
    app.extensions[_FAILURES] = FailedAttempts()
    app.extensions[_SESSIONS] = Sessions()
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
    return isinstance(held, str) and hmac.compare_digest(held, _fingerprint(token)) \
        and current_app.extensions[_SESSIONS].active(session.get("sid"))


#: Headers a proxy adds: a request carrying one came from somewhere else.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP")


def local_user_request() -> bool:
    """The app was started for one local user and this request comes straight from this
    machine: a loopback address, and no proxy header."""
    if not current_app.config.get("PNEUMO_LOCAL_USER"):
        return False
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address((request.remote_addr or "").strip("[]")).is_loopback
    except ValueError:
        return False


def authenticated() -> bool:
    """True when the request carries the token (header or session), or, with no token
    configured, when it is the local user's (``local_user_request``). A wrong bearer
    token counts as a failed attempt, once per request."""
    token = current_app.extensions.get(_EXTENSION)
    if token is None:
        return local_user_request()
    if "pneumo_authenticated" not in g:
        header = request.headers.get("Authorization", "")
        g.pneumo_authenticated = _presented(header[7:].strip(), token) \
            if header[:7].lower() == "bearer " else _session_ok(token)
    return g.pneumo_authenticated


def _address() -> str:
    return request.remote_addr or "unknown"


def _presented(given: str, token: str) -> bool:
    """Compare a token a client presented, unless its address has guessed too often."""
    attempts: FailedAttempts = current_app.extensions[_FAILURES]
    if attempts.wait(_address()) > 0:
        return False
    if _same(given, token):
        attempts.succeeded(_address())
        return True
    attempts.failed(_address())
    return False


def _throttled() -> int:
    """Whole seconds this client must wait before presenting a token again (0: none)."""
    return math.ceil(current_app.extensions[_FAILURES].wait(_address()))


def require():
    """None when authenticated; otherwise stops the request: 401 (or 429 while this
    address must wait) for the API, the login page for people; 403 for both when the
    history is closed. For ``before_request``."""
    if authenticated():
        return None
    if current_app.extensions.get(_EXTENSION) is None:
        raise FORBIDDEN("the history is closed: this server has no API token "
                        "(PNEUMO_API_TOKEN) and was not started for one local user")
    if not wants_json():
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    wait = _throttled()
    if wait:
        raise TOO_MANY_ATTEMPTS(f"too many wrong tokens from this address; try again in "
                                f"{wait} s", headers={"Retry-After": str(wait)})
    raise UNAUTHORIZED(headers={"WWW-Authenticate": 'Bearer realm="pneumo"'})


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
        raise NOT_FOUND("this server needs no login")
    failed, wait = False, 0
    if request.method == "POST":
        if _presented(request.form.get("token", ""), token):
            session.clear()
            session["auth"] = _fingerprint(token)
            session["sid"] = current_app.extensions[_SESSIONS].start()
            return redirect(_safe_next(request.form.get("next")), code=303)
        failed, wait = True, _throttled()
    page = render_template("login.html", failed=failed, wait_minutes=math.ceil(wait / 60),
                           next=request.values.get("next", ""))
    if wait:
        return page, 429, {"Retry-After": str(wait)}
    return page, (401 if failed else 200)


@bp.post("/logout")
def logout():
    """Ends the session on the server too: a copy of the cookie no longer logs anyone in."""
    current_app.extensions[_SESSIONS].end(session.get("sid"))
    session.clear()
    return redirect(url_for("ui.index"), code=303)

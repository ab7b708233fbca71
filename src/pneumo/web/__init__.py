"""The web page and JSON API, built by ``create_app`` (the Flask tutorial's factory).

The model is loaded once per application by ``inference.init_app`` and shared by
every request thread; nothing here imports TensorFlow at import time.

Configuration keys (defaults below; pass a mapping to ``create_app`` to change them):

``PNEUMO_MODEL``
    Model bundle folder (default: ``pneumo.config.default_bundle_path()``).
``PNEUMO_PREDICTOR``
    An already loaded ``Predictor`` to use instead of loading ``PNEUMO_MODEL``
    (tests, embedding).
``PNEUMO_MODEL_LOADING``
    ``"eager"``: load inside ``create_app`` and fail there on a broken bundle;
    ``"background"``: load in a thread, health answers 503 until it is ready.
``PNEUMO_INFERENCE_TIMEOUT``
    Seconds a request waits for the model before answering 504.
``PNEUMO_MAX_BATCH_FILES`` / ``PNEUMO_BATCH_TIME_BUDGET``
    Most files in one batch request, and the seconds its decoding may take: files not
    reached by then are answered 503 ``time_budget`` (each file's own memory is bounded
    by ``imaging.MAX_DECODED_BYTES`` and ``imaging.MAX_DECODER_BYTES``).
``PNEUMO_BATCH_MAX_IMAGES`` / ``PNEUMO_BATCH_WAIT_MS``
    Micro-batching (``inference.py``): concurrent predictions run together, at most
    this many images, the inference thread waiting at most this long for
    requests still being decoded.
``PNEUMO_API_TOKEN``
    The secret the history, feedback and reports need (``auth.py``): no default.
``PNEUMO_LOCAL_USER``
    False (the default): without the token, the history, feedback and reports are
    closed. True: the app was started for one person on this machine (``pneumo
    serve`` on loopback sets it), and requests straight from loopback, not through
    a proxy, may use them without the token.
``TRUSTED_HOSTS``
    Flask's Host allow-list: a request naming another host gets 400, so that a page
    on ``attacker.example`` whose name was rebound to this machine's address
    (DNS rebinding) cannot read the history or post feedback. None: any host, except
    for a local user's app, which defaults to ``LOCAL_HOSTS``. ``pneumo serve``
    sets it from the address it binds, or from ``$PNEUMO_TRUSTED_HOSTS``
    (comma-separated; ``.example.org`` allows its subdomains).
``PNEUMO_BEHIND_PROXY``
    True: the app is served by a reverse proxy that provides TLS, one hop in front
    (``pneumo serve --behind-proxy``). werkzeug's ``ProxyFix`` then takes the client
    address, scheme and host from that one proxy's ``X-Forwarded-*`` headers (an
    address a client wrote further left is ignored), and the session cookie is
    ``Secure``. Never set it without such a proxy: clients could forge them.
``PNEUMO_KEEP_STUDIES`` / ``PNEUMO_DATA_DIR``
    Keep each prediction as a study in SQLite (``history.py``, ``studies.py``) in
    the data folder (default ``$PNEUMO_DATA_DIR`` or ``~/.local/share/pneumo``).
    None: kept when someone can read them (a token is set, or ``PNEUMO_LOCAL_USER``).
``MAX_CONTENT_LENGTH`` / ``MAX_FORM_PARTS``
    Flask's own upload limits: larger bodies get 413.
"""

from __future__ import annotations

from flask import Flask

from ..config import default_bundle_path

#: Largest request body accepted (Flask answers 413 above it).
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: The names a browser on this machine uses for a loopback server. (werkzeug 3.1 cannot
#: match an IPv6 literal such as ``[::1]`` in TRUSTED_HOSTS: use ``localhost`` there.)
LOCAL_HOSTS = ("localhost", "127.0.0.1")


def create_app(config: dict | None = None) -> Flask:
    """Build the app; ``config`` overrides the defaults (e.g. ``{"TESTING": True}``)."""
    app = Flask(__name__)
    app.config.from_mapping(
        PNEUMO_MODEL=None,
        PNEUMO_PREDICTOR=None,
        PNEUMO_MODEL_LOADING="eager",
        PNEUMO_INFERENCE_TIMEOUT=60.0,
        PNEUMO_MAX_BATCH_FILES=16,
        PNEUMO_BATCH_TIME_BUDGET=20.0,
        PNEUMO_BATCH_MAX_IMAGES=8,
        PNEUMO_BATCH_WAIT_MS=5.0,
        PNEUMO_HEATMAP_SIDE=128,  # long side of the heatmap PNG (the map itself is 7x7)
        PNEUMO_IMAGE_SIDE=1024,  # long side of the decoded image sent back on request
        MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES,
        MAX_FORM_PARTS=64,
        PNEUMO_KEEP_STUDIES=None,
        PNEUMO_DATA_DIR=None,
        PNEUMO_LOCAL_USER=False,
        PNEUMO_BEHIND_PROXY=False,
        PNEUMO_API_TOKEN=None,
    )
    if config is not None:
        app.config.from_mapping(config)
    if app.config["PNEUMO_BEHIND_PROXY"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
        app.config["SESSION_COOKIE_SECURE"] = True
    if app.config.get("TRUSTED_HOSTS") is None and app.config["PNEUMO_LOCAL_USER"]:
        app.config["TRUSTED_HOSTS"] = list(LOCAL_HOSTS)
    if not app.config["PNEUMO_MODEL"]:
        app.config["PNEUMO_MODEL"] = str(default_bundle_path())
    # No SECRET_KEY unless a token is set (auth.py then makes one per process for the
    # login session). Debug stays as Flask decides it (off) unless DEBUG=True is passed.

    from . import api, auth, errors, history, inference, security, ui, uploads

    app.request_class = uploads.InMemoryRequest
    app.json = api.StrictJSONProvider(app)
    security.init_app(app)
    errors.init_app(app)
    app.register_blueprint(ui.bp)
    app.register_blueprint(api.bp)
    auth.init_app(app)
    history.init_app(app)
    inference.init_app(app)
    return app

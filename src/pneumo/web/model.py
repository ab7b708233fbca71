"""The model as an application resource, opened once and shared (like flaskr's ``db``).

``init_app`` loads the bundle when the app is created -- never per request and
never at import time. Network calls go through one inference thread per app,
so a request can stop waiting after ``PNEUMO_INFERENCE_TIMEOUT`` seconds
(answering 504) while the model finishes in the background, and TensorFlow is
only ever entered from that one thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import weakref
from pathlib import Path

from flask import Flask, current_app

from .errors import ApiError

log = logging.getLogger(__name__)

#: ``app.extensions`` key of the ``ModelHolder``.
EXTENSION = "pneumo.model"
#: ``app.extensions`` key of the loaded ``Predictor`` itself (None until ready).
PREDICTOR = "pneumo.predictor"


class ModelHolder:
    """The app's predictor, its loading state and its inference thread."""

    def __init__(self, app: Flask, bundle_path: str | Path):
        self.bundle_path = Path(bundle_path)
        self.predictor = None
        self.error: str | None = None
        self._app = weakref.ref(app)
        self._ready = threading.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="pneumo-inference")

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the model is loaded (or failed); True if it is ready."""
        self._ready.wait(timeout)
        return self.predictor is not None

    def set(self, predictor) -> None:
        self.predictor = predictor
        app = self._app()
        if app is not None:
            app.extensions[PREDICTOR] = predictor
        self._ready.set()

    def load(self, raise_errors: bool = True) -> None:
        """Load the bundle (once); a failure is kept for ``/api/v1/health``."""
        from ..bundle import BundleError
        from ..predictor import Predictor

        try:
            predictor = Predictor.from_bundle(self.bundle_path)
        except BundleError as exc:
            self.error = str(exc)
            log.error("model bundle could not be loaded: %s", exc)
            self._ready.set()
            if raise_errors:
                raise
            return
        log.info("model %s %s loaded from %s", predictor.name, predictor.version,
                 self.bundle_path)
        self.set(predictor)

    def run(self, function, *args, timeout: float):
        """``function(*args)`` on the inference thread; ApiError 504 after ``timeout`` s."""
        future = self._executor.submit(function, *args)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # dropped if still queued; a running call finishes unseen
            raise ApiError(504, "timeout", f"the model did not answer within {timeout:g} s; "
                           "the server is busy, please try again") from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def init_app(app: Flask) -> None:
    """Attach a ``ModelHolder`` to ``app`` and load the model as configured."""
    holder = ModelHolder(app, app.config["PNEUMO_MODEL"])
    app.extensions[EXTENSION] = holder
    app.extensions[PREDICTOR] = None
    weakref.finalize(app, holder.shutdown)
    preloaded = app.config.get("PNEUMO_PREDICTOR")
    mode = app.config["PNEUMO_MODEL_LOADING"]
    if preloaded is not None:
        if preloaded.bundle_path:
            holder.bundle_path = Path(preloaded.bundle_path)
        holder.set(preloaded)
    elif mode == "background":
        threading.Thread(target=holder.load, kwargs={"raise_errors": False},
                         name="pneumo-model-loader", daemon=True).start()
    elif mode == "eager":
        holder.load()
    else:
        raise ValueError(f"PNEUMO_MODEL_LOADING must be 'eager' or 'background', not {mode!r}")


def get_holder() -> ModelHolder:
    return current_app.extensions[EXTENSION]


def get_predictor():
    """The loaded predictor, or ApiError 503 while it is loading or if it failed."""
    holder = get_holder()
    if holder.predictor is None:
        raise ApiError(503, "model_unavailable", unavailable_message(holder))
    return holder.predictor


def unavailable_message(holder: ModelHolder) -> str:
    if holder.error:
        return "the model could not be loaded; see the server log"
    return "the model is still loading; try again in a few seconds"

"""The model as an application resource, opened once and shared (like flaskr's ``db``).

``init_app`` loads the bundle when the app is created -- never per request and
never at import time. Network calls go through one inference thread per app,
so a request can stop waiting after ``PNEUMO_INFERENCE_TIMEOUT`` seconds
(answering 504) while the model finishes in the background, and the engine is
only ever entered from that one thread.

Micro-batching: predictions that are waiting together for the inference
thread run as one batch, at most ``PNEUMO_BATCH_MAX_IMAGES`` images. While
other prediction requests are still being read and decoded by the request
threads, the inference thread waits for them, at most
``PNEUMO_BATCH_WAIT_MS`` milliseconds; a lone request never waits. Every
image's result is the one it would get on its own (docs/performance.md).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
import weakref
from pathlib import Path

import numpy as np
from flask import Flask, current_app, g, request

from .errors import MODEL_UNAVAILABLE, TIMEOUT

log = logging.getLogger(__name__)

#: ``app.extensions`` key of the ``ModelHolder``.
EXTENSION = "pneumo.model"
#: ``app.extensions`` key of the loaded ``Predictor`` itself (None until ready).
PREDICTOR = "pneumo.predictor"
#: Endpoints whose requests will ask for a prediction (the micro-batcher waits for them).
PREDICT_ENDPOINTS = frozenset({"api.predict", "api.predict_batch"})


@dataclasses.dataclass
class _Job:
    """One request's work for the inference thread."""

    future: concurrent.futures.Future
    function: object = None  # a plain call: function(*args)
    args: tuple = ()
    batch: np.ndarray | None = None  # or a prediction of these prepared images
    heatmaps: bool = True


@dataclasses.dataclass
class BatchStats:
    """What the inference thread has done, for tests and the benchmark."""

    batches: int = 0
    requests: int = 0
    images: int = 0
    largest: int = 0  # most requests merged into one batch

    def add(self, requests: int, images: int) -> None:
        self.batches += 1
        self.requests += requests
        self.images += images
        self.largest = max(self.largest, requests)


class ModelHolder:
    """The app's predictor, its loading state and its inference thread."""

    def __init__(self, app: Flask, bundle_path: str | Path, max_images: int = 8,
                 max_wait: float = 0.005):
        if max_images < 1 or max_wait < 0:
            raise ValueError("PNEUMO_BATCH_MAX_IMAGES must be at least 1 and "
                             "PNEUMO_BATCH_WAIT_MS at least 0")
        self.bundle_path = Path(bundle_path)
        self.predictor = None
        self.error: str | None = None
        self.max_images = int(max_images)
        self.max_wait = float(max_wait)
        self.stats = BatchStats()
        self._app = weakref.ref(app)
        self._ready = threading.Event()
        self._queue: collections.deque[_Job] = collections.deque()
        self._condition = threading.Condition()
        self._arriving = 0  # prediction requests started but not yet queued
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="pneumo-inference",
                                        daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Requests waiting for the inference thread."""
        with self._condition:
            return len(self._queue)

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
        except Exception as exc:  # noqa: BLE001 - any failure must end "loading" (health: failed)
            known = isinstance(exc, (BundleError, RuntimeError))
            self.error = str(exc) if known else \
                f"the model bundle {self.bundle_path} could not be loaded ({type(exc).__name__})"
            log.error("model bundle could not be loaded: %s", self.error,
                      exc_info=None if known else exc)
            self._ready.set()
            if raise_errors:
                raise exc if known else BundleError(self.error) from exc
            return
        log.info("model %s %s loaded from %s (engine: %s)", predictor.name, predictor.version,
                 self.bundle_path, getattr(predictor.engine, "name", "?"))
        self.set(predictor)

    # -- the inference thread ------------------------------------------------------------

    def run(self, function, *args, timeout: float):
        """``function(*args)`` on the inference thread; ApiError 504 after ``timeout`` s."""
        return self._submit(_Job(concurrent.futures.Future(), function, args), timeout)

    def predict(self, batch: np.ndarray, heatmaps: bool, *, timeout: float,
                meanwhile=None) -> list:
        """``predictor.predict_batch(batch, heatmaps)`` on the inference thread, merged
        with other requests waiting at the same time; ApiError 504 after ``timeout`` s.

        ``meanwhile``: work of this request's own that does not need the result
        (encoding the studies' PNGs), done while the network runs."""
        return self._submit(_Job(concurrent.futures.Future(), batch=batch,
                                 heatmaps=bool(heatmaps)), timeout, meanwhile)

    def arriving(self) -> None:
        """A prediction request has started: the batcher may wait a little for it."""
        with self._condition:
            self._arriving += 1

    def arrived(self) -> None:
        """That request has queued its work, or ended without any."""
        with self._condition:
            self._arriving = max(0, self._arriving - 1)
            self._condition.notify_all()

    def _submit(self, job: _Job, timeout: float, meanwhile=None):
        deadline = time.monotonic() + timeout
        counted = _counted(self)
        with self._condition:
            if counted:  # queued and no longer arriving, in one step for the batcher
                self._arriving = max(0, self._arriving - 1)
            if self._stopped:
                self._condition.notify_all()
                raise MODEL_UNAVAILABLE("the server is shutting down")
            self._queue.append(job)
            self._condition.notify_all()
        if meanwhile is not None:
            meanwhile()
        try:
            result = job.future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            job.future.cancel()  # dropped if still queued; a running call finishes unseen
            result = None
        # A waiting thread may get the interpreter back only after the answer came: late
        # is late either way, so the time limit holds however the threads were scheduled.
        if not job.future.done() or time.monotonic() > deadline:
            raise TIMEOUT(f"the model did not answer within {timeout:g} s; "
                          "the server is busy, please try again")
        return result

    def _serve(self) -> None:
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            if not jobs:
                continue
            if jobs[0].batch is None:
                _settle(jobs[0].future, jobs[0].function, *jobs[0].args)
            else:
                self._run_batch(jobs)

    def _next_jobs(self) -> list[_Job] | None:
        """The next plain call alone, or predictions to run together (None: stop)."""
        with self._condition:
            while not self._queue and not self._stopped:
                self._condition.wait()
            if self._stopped:
                return None
            first = self._queue.popleft()
            if not first.future.set_running_or_notify_cancel():
                return []  # its request gave up while queued
            if first.batch is None:
                return [first]
            jobs, images = [first], len(first.batch)
            deadline = time.monotonic() + self.max_wait
            while images < self.max_images and not self._stopped:
                if self._queue:
                    job = self._queue[0]
                    if job.batch is None or images + len(job.batch) > self.max_images:
                        break
                    self._queue.popleft()
                    if job.future.set_running_or_notify_cancel():
                        jobs.append(job)
                        images += len(job.batch)
                    continue
                remaining = deadline - time.monotonic()
                if self._arriving <= 0 or remaining <= 0:
                    break
                self._condition.wait(remaining)
            return jobs

    def _run_batch(self, jobs: list[_Job]) -> None:
        predictor = self.predictor
        batch = jobs[0].batch if len(jobs) == 1 else np.concatenate([j.batch for j in jobs])
        heatmaps = any(job.heatmaps for job in jobs)
        try:  # a large batch request runs in slices: memory stays bounded
            results = [result for start in range(0, len(batch), self.max_images)
                       for result in predictor.predict_batch(
                           batch[start:start + self.max_images], heatmaps)]
        except Exception as exc:  # every waiting request gets the error
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.stats.add(len(jobs), len(batch))
        start = 0
        for job in jobs:
            part = results[start:start + len(job.batch)]
            start += len(job.batch)
            if not job.heatmaps:
                part = [dataclasses.replace(result, heatmap=None) for result in part]
            job.future.set_result(part)

    def shutdown(self) -> None:
        with self._condition:
            self._stopped = True
            pending, self._queue = list(self._queue), collections.deque()
            self._condition.notify_all()
        for job in pending:
            job.future.cancel()


def _settle(future: concurrent.futures.Future, function, *args) -> None:
    try:
        result = function(*args)
    except Exception as exc:  # handed to the request waiting for it
        future.set_exception(exc)
    else:
        future.set_result(result)


def _counted(holder: ModelHolder) -> bool:
    """Whether this request counted itself in as arriving and still is; if so it is
    no longer, and the caller must take it off ``holder``'s count."""
    try:
        counted = g.get("pneumo_arriving") is holder
    except RuntimeError:  # outside a request (tests, scripts)
        return False
    if counted:
        g.pneumo_arriving = None
    return counted


def _mark_arrived(holder: ModelHolder) -> None:
    """Within a counted request, tell the batcher once that it need not wait for it."""
    if _counted(holder):
        holder.arrived()


def init_app(app: Flask) -> None:
    """Attach a ``ModelHolder`` to ``app`` and load the model as configured."""
    holder = ModelHolder(app, app.config["PNEUMO_MODEL"],
                         max_images=int(app.config.get("PNEUMO_BATCH_MAX_IMAGES", 8)),
                         max_wait=float(app.config.get("PNEUMO_BATCH_WAIT_MS", 5.0)) / 1000)
    app.extensions[EXTENSION] = holder
    app.extensions[PREDICTOR] = None
    weakref.finalize(app, holder.shutdown)

    @app.before_request
    def count_arrival():
        if request.endpoint in PREDICT_ENDPOINTS:
            g.pneumo_arriving = holder
            holder.arriving()

    @app.teardown_request
    def count_departure(_error=None):
        _mark_arrived(holder)

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
        raise MODEL_UNAVAILABLE(unavailable_message(holder))
    return holder.predictor


def unavailable_message(holder: ModelHolder) -> str:
    if holder.error:
        return "the model could not be loaded; see the server log"
    return "the model is still loading; try again in a few seconds"

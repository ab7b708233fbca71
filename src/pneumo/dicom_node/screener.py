"""The background worker: screens received instances, one at a time, oldest first, and
keeps their result objects for the sender.

It runs on its own thread so that no association ever waits on the network (the PACS
times out associations; inference takes a second or more on a CPU). The model is used
from this thread only. An instance whose screening was cut short by a crash is still
``received`` in the spool and is screened after the restart.

A screener stuck on one image (a decoder or the model hung), or far behind, would leave
the PACS's images acknowledged and never screened, quietly: ``ScreeningWatch`` says so
at ERROR once an instance has waited ``--overdue-after`` to be screened since it arrived,
or since the node started for one that arrived before (a node down for a while starts
with a backlog, which its screener takes up: that is neither stuck nor behind). It
looks from the node's own loop with a database connection of its own, never from the
screener's thread, so a screener stuck anywhere cannot keep it from looking.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from ..screening import Refusal, Screened
from .spool import (OVERDUE_AFTER, Instance, OverdueReport, Spool, ToScreen, describe_age,
                    now_utc, waiting_to_screen, where_it_failed)

log = logging.getLogger("pneumo.dicom_node")

IDLE_CHECK = 5.0  # seconds between looks at the spool when nothing wakes the screener
RETRY_KEEP = 30.0  # seconds before trying again when results could not be kept


def describe(outcome) -> str:
    """The outcome in a few words, for the node's log and its spool row (no identifiers)."""
    if isinstance(outcome, Screened):
        prediction = outcome.prediction
        words = f"{prediction.label} p={prediction.probability:.3f} " \
                f"(threshold {prediction.threshold:.3f})"
        if prediction.inconclusive:
            words += ", inconclusive"
        if outcome.status != "ok":
            words += f", {outcome.status}"
        return words
    if isinstance(outcome, Refusal):
        return f"not assessed: {outcome.reason}"
    return f"unknown outcome {type(outcome).__name__}"


def part10(dataset: Dataset) -> bytes:
    """``dataset`` as a DICOM file (preamble, file meta), as the sender reads it back."""
    if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.file_meta = meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


class Screener(threading.Thread):
    """Screens with ``screen(data) -> ScreeningResults`` until ``stop`` is set; ``wake``
    says a new instance arrived; ``on_screened`` wakes the sender."""

    def __init__(self, spool: Spool, screen: Callable, stop: threading.Event,
                 wake: threading.Event, on_screened: Callable[[], None] = lambda: None):
        super().__init__(name="pneumo-screener", daemon=True)
        self.spool = spool
        self.screen = screen
        self.stop = stop
        self.wake = wake
        self.on_screened = on_screened
        #: the tag of the instance being screened and since when (``time.monotonic()``),
        #: for the watch's line; None between instances
        self.current: tuple[str, float] | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            instance = self.spool.next_to_screen()
            if instance is None:
                self.wake.wait(IDLE_CHECK)
                self.wake.clear()
                continue
            self.process(instance)

    def process(self, instance: Instance) -> None:
        started = time.monotonic()
        self.current = (instance.tag, started)
        try:
            self._process(instance, started)
        finally:
            self.current = None

    def _process(self, instance: Instance, started: float) -> None:
        try:
            data = instance.file.read_bytes()
            results = self.screen(data)
            kept = [("sr", results.sr)]
            if results.capture is not None:
                kept.append(("sc", results.capture))
            encoded = [(kind, str(ds.SOPInstanceUID), part10(ds)) for kind, ds in kept]
        except Exception as exc:  # a bug or a broken spool: keep the instance, say what
            error = type(exc).__name__
            log.error("instance %s: could not be screened (%s); kept in %s, not tried again",
                      instance.tag, error, self.spool.received_dir)
            log.debug("instance %s: screening failed: %s", instance.tag, where_it_failed(exc))
            self.spool.failed(instance, error)
            return
        seconds = time.monotonic() - started
        try:
            self.spool.screened(instance, describe(results.outcome), seconds, encoded)
        except (OSError, sqlite3.Error) as exc:  # disk full: still 'received', try later
            log.error("instance %s: results not kept (%s: %s); trying again in %.0f s",
                      instance.tag, type(exc).__name__, exc, RETRY_KEEP)
            self.stop.wait(RETRY_KEEP)
            return
        # the line that counts comes when its results are delivered (node.py)
        log.debug("instance %s: %s; screened in %.2f s", instance.tag,
                 describe(results.outcome), seconds)
        self.on_screened()


class ScreeningWatch:
    """Logs at ERROR, once per instance, the instances still waiting to be screened
    ``overdue_after`` after they arrived, or after ``started`` (the node's start; default:
    now) for those that arrived before it, naming them by their tags; says what
    ``screener`` is on, which tells a stuck screener (on the same image all along) from
    one far behind. ``look()`` is called from the node's loop; each instance is reported
    once per run of the node (a restart reports those still waiting, an
    ``overdue_after`` later, once more)."""

    def __init__(self, spool: Spool, screener: Screener | None = None,
                 overdue_after: dt.timedelta = OVERDUE_AFTER,
                 started: dt.datetime | None = None):
        self.spool = spool
        self.screener = screener
        self.overdue_after = overdue_after
        self.started = started or now_utc()
        self._db: sqlite3.Connection | None = None  # its own, opened at the first look
        self._report = OverdueReport("instance(s) still not screened", "they arrived",
                                     overdue_after, key=lambda row: row.instance_id)

    def look(self) -> None:
        """One look at the spool; never raises on a database error (it only reports)."""
        try:
            if self._db is None:
                self._db = self.spool.reader()
            cutoff = now_utc() - self.overdue_after
            # waiting since max(arrival, start): none is overdue before the start is
            late = waiting_to_screen(self._db, cutoff) if self.started < cutoff else []
        except sqlite3.Error as exc:
            log.warning("cannot look for instances overdue to be screened: %s: %s",
                        type(exc).__name__, exc)
            self.close()  # a fresh connection at the next look
            return
        self._report.look(late, about_oldest=self._backlog,
                          then=lambda: f"{self._screener_now()}; see pneumo dicom-spool status")

    def _backlog(self, oldest: ToScreen) -> str:
        if oldest.received >= self.started:
            return ""
        return f", already waiting when the node started " \
               f"{describe_age((now_utc() - self.started).total_seconds())} ago"

    def _screener_now(self) -> str:
        current = self.screener.current if self.screener is not None else None
        if current is None:
            return "the screener is between images"
        tag, since = current
        return f"the screener has been on {tag} for " \
               f"{describe_age(time.monotonic() - since)}"

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

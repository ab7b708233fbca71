"""The background worker: screens received instances, one at a time, oldest first, and
keeps their result objects for the sender.

It runs on its own thread so that no association ever waits on the network (the PACS
times out associations; inference takes a second or more on a CPU). The model is used
from this thread only. An instance whose screening was cut short by a crash is still
``received`` in the spool and is screened after the restart.
"""

from __future__ import annotations

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
from .spool import Instance, Spool, where_it_failed

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

"""The C-STORE sender: delivers the result objects to the PACS (``--results-to``), and
tries again, later and later, until the PACS has them.

A PACS that is down, restarting or refusing for a while must not lose results: each
failed delivery is tried again after 2, 4, 8 ... seconds, at most 5 minutes apart,
for as long as the node runs (and after a restart, from the spool). A result is
marked delivered only when the PACS answers success (or a warning, which still means
stored); every failure, and its status, is logged.

Retrying for ever must not mean failing quietly for ever: a result still undelivered an
hour (``--overdue-after``) after its image arrived is logged once at ERROR, for
monitoring to notice, and the node goes on trying.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import sqlite3
import threading
from collections.abc import Callable

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from .spool import OVERDUE_AFTER, OverdueReport, Result, Spool, Waiting, now_utc
from .tls import ClientTLS, describe

log = logging.getLogger("pneumo.dicom_node")

FIRST_RETRY = 2.0  # seconds
MAX_RETRY = 300.0
BATCH = 64  # results per association
IDLE_CHECK = 30.0  # seconds between looks at the spool when nothing wakes the sender
AE_TITLE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # no backslash, no controls


def backoff(attempts: int) -> float:
    """Seconds before the next try, after ``attempts`` failed ones."""
    return min(FIRST_RETRY * 2 ** max(attempts - 1, 0), MAX_RETRY)


def check_ae_title(title: str) -> str:
    """``title`` if DICOM allows it as an AE title (1-16 characters, no backslash or
    control characters, not only spaces), else ValueError."""
    if not AE_TITLE_PATTERN.match(title) or not title.strip():
        raise ValueError(f"{title!r} is not a valid AE title (1-16 characters, no "
                         "backslash)")
    return title


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM peer as ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d+)",
                             text.strip())
        if not match:
            raise ValueError(f"--results-to {text!r}: expected AET@HOST:PORT, e.g. "
                             "ORTHANC@127.0.0.1:4242")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ValueError(f"--results-to {text!r}: port {port} is out of range")
        return cls(check_ae_title(match["aet"]), match["host"].strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _attempts(oldest: Waiting) -> str:
    return f", {oldest.attempts} attempt(s), last error: {oldest.last_error or 'none yet'}"


class Sender(threading.Thread):
    """Delivers due results from ``spool`` until ``stop`` is set; ``wake`` says new
    results are waiting; ``on_delivered(instance_id)`` is called when an instance's
    last result is delivered."""

    def __init__(self, spool: Spool, destination: Destination, ae_title: str,
                 stop: threading.Event, wake: threading.Event,
                 on_delivered: Callable[[int], None] = lambda instance_id: None,
                 overdue_after: dt.timedelta = OVERDUE_AFTER, tls: ClientTLS | None = None):
        super().__init__(name="pneumo-sender", daemon=True)
        self.spool = spool
        self.destination = destination
        self.ae_title = ae_title
        self.stop = stop
        self.wake = wake
        self.on_delivered = on_delivered
        self.overdue_after = overdue_after
        self.tls = tls  # None: DICOM in the clear
        self._report = OverdueReport(f"result(s) still not delivered to {destination}",
                                     "their image arrived", overdue_after,
                                     key=lambda row: row.result_id)

    def run(self) -> None:
        while not self.stop.is_set():
            due = self.spool.due_results(BATCH)
            if due:
                self.deliver(due)
            # after a try, not before: a late result delivered at its first try (a backlog
            # after a restart) is not worth an ERROR, and the line has the PACS's answer
            self.report_overdue()
            if not due:
                self.wake.wait(self._idle_seconds())
                self.wake.clear()

    def report_overdue(self) -> None:
        """One ERROR line for the results that became overdue since the last look; each
        result is reported once per run of the node (a restart reports those still
        waiting once more)."""
        try:
            overdue = self.spool.overdue(self.overdue_after)
        except sqlite3.Error as exc:  # a look for monitoring must never stop the deliveries
            log.warning("cannot look for overdue results: %s: %s", type(exc).__name__, exc)
            return
        self._report.look(overdue, about_oldest=_attempts,
                          then=lambda: "still trying, see pneumo dicom-spool status")

    def _idle_seconds(self) -> float:
        upcoming = self.spool.next_try()
        if upcoming is None:
            return IDLE_CHECK
        return min(max((upcoming - now_utc()).total_seconds(), 0.05), IDLE_CHECK)

    def _association(self, metas: list[FileMetaDataset]):
        ae = AE(ae_title=self.ae_title)
        ae.connection_timeout = 10
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        contexts = set()
        for meta in metas:
            syntax = meta.TransferSyntaxUID
            contexts.add((str(meta.MediaStorageSOPClassUID),
                          tuple(dict.fromkeys([syntax, ExplicitVRLittleEndian,
                                               ImplicitVRLittleEndian]))))
        for sop_class, syntaxes in sorted(contexts):
            ae.add_requested_context(sop_class, list(syntaxes))
        if self.tls:
            self.tls.take_failure()  # what an earlier association left
        return ae.associate(self.destination.host, self.destination.port,
                            ae_title=self.destination.ae_title,
                            tls_args=self.tls.tls_args if self.tls else None)

    def _readable(self, results: list[Result]) -> list[tuple[Result, FileMetaDataset]]:
        """``results`` whose files can be read, with their file meta (what the association
        proposes); the others are due again later, so that one bad file never holds back
        the rest."""
        readable = []
        for result in results:
            try:
                readable.append((result, read_file_meta_info(result.file)))
            except (OSError, ValueError, AttributeError) as exc:
                self._later([result], f"cannot read its file: {type(exc).__name__}: {exc}")
        return readable

    def deliver(self, results: list[Result]) -> None:
        """One association: send ``results``, mark each delivered or due again later."""
        readable = self._readable(results)
        if not readable:
            return
        results = [result for result, _ in readable]
        try:
            assoc = self._association([meta for _, meta in readable])
        except (OSError, ValueError, AttributeError) as exc:
            self._later(results, f"cannot prepare the association: {type(exc).__name__}: {exc}")
            return
        if not assoc.is_established:
            failure = self.tls.take_failure() if self.tls else None
            if failure is not None:  # the association itself says only that it failed
                self._later(results, f"TLS handshake with the PACS failed: {describe(failure)}")
                return
            if assoc.is_rejected:  # e.g. the PACS does not know this node's AE title
                why = f"rejected: {assoc.acceptor.primitive.reason_str}"
            else:
                why = "aborted" if assoc.is_aborted else "no answer"
            self._later(results, f"association {why}")
            return
        try:
            for index, result in enumerate(results):
                if self.stop.is_set():
                    return
                try:
                    status = assoc.send_c_store(result.file)
                except (ValueError, AttributeError, OSError, RuntimeError) as exc:
                    self._later([result], f"cannot send: {type(exc).__name__}: {exc}")
                    continue
                code = status.get("Status") if status else None
                if code is None:  # aborted, timed out, or an invalid answer
                    self._later(results[index:], "the association ended without an answer")
                    return
                if code_to_category(code) in ("Success", "Warning"):
                    if self.spool.sent(result):
                        self.on_delivered(result.instance_id)
                else:
                    self._later([result], f"the PACS answered 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()

    def _later(self, results: list[Result], reason: str) -> None:
        delay = backoff(min(r.attempts for r in results) + 1)
        for result in results:
            self.spool.retry_later(result, reason, backoff(result.attempts + 1))
        log.warning("%d result(s) not delivered to %s: %s; next try in %.0f s",
                    len(results), self.destination, reason, delay)


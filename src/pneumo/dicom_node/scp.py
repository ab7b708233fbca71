"""The Storage SCP: what the node accepts from the PACS and the status it answers.

The node offers every storage SOP class in every transfer syntax, and answers each
C-STORE with a status, rather than offering only CR and DX: a PACS that routes a
whole study (a CT scout, a report) then gets a clear per-instance refusal it logs
and moves past, instead of an association that fails to negotiate and a job that
stops at the first instance it cannot place.

- 0x0000 success: a CR or DX (for presentation) image, kept on disk (or kept before);
- 0x0122 SOP class not supported: anything else: other modalities, DX for processing
  (raw detector data, not what the model was trained on), SR and Secondary Capture (so
  results sent back by mistake never loop), documents;
- 0xA900 data set does not match SOP class: the data set names another SOP class than
  its presentation context, lacks a Study, Series or SOP Instance UID, or has no pixel
  data;
- 0xC000 cannot understand: the data set cannot be parsed;
- 0xA700 out of resources: the spool cannot keep it (disk nearly full, a write failed),
  or a deflated data set would inflate past the decoder's limit; the PACS keeps it.

The checks of the data set are ``dicom_results.read_source``'s, the reading the screener
does too, and its errors carry their status.

Whether the image is a chest X-ray the model can read is not a transport question:
an accepted image the input gate refuses gets a "not assessed" SR saying why.

The node serves at most ``--max-associations`` associations at once (10 unless told
otherwise, pynetdicom's default); one more is rejected as transient ("local limit
exceeded") and logged, so that a PACS opening many at once is told, not left waiting.

Success is answered only once the instance is on disk (``Spool.receive``); the
screening happens later on another thread, so an association never waits on the
network.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import ssl
import time
from collections.abc import Callable

import pydicom
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from ..dicom_results import SourceError, read_source
from .spool import Spool, where_it_failed
from .tls import start_tls_server

log = logging.getLogger("pneumo.dicom_node")

#: What the node screens: radiographs as shown to readers.
ACCEPTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",      # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",    # Digital X-Ray Image Storage - For Presentation
}

SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: How long a stopping node lets open associations finish (a PACS's job in progress).
GRACE_SECONDS = 10.0

#: How many associations the node serves at once unless told otherwise
#: (``--max-associations``): pynetdicom's default. One more is rejected as transient
#: ("local limit exceeded"), which a PACS may send again later.
MAX_ASSOCIATIONS = 10

#: Below this much free space the node refuses new instances (out of resources) rather
#: than fill the disk its database and results live on.
MIN_FREE_BYTES = 256 * 1024 * 1024


def sop_class_name(uid: str) -> str:
    """A SOP class for a log line: its name where pydicom knows it."""
    name = pydicom.uid.UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def check_max_associations(count: int) -> int:
    """``count`` if the node can serve that many associations at once, else ValueError."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"--max-associations {count}: expected 1 or more")
    return count


class StorageSCP:
    """Receives instances into ``spool`` and calls ``on_received`` (wakes the screener)
    after each new one."""

    def __init__(self, spool: Spool, ae_title: str, calling_aets: list[str] | None,
                 on_received: Callable[[], None] = lambda: None,
                 max_associations: int = MAX_ASSOCIATIONS):
        self.spool = spool
        self.on_received = on_received
        self.ae = AE(ae_title=ae_title)
        # pynetdicom takes anything below 1 as 1, with a warning: never let it guess
        self.ae.maximum_associations = check_max_associations(max_associations)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        # a PACS sending to another AE title is misconfigured: say so at association
        self.ae.require_called_aet = True
        self.ae.require_calling_aet = list(calling_aets or [])
        self.server = None

    def start(self, host: str, port: int, tls_context: ssl.SSLContext | None = None) -> None:
        """Listen on ``host:port`` in background threads (one per association); over TLS
        with ``tls_context`` (``tls.TLSOptions.server_context``)."""
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_REJECTED, self._log_rejected)]
        if tls_context is not None:
            self.server = start_tls_server(self.ae, (host, port), tls_context, handlers)
            return
        self.server = self.ae.start_server((host, port), block=False, evt_handlers=handlers)

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        """Stop listening, give open associations ``grace`` seconds to finish, then abort
        them (what they had acknowledged is on disk; the PACS sends the rest again)."""
        if self.server is not None:
            self.server.shutdown()  # no new associations
            self.server = None
        deadline = time.monotonic() + grace
        # only associations under way: a connection that never asked for one (a port
        # check, a scanner) waits for nothing
        while any(assoc.is_established for assoc in self.ae.active_associations) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        self.ae.shutdown()

    def handle_echo(self, event) -> int:
        return SUCCESS

    def _log_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        called = str(getattr(requestor.primitive, "called_ae_title", "") or "").strip()
        answer = getattr(event.assoc.acceptor, "primitive", None)
        if (getattr(answer, "result_source", None), getattr(answer, "diagnostic", None)) \
                == (0x03, 0x02):  # local limit exceeded: a transient rejection
            why = f"the node already serves {self.ae.maximum_associations} association(s), " \
                  "its limit (--max-associations): rejected as transient; have the PACS " \
                  "open fewer at once, or raise the limit"
        elif called and called != self.ae.ae_title:
            why = f"it called {called!r}, this node is {self.ae.ae_title!r}"
        else:
            why = "calling AE title not on the allow-list (--calling-aets)"
        log.warning("association from %s as %r rejected: %s", requestor.address,
                    requestor.ae_title, why)

    def handle_store(self, event) -> int:
        """One C-STORE: check, keep, answer. Never raises: pynetdicom would answer a
        generic failure."""
        started = time.monotonic()
        calling = event.assoc.requestor.ae_title
        try:
            status, detail = self._store(event)
        except Exception as exc:  # a bug: answer it as a failure, say what it was
            status, detail = CANNOT_UNDERSTAND, f"unexpected {type(exc).__name__}"
            log.debug("C-STORE from %r failed: %s", calling, where_it_failed(exc))
        if status != SUCCESS:
            log.warning("C-STORE from %r refused with 0x%04X: %s", calling, status, detail)
        else:
            log.info("%s from %r in %.0f ms", detail, calling,
                     (time.monotonic() - started) * 1000)
        return status

    def _store(self, event) -> tuple[int, str]:
        context_class = str(event.context.abstract_syntax)
        if context_class not in ACCEPTED_SOP_CLASSES:
            return SOP_CLASS_NOT_SUPPORTED, f"{sop_class_name(context_class)} is not screened " \
                                            "(CR and DX for presentation only)"
        data = event.encoded_dataset(include_meta=True)
        try:
            # the same reading the screener does: header only, a deflated data set's
            # inflation bounded first (it would happen here, on the association's thread)
            _, header = read_source(data)
        except SourceError as exc:
            return exc.dimse_status, str(exc)
        sop_class, sop_instance = str(header.SOPClassUID), str(header.SOPInstanceUID)
        if sop_class != context_class:
            return DATA_SET_DOES_NOT_MATCH_SOP_CLASS, \
                f"the data set is {sop_class_name(sop_class)}, sent as " \
                f"{sop_class_name(context_class)}"
        try:
            if shutil.disk_usage(self.spool.root).free < MIN_FREE_BYTES + len(data):
                return OUT_OF_RESOURCES, f"less than {MIN_FREE_BYTES // 2**20} MB free " \
                                         f"in {self.spool.root}"
            received = self.spool.receive(data, sop_instance)
        except (OSError, sqlite3.Error) as exc:
            return OUT_OF_RESOURCES, f"cannot keep it: {type(exc).__name__}: {exc}"
        if received.duplicate:
            return SUCCESS, f"instance {received.instance.tag}: received again, already kept"
        self.on_received()
        return SUCCESS, f"instance {received.instance.tag}: {ACCEPTED_SOP_CLASSES[sop_class]} " \
                        f"kept"


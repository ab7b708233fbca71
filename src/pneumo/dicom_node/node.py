"""The running node (``pneumo dicom-listen``): the Storage SCP, the screener and the
sender, started together on one spool and stopped together on SIGTERM or SIGINT.

Stopping is graceful: the node stops listening (cutting TLS handshakes under way short,
so that no association starts after), lets open associations finish for a few seconds (then aborts them: the PACS sends what it had not had confirmed again),
the screener finishes the image it is on, the sender the result it is on; everything
else waits in the spool for the next start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import signal
import ssl
import threading
import time
from pathlib import Path

import pydicom

from .scp import MAX_ASSOCIATIONS, StorageSCP, check_max_associations
from .screener import Screener, ScreeningWatch
from .sender import Destination, Sender, check_ae_title
from .spool import OVERDUE_AFTER, Spool, describe_age, now_utc
from .tls import TLSOptions, describe_server, quiet_pynetdicom_tls_failures

log = logging.getLogger("pneumo.dicom_node")

JOIN_TIMEOUT = 90  # seconds: an inference, or a C-STORE waiting on its answer
#: Seconds between the node's looks for instances overdue to be screened (a backlog
#: from before the start is measured from the start: ``ScreeningWatch``).
WATCH_INTERVAL = 30.0


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def who_may_call_warning(host: str, calling_aets: list[str],
                         server_tls: ssl.SSLContext | None) -> str | None:
    """The start-up warning when any peer that reaches the port may call as any AE title
    (None: loopback only, or an allow-list)."""
    if calling_aets or is_loopback(host):
        return None
    if server_tls is not None and server_tls.verify_mode == ssl.CERT_REQUIRED:
        # peers prove who they are, but any of them may claim any AE title
        return "listening beyond loopback and accepting any calling AE title from every " \
               "peer with a certificate --tls-ca trusts: give --calling-aets (a " \
               "certificate is not tied to an AE title)"
    return "listening beyond loopback and accepting any calling AE title: give " \
           "--calling-aets, and keep the port behind a firewall or require client " \
           "certificates (--tls-ca): an AE title is a name, not a password"


def run(*, host: str, port: int, ae_title: str, results_to: str, model: str | None = None,
        calling_aets: list[str] | None = None, overlay: bool = True,
        data_dir: str | Path | None = None, overdue_after: dt.timedelta = OVERDUE_AFTER,
        max_associations: int = MAX_ASSOCIATIONS, tls: TLSOptions | None = None) -> int:
    """Run the node until SIGTERM or SIGINT; returns the exit status (1: a worker thread
    died). ``tls``: the certificates for DICOM over TLS (none: in the clear)."""
    from ..dicom_results import screen_dicom
    from ..bundle import ModelCard, read_card
    from ..config import default_bundle_path
    from ..predictor import Predictor
    from ..studies import default_data_dir

    if not 0 < port < 65536:  # the socket would raise OverflowError, after the model loads
        raise ValueError(f"--port {port}: expected 1 to 65535")
    check_max_associations(max_associations)
    check_ae_title(ae_title)
    calling_aets = [check_ae_title(title) for title in calling_aets or []]
    destination = Destination.parse(results_to)
    tls = tls or TLSOptions()
    # the files are read here, before the model, so that a wrong one is told at once
    server_tls, results_tls = tls.server_context(), tls.client(destination.host)
    if server_tls or results_tls:
        quiet_pynetdicom_tls_failures()
    # pynetdicom and highdicom log UIDs at INFO (every association, every attribute they
    # copy): the node logs its own lines, without identifiers, instead
    for library in ("pynetdicom", "highdicom"):
        logging.getLogger(library).setLevel(logging.WARNING)
    # pydicom's warnings about non-conformant values quote the value (a patient's name
    # may be one): what a PACS sends is read as it is, without them
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

    bundle = Path(model) if model else default_bundle_path()
    # the spool before the model: its folder and lock take milliseconds to check, the
    # model seconds to load, so a second node on the same folder is told at once
    spool = Spool(Path(data_dir) if data_dir else default_data_dir(),
                  ModelCard.from_dict(read_card(bundle)).version)
    try:
        predictor = Predictor.from_bundle(bundle)
    except BaseException:
        spool.close()
        raise
    stop = threading.Event()
    screen_wake, send_wake = threading.Event(), threading.Event()

    def delivered(instance_id: int) -> None:
        row = spool.summary(instance_id)
        log.info("instance %s: %s; screened in %.2f s; %d result(s) delivered to %s, "
                 "%.1f s after it was received", row["tag"], row["outcome"],
                 row["screen_seconds"] or 0.0, row["results"], destination,
                 (now_utc() - row["received"]).total_seconds())

    screener = Screener(spool, lambda data: screen_dicom(predictor, data, overlay=overlay),
                        stop, screen_wake, on_screened=send_wake.set)
    sender = Sender(spool, destination, ae_title, stop, send_wake, on_delivered=delivered,
                    overdue_after=overdue_after, tls=results_tls)
    scp = StorageSCP(spool, ae_title, calling_aets, on_received=screen_wake.set,
                     max_associations=max_associations)
    # from this loop, not the screener's thread: a stuck screener cannot hide itself
    watch = ScreeningWatch(spool, screener, overdue_after)

    def request_stop(signum, frame) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, request_stop)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            scp.start(host, port, server_tls)
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") \
                from None
        spool.due_now()
        screener.start()
        sender.start()
        counts = spool.counts()
        log.info("listening as %s on %s:%d (at most %d associations at once) with %s %s; "
                 "results to %s (overlay %s); calling AE titles: %s; spool %s (%d to screen, "
                 "%d results to deliver, %d failed; overdue after %s)", ae_title, host, port,
                 max_associations, predictor.name, predictor.version,
                 destination, "on" if overlay else "off", ", ".join(calling_aets) or "any",
                 spool.root, counts.get("received", 0), counts.get("undelivered", 0),
                 counts.get("failed", 0), describe_age(overdue_after.total_seconds()))
        if server_tls or results_tls:
            log.info("listening over %s; results to %s over %s", describe_server(server_tls),
                     destination, results_tls or "DICOM in the clear")
        if counts.get("failed"):
            log.warning("%d instance(s) could not be screened and are kept in %s (patient "
                        "data): see pneumo dicom-spool status, then retry or purge them",
                        counts["failed"], spool.received_dir)
        warning = who_may_call_warning(host, calling_aets, server_tls)
        if warning:
            log.warning("%s", warning)
        status = 0
        next_look = time.monotonic() + WATCH_INTERVAL
        while not stop.wait(0.5):
            # a worker that died (an error its loop does not expect, e.g. a database busy
            # past its timeout) would leave a node that acknowledges images and never
            # screens or sends them: stop, so that the service manager restarts it
            dead = [thread.name for thread in (screener, sender) if not thread.is_alive()]
            if dead:
                log.error("%s stopped on an unexpected error (above): stopping the node; "
                          "its work waits in the spool for the next start", ", ".join(dead))
                status = 1
                break
            if time.monotonic() >= next_look:
                watch.look()
                next_look = time.monotonic() + WATCH_INTERVAL
    finally:
        stop.set()
        scp.stop()
        screen_wake.set()
        send_wake.set()
        for thread in (screener, sender):
            if thread.is_alive():
                thread.join(JOIN_TIMEOUT)
        watch.close()
        spool.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped")
    return status

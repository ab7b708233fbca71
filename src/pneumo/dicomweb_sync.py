"""``pneumo dicomweb-sync``: screen a DICOMweb archive's new chest films, file the results.

For a PACS that speaks DICOMweb (HTTP) rather than, or as well as, classic DICOM
networking: one run finds the CR and DX instances with QIDO-RS (``--since`` narrows the
search to studies from that time on), fetches each one with WADO-RS, screens it with
``dicom_results.screen_dicom`` and stores the SR (and the overlay capture) into the same
study with STOW-RS. Run it from cron or a systemd timer.

A small SQLite ledger in the data folder (``dicomweb-sync.sqlite3``) remembers each
instance handled, per server and model version, so that nothing is screened or stored
twice; an instance whose fetch or store failed is not recorded and is tried again on the
next run. Should a run stop between storing and recording, the next one stores the same
objects again under the same deterministic UIDs, which the archive keeps once. The
ledger holds a SHA-256 digest of the server and UIDs, never a UID or a patient
identifier; progress lines count instances and say the outcome, nothing that names a
patient or a study.

One run at a time per data folder: a second waits for nothing and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Iterator

from .dicom_results import SourceError, screen_dicom
from .screening import Screened
from .spans import as_span

log = logging.getLogger(__name__)

LEDGER_FILE = "dicomweb-sync.sqlite3"
#: Modalities that hold projection chest radiographs, as the node accepts them.
MODALITIES = ("CR", "DX")
#: Credentials, from the environment (never the command line, which other users of the
#: machine can read): a bearer token, or a user and password for HTTP basic
#: authentication (Orthanc's RegisteredUsers).
TOKEN_ENV = "PNEUMO_DICOMWEB_TOKEN"
USER_ENV = "PNEUMO_DICOMWEB_USER"
PASSWORD_ENV = "PNEUMO_DICOMWEB_PASSWORD"
#: Seconds to wait for the server's answer to each request.
TIMEOUT = 60
#: Tries per request, on a lost connection or a busy server (HTTP 408, 429, 503, 504),
#: after waits of 1 s and 2 s: enough for a restart of the server's front end, and an
#: unreachable URL is said within seconds (dicomweb-client's default waits 30 s).
ATTEMPTS = 3
#: QIDO-RS results asked for per request. A server may return fewer (its own cap), so
#: only an empty page, or one with nothing new, ends a search.
PAGE = 100


class SyncError(RuntimeError):
    """The run cannot go on (server unreachable, refused, not DICOMweb): one line for
    the user, never a traceback."""


class Unreachable(SyncError):
    """No connection to the server: the run stops, whatever it was doing."""


@dataclasses.dataclass
class SyncStats:
    """What one run did."""

    found: int = 0  # CR/DX instances the search returned
    already: int = 0  # handled by an earlier run
    screened: int = 0  # results stored with a finding
    not_assessed: int = 0  # refused by the input gate: a "not assessed" SR stored
    skipped: int = 0  # nothing to screen (no pixel data...): nothing stored
    failed: int = 0  # fetch or store failed: tried again next run
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.found} CR/DX instances found, {self.already} done before; "
                f"{self.screened} screened, {self.not_assessed} not assessed, "
                f"{self.skipped} skipped, {self.failed} failed ({self.seconds:.1f} s)")


@dataclasses.dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str


# --------------------------------------------------------------------------------------
# --since




def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO date or date and time (2026-12-01, 2026-12-01T08:00), or a
    span back from now (30m, 12h, 2d, 1w). Naive local time, as DICOM's study date and
    time are: a time given with an offset (``Z``, ``+01:00``) is turned into this
    machine's local time."""
    now = now or dt.datetime.now()
    value = text.strip()
    if span := as_span(value):
        return now - span
    try:
        since = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since {text!r} is neither a date or date and time "
                         "(2026-12-01, 2026-12-01T08:00) nor a span (30m, 12h, 2d, 1w)") \
            from None
    # compared with naive study times: an aware one would raise TypeError there
    return since.astimezone().replace(tzinfo=None) if since.tzinfo else since


# --------------------------------------------------------------------------------------
# The ledger


class Ledger:
    """Instances handled, by digest; and a lock so that one run at a time uses it."""

    def __init__(self, folder: Path):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._lock = open(folder / (LEDGER_FILE + ".lock"), "w")  # noqa: SIM115
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise SyncError(f"cannot keep the ledger in {folder} ({exc.strerror or exc}{where}):"
                            " --data-dir or $PNEUMO_DATA_DIR names another folder") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SyncError(f"another pneumo dicomweb-sync is running on {folder}") from None
        try:
            self._db = sqlite3.connect(folder / LEDGER_FILE)
            self._db.execute("CREATE TABLE IF NOT EXISTS handled (digest TEXT PRIMARY KEY, "
                             "outcome TEXT NOT NULL, at TEXT NOT NULL)")
            self._db.commit()
        except sqlite3.Error as exc:
            self._lock.close()
            raise SyncError(f"cannot use the ledger {folder / LEDGER_FILE}: {exc}") from None

    @staticmethod
    def digest(url: str, ref: InstanceRef, model: str) -> str:
        return hashlib.sha256("\0".join([url.rstrip("/"), ref.study, ref.series, ref.sop,
                                         model]).encode()).hexdigest()

    def __contains__(self, digest: str) -> bool:
        return self._db.execute("SELECT 1 FROM handled WHERE digest = ?",
                                (digest,)).fetchone() is not None

    def record(self, digest: str, outcome: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO handled VALUES (?, ?, ?)",
                         (digest, outcome, dt.datetime.now(dt.timezone.utc).isoformat()))
        self._db.commit()

    def close(self) -> None:
        self._db.close()
        self._lock.close()


# --------------------------------------------------------------------------------------
# The server


def connect(url: str):
    """A DICOMweb client for ``url`` (the service root, e.g. http://pacs:8042/dicom-web),
    with the credentials the environment gives (``TOKEN_ENV``, or ``USER_ENV`` and
    ``PASSWORD_ENV``)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    # dicomweb-client logs every URL, UIDs included, at INFO
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    if not re.match(r"https?://[^/\s]+", url or ""):
        raise SyncError(f"--url {url!r} is not an http:// or https:// URL of a DICOMweb "
                        "service (e.g. http://pacs.example:8042/dicom-web)")
    if re.match(r"https?://[^/]*@", url):
        raise SyncError(f"--url holds credentials: give them in {USER_ENV} and "
                        f"{PASSWORD_ENV} instead (other users can read command lines)")
    session = requests.Session()
    if os.environ.get(TOKEN_ENV):
        session.headers["Authorization"] = f"Bearer {os.environ[TOKEN_ENV]}"
    elif os.environ.get(USER_ENV):
        session.auth = (os.environ[USER_ENV], os.environ.get(PASSWORD_ENV, ""))
    try:
        client = DICOMwebClient(url.rstrip("/"), session=session, timeout=TIMEOUT)
    except ValueError as exc:
        raise SyncError(f"--url {url!r} is not usable: {exc}") from None
    client.set_http_retry_params(max_attempts=ATTEMPTS, wait_exponential_multiplier=500)
    return client


@contextlib.contextmanager
def _server_errors(url: str, what: str) -> Iterator[None]:
    """requests' exceptions as one plain sentence; the request's own URL (with UIDs in
    it) is never repeated."""
    import requests

    try:
        yield
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        not_root = ": is the URL the DICOMweb root (e.g. .../dicom-web)?" \
            if what == SEARCH else ""
        hint = {400: not_root, 404: not_root,
                401: f": the server wants credentials (set {TOKEN_ENV}, or {USER_ENV} "
                     f"and {PASSWORD_ENV})",
                403: ": access refused for these credentials"}.get(status, "")
        raise SyncError(f"the DICOMweb server at {url} answered HTTP {status} to {what}"
                        f"{hint}") from None
    except requests.exceptions.Timeout:
        raise SyncError(f"the DICOMweb server at {url} did not answer {what} within "
                        f"{TIMEOUT} s") from None
    except requests.exceptions.ConnectionError:
        raise Unreachable(f"cannot reach the DICOMweb server at {url} (connection refused "
                          "or host unknown)") from None
    except requests.exceptions.RequestException as exc:
        raise SyncError(f"the request to {url} for {what} failed "
                        f"({type(exc).__name__})") from None


SEARCH = "a QIDO-RS search"


def _value(result: dict, tag: str) -> str:
    values = result.get(tag, {}).get("Value") or [""]
    return str(values[0])


def find_instances(client, url: str, since: dt.datetime | None = None) -> list[InstanceRef]:
    """Every CR and DX instance (QIDO-RS), of studies dated ``since`` or later."""
    found: dict[str, InstanceRef] = {}
    for modality in MODALITIES:
        filters = {"Modality": modality}
        if since is not None:
            filters["StudyDate"] = since.strftime("%Y%m%d") + "-"
        for result in _search_pages(client, url, filters):
            if since is not None and _study_time(result) < since:
                continue
            ref = InstanceRef(_value(result, "0020000D"), _value(result, "0020000E"),
                              _value(result, "00080018"))
            if ref.study and ref.series and ref.sop:
                found[ref.sop] = ref
    return list(found.values())


def _search_pages(client, url: str, filters: dict) -> Iterator[dict]:
    """A QIDO-RS instance search, page by page (``PAGE`` results a request).

    Not dicomweb-client's ``get_remaining``: against a server that ignores ``offset``, or
    an URL that is not a DICOMweb root but answers JSON (Orthanc's own REST API lists
    ``/instances`` as IDs), it asks for the next page forever. Here a page with nothing
    new ends the search, and an answer that is not DICOM JSON is an error."""
    seen: set[str] = set()
    offset = 0
    while True:
        with _server_errors(url, SEARCH):
            page = client.search_for_instances(search_filters=filters, limit=PAGE,
                                               offset=offset,
                                               fields=["StudyDate", "StudyTime"])
        if not isinstance(page, list) or not all(isinstance(r, dict) for r in page):
            raise SyncError(f"the server at {url} did not answer a QIDO-RS search with DICOM "
                            "JSON: is the URL the DICOMweb root (e.g. .../dicom-web)?")
        new = [r for r in page if _value(r, "00080018") not in seen]
        seen.update(_value(r, "00080018") for r in new)
        yield from new
        if not new:
            return
        offset += len(page)


def _study_time(result: dict) -> dt.datetime:
    """The study's date and time (midnight when the time is absent or malformed)."""
    date, time_of_day = _value(result, "00080020"), _value(result, "00080030")
    try:
        day = dt.datetime.strptime(date[:8], "%Y%m%d")
    except ValueError:
        return dt.datetime.max  # undated: kept, never filtered out by a guess
    digits = re.match(r"\d{2,6}", time_of_day)
    if digits:
        text = digits[0].ljust(6, "0")
        with contextlib.suppress(ValueError):
            return day.replace(hour=int(text[:2]), minute=int(text[2:4]), second=int(text[4:6]))
    return day


# --------------------------------------------------------------------------------------
# The run


def sync(url: str, predictor_loader, *, model: str | None = None,
         since: dt.datetime | None = None, data_dir: Path | None = None, overlay: bool = True,
         progress: bool = False, client=None) -> SyncStats:
    """One pass over the server at ``url``; ``predictor_loader()`` gives the Predictor,
    loaded only when there is something new to screen. ``model``: its name and version
    as the ledger keys instances by them (read from the bundle's card, which is cheap);
    without it the Predictor is loaded as soon as anything is found, to ask it.

    Raises SyncError when the server cannot be searched or reached."""
    from tqdm.auto import tqdm

    from .studies import default_data_dir

    started = time.monotonic()
    stats = SyncStats()
    client = client or connect(url)
    ledger = Ledger(Path(data_dir) if data_dir else default_data_dir())
    try:
        refs = find_instances(client, url, since)
        stats.found = len(refs)
        predictor = None
        todo: list[tuple[InstanceRef, str]] = []
        if refs:
            if model is None:
                predictor = predictor_loader()
                model = f"{predictor.name} {predictor.version}"
            for ref in refs:
                digest = Ledger.digest(url, ref, model)
                if digest in ledger:
                    stats.already += 1
                else:
                    todo.append((ref, digest))
        if todo and predictor is None:
            predictor = predictor_loader()
        with tqdm(total=len(todo), unit="instance", desc="screening",
                  disable=not progress or not todo) as bar:
            for number, (ref, digest) in enumerate(todo, 1):
                line = _one(client, url, predictor, ref, digest, ledger, stats, overlay)
                bar.update()
                tqdm.write(f"instance {number}/{len(todo)}: {line}", file=sys.stderr)
    finally:
        ledger.close()
        stats.seconds = time.monotonic() - started
    return stats


def _one(client, url: str, predictor, ref: InstanceRef, digest: str, ledger: Ledger,
         stats: SyncStats, overlay: bool) -> str:
    """Fetch, screen and store one instance; the progress line (no identifiers). Whatever
    fails fails this instance only (tried again next run); a lost connection, the run."""
    try:
        with _server_errors(url, "a WADO-RS retrieve"):
            dataset = client.retrieve_instance(ref.study, ref.series, ref.sop)
        results = screen_dicom(predictor, dataset, overlay=overlay)
        with _server_errors(url, "a STOW-RS store"):
            answer = client.store_instances(results.datasets, study_instance_uid=ref.study)
    except Unreachable:
        raise
    except SourceError as exc:
        stats.skipped += 1
        ledger.record(digest, "skipped")
        return f"skipped: {exc}"
    except SyncError as exc:
        stats.failed += 1
        return f"failed: {exc}"
    except Exception as exc:  # noqa: BLE001 - one bad instance must not stop the others
        # the type only: messages of parsing libraries can quote header values
        log.debug("instance failed: %s", type(exc).__name__)
        stats.failed += 1
        return f"failed: {type(exc).__name__} while fetching, screening or storing it"
    failed = len(answer.get("FailedSOPSequence") or []) if answer is not None else 0
    if failed:
        stats.failed += 1
        return f"failed: the server refused {failed} of {len(results.datasets)} result objects"
    outcome = results.outcome
    stored = " and ".join(["SR"] + (["overlay"] if results.capture is not None else []))
    if isinstance(outcome, Screened):
        stats.screened += 1
        ledger.record(digest, "screened")
        p = outcome.prediction
        band = ", inconclusive" if p.inconclusive else ""
        return (f"{p.label} probability {p.probability:.3f} (threshold {p.threshold:.3f}"
                f"{band}); {stored} stored")
    stats.not_assessed += 1
    ledger.record(digest, "not assessed")
    return f"not assessed ({outcome.reason}); {stored} stored"

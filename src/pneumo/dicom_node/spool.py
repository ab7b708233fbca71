"""The node's durable inbox and outbox: received instances and their result objects as
files in a spool folder, and their state in SQLite.

Everything the node acknowledges must survive a crash, and nothing it has delivered may
be delivered again, so each step is written before it is reported:

- a received instance is written to its file (temporary name, fsync, rename, fsync of
  the folder) and then given a row, all before the C-STORE is answered;
- an instance's result objects are written to files and then, in one transaction, given
  rows and the instance marked screened;
- a result is marked sent right after the destination confirms it.

The one window left is between a destination's confirmation and that mark: a crash
there sends the result again after the restart. Result UIDs are deterministic
(``dicom_results.result_uid``), so the PACS then receives the same instance, never a
second one.

The files hold patient data (the PACS needs it to file the results), so an instance's
files are deleted as soon as all its results are delivered; the rows keep no patient
identifier: a hash of the SOP Instance UID, the outcome and the timings.

The folder is ``$PNEUMO_DATA_DIR/dicom-node`` (``received/``, ``results/``,
``queue.sqlite3``); one node at a time uses it (a lock file says so).
``pneumo dicom-spool`` (``admin.py``) works on the same database beside a running node,
without the lock, in transactions of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

FOLDER = "dicom-node"
DATABASE_FILE = "queue.sqlite3"
LOCK_FILE = "node.lock"
TEMPORARY_SUFFIX = ".partial"

_log = logging.getLogger("pneumo.dicom_node")

#: An image still not screened, or a result still undelivered, this long after the image
#: arrived is overdue: the node logs it at ERROR (once) and ``pneumo dicom-spool status``
#: counts it as needing attention, while the node keeps working on it (a PACS down for a
#: weekend must not lose results).
OVERDUE_AFTER = dt.timedelta(hours=1)

MIGRATIONS = [
    # 1: instances received and the result objects made from them
    """
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        uid_hash TEXT NOT NULL,             -- sha256 of the SOP Instance UID, never the UID
        model_version TEXT NOT NULL,        -- another model screens the same image again
        received TEXT NOT NULL,             -- UTC, ISO 8601
        file TEXT,                          -- in received/, NULL once done
        state TEXT NOT NULL CHECK (state IN ('received', 'screened', 'done', 'failed')),
        outcome TEXT,                       -- e.g. 'PNEUMONIA p=0.812', 'not assessed: ...'
        screen_seconds REAL,
        error TEXT,
        UNIQUE (uid_hash, model_version)
    );
    CREATE INDEX instances_state ON instances (state, id);
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        instance_id INTEGER NOT NULL REFERENCES instances (id),
        kind TEXT NOT NULL,                 -- 'sr' or 'sc'
        sop_instance_uid TEXT NOT NULL UNIQUE,  -- made by pneumo, deterministic
        file TEXT,                          -- in results/, NULL once sent
        sent TEXT,                          -- UTC, when the destination confirmed it
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try TEXT NOT NULL,             -- UTC, not sent before then
        last_error TEXT
    );
    CREATE INDEX results_due ON results (sent, next_try);
    """,
]


class SpoolError(RuntimeError):
    """The spool cannot be used, in one line an operator can act on."""


class SpoolBusy(SpoolError):
    """Another node already uses this data folder."""


def _unusable(exc: OSError | sqlite3.Error, where: Path) -> SpoolError:
    if isinstance(exc, OSError):
        what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    else:
        what = f"its database: {exc}"
    return SpoolError(f"cannot keep the spool in {where} ({what}): --data-dir or "
                      "$PNEUMO_DATA_DIR names another folder")


def take_lock(root: Path):
    """The node's lock on the spool in ``root``, held: an open file, closing it lets go;
    None when another process holds it. OSError when the lock file cannot be opened
    (or locked)."""
    handle = open(root / LOCK_FILE, "a")  # noqa: SIM115 (held open)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return handle


def uid_hash(sop_instance_uid: str) -> str:
    """What the node keeps and logs of a SOP Instance UID: enough to recognise it again,
    nothing to look it up by in the PACS."""
    return hashlib.sha256(str(sop_instance_uid).strip().encode()).hexdigest()


def row_tag(instance_id: int, key: str) -> str:
    """How logs and ``pneumo dicom-spool`` name an instance: its row id and the first
    characters of its UID's hash."""
    return f"#{instance_id} [{key[:10]}]"


def describe_age(seconds: float) -> str:
    """A wait in the largest units that say it (``45 s``, ``12 min``, ``2 h 5 min``,
    ``3 d 4 h``), for log lines and ``pneumo dicom-spool status``."""
    seconds = max(int(seconds), 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if days:
        return f"{days} d {hours % 24} h" if hours % 24 else f"{days} d"
    if hours:
        return f"{hours} h {minutes % 60} min" if minutes % 60 else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


class OverdueReport:
    """The node's ERROR line about rows overdue (instances to screen, results to deliver),
    said once per row: at each look, one line for the rows overdue since the last one,
    naming the oldest of them (rows come oldest first); a row no longer overdue
    (screened, delivered, purged) drops out, and a restart reports those still waiting
    once more. ``what``: the rows and what they still are not ("result(s) still not
    delivered to ..."); ``since``: what the wait counts from ("they arrived")."""

    def __init__(self, what: str, since: str, overdue_after: dt.timedelta,
                 key: Callable[[Any], int]):
        self.what = what
        self.since = since
        self.overdue_after = overdue_after
        self.key = key  # a row's id
        self._reported: set[int] = set()

    def look(self, overdue: list, about_oldest: Callable[[Any], str] = lambda row: "",
             then: Callable[[], str] = lambda: "see pneumo dicom-spool status") -> None:
        """``overdue``: every row overdue now (each has ``tag`` and ``received``);
        ``about_oldest`` adds to what the line says of the oldest new one, ``then`` ends
        the line (both called only when there is one to say)."""
        new = [row for row in overdue if self.key(row) not in self._reported]
        self._reported = {self.key(row) for row in overdue}
        if not new:
            return
        oldest = new[0]
        _log.error("%d %s more than %s after %s (oldest: %s, %s%s); %s", len(new), self.what,
                   describe_age(self.overdue_after.total_seconds()), self.since, oldest.tag,
                   describe_age((now_utc() - oldest.received).total_seconds()),
                   about_oldest(oldest), then())


def where_it_failed(exc: BaseException) -> str:
    """An unexpected error for a debug line: its type and the frames it was raised
    through, without its message, which (pydicom's, highdicom's) can quote a header
    value such as the patient's name."""
    return f"{type(exc).__name__}, raised at:\n" + \
        "".join(traceback.format_tb(exc.__traceback__)).rstrip()


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")


def write_durably(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all, on disk when this returns: a reader (or
    the node after a crash) never sees half a file."""
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """The rename itself on disk (POSIX keeps directory entries apart from file data)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclasses.dataclass
class InstanceRow:
    """A row of the instances table, named the way logs and ``pneumo dicom-spool`` name it."""

    id: int
    uid_hash: str

    @property
    def tag(self) -> str:
        """The row id and the first characters of the UID's hash."""
        return row_tag(self.id, self.uid_hash)


@dataclasses.dataclass
class Instance(InstanceRow):
    file: Path | None


@dataclasses.dataclass
class Result:
    id: int
    instance_id: int
    file: Path
    attempts: int


@dataclasses.dataclass
class Waiting:
    """An undelivered result, as the operator sees it: no UID, no file name."""
    result_id: int
    instance_id: int
    uid_hash: str
    kind: str
    received: dt.datetime  # when its image arrived: what it has waited since
    attempts: int
    next_try: dt.datetime
    last_error: str | None

    @property
    def tag(self) -> str:
        """Its instance's tag and its kind (``sr``, ``sc``)."""
        return f"{row_tag(self.instance_id, self.uid_hash)} {self.kind}"


def waiting_results(db: sqlite3.Connection, received_before: dt.datetime | None = None
                    ) -> list[Waiting]:
    """Undelivered results, oldest image first; only those whose image arrived before
    ``received_before`` if given. ``db`` is the node's connection or the admin's."""
    cutoff = _stamp(received_before) if received_before else "9999"
    rows = db.execute(
        "SELECT r.id, i.id, i.uid_hash, r.kind, i.received, r.attempts, r.next_try, "
        "r.last_error FROM results r JOIN instances i ON i.id = r.instance_id "
        "WHERE r.sent IS NULL AND i.received < ? ORDER BY i.received, r.id",
        (cutoff,)).fetchall()
    return [Waiting(r[0], r[1], r[2], r[3], dt.datetime.fromisoformat(r[4]), r[5],
                    dt.datetime.fromisoformat(r[6]), r[7]) for r in rows]


@dataclasses.dataclass
class ToScreen:
    """An instance received and not yet screened, as the operator sees it."""
    instance_id: int
    uid_hash: str
    received: dt.datetime

    @property
    def tag(self) -> str:
        return row_tag(self.instance_id, self.uid_hash)


def waiting_to_screen(db: sqlite3.Connection, received_before: dt.datetime | None = None
                      ) -> list[ToScreen]:
    """Instances received and not yet screened (the one the screener is on among them),
    in the order the screener takes them; only those that arrived before
    ``received_before`` if given."""
    cutoff = _stamp(received_before) if received_before else "9999"
    rows = db.execute("SELECT id, uid_hash, received FROM instances WHERE state = 'received' "
                      "AND received < ? ORDER BY id", (cutoff,)).fetchall()
    return [ToScreen(r[0], r[1], dt.datetime.fromisoformat(r[2])) for r in rows]


@dataclasses.dataclass
class Received:
    instance: Instance
    duplicate: bool  # already received (and kept) before: nothing new was written


class Spool:
    """The spool folder and its database. Thread-safe: the association threads, the
    screener and the sender share one connection behind a lock (every statement is
    short; the association threads come and go, so per-thread connections would not
    be closed)."""

    def __init__(self, data_dir: str | Path, model_version: str):
        self.root = Path(data_dir) / FOLDER
        self.received_dir = self.root / "received"
        self.results_dir = self.root / "results"
        self.model_version = model_version
        try:
            for folder in (self.root, self.received_dir, self.results_dir):
                folder.mkdir(parents=True, exist_ok=True)
            # the files hold patient data: only the node's own user may open the folder
            self.root.chmod(0o700)
            self._lock_handle = take_lock(self.root)
        except OSError as exc:
            raise _unusable(exc, self.root) from None
        if self._lock_handle is None:
            raise SpoolBusy(f"another pneumo dicom-listen already uses {self.root}")
        self._mutex = threading.Lock()
        try:
            self._db = sqlite3.connect(self.root / DATABASE_FILE, timeout=30,
                                       isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._lock_handle.close()
            raise _unusable(exc, self.root) from None
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
            self._db.execute("PRAGMA journal_mode = WAL")
            self._recover()
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise _unusable(exc, self.root) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._mutex:
            self._db.close()
            self._lock_handle.close()

    def reader(self, timeout: float = 5.0) -> sqlite3.Connection:
        """A connection of its own to the spool's database, for reading only: for a look
        that must not wait on the lock the workers share, which a stuck one may hold (the
        database is in WAL mode, so it does not wait on their writes either). For one
        thread at a time."""
        db = sqlite3.connect(self.root / DATABASE_FILE, timeout=timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA query_only = ON")
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _transaction(self):
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.root / DATABASE_FILE} has schema version {version}; "
                                   f"this pneumo knows up to {len(MIGRATIONS)}: upgrade pneumo")
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    def _recover(self) -> None:
        """After a crash: drop half-written files, and files no row names (written, but
        the crash came before the row: the instance was never acknowledged, so the
        sender sends it again; or results whose rows were never committed)."""
        with self._mutex:
            named = {row[0] for row in self._db.execute(
                "SELECT file FROM instances WHERE file IS NOT NULL "
                "UNION SELECT file FROM results WHERE file IS NOT NULL")}
        for folder in (self.received_dir, self.results_dir):
            for path in folder.iterdir():
                if path.name not in named:
                    # missing_ok: a pneumo dicom-spool purge may be deleting it too
                    path.unlink(missing_ok=True)

    # -- the inbox ---------------------------------------------------------------------

    def receive(self, data: bytes, sop_instance_uid: str) -> Received:
        """Keep one received instance (``data``: its Part 10 bytes); on disk when this
        returns. Raises ``OSError`` or ``sqlite3.Error`` when it cannot be kept."""
        key = uid_hash(sop_instance_uid)
        existing = self._find(key)
        if existing is not None:
            return Received(existing, duplicate=True)
        name = uuid.uuid4().hex + ".dcm"
        path = self.received_dir / name
        write_durably(path, data)
        try:
            with self._transaction() as db:
                row = db.execute("SELECT id FROM instances WHERE uid_hash = ? AND "
                                 "model_version = ?", (key, self.model_version)).fetchone()
                if row is None:
                    cursor = db.execute(
                        "INSERT INTO instances (uid_hash, model_version, received, file, state)"
                        " VALUES (?, ?, ?, ?, 'received')",
                        (key, self.model_version, _stamp(now_utc()), name))
                    return Received(Instance(cursor.lastrowid, key, path), False)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        # the same instance on two associations at once: the other one kept it
        path.unlink(missing_ok=True)
        return Received(self._find(key), duplicate=True)

    def _find(self, key: str) -> Instance | None:
        with self._mutex:
            row = self._db.execute(
                "SELECT id, uid_hash, file FROM instances WHERE uid_hash = ? AND "
                "model_version = ?", (key, self.model_version)).fetchone()
        return None if row is None else self._instance(row)

    def _instance(self, row) -> Instance:
        return Instance(row[0], row[1], self.received_dir / row[2] if row[2] else None)

    def next_to_screen(self) -> Instance | None:
        """The oldest instance received and not yet screened (by whichever model the node
        ran when it arrived: the model it runs now screens it)."""
        with self._mutex:
            row = self._db.execute(
                "SELECT id, uid_hash, file FROM instances WHERE state = 'received' "
                "ORDER BY id LIMIT 1").fetchone()
        return None if row is None else self._instance(row)

    def screened(self, instance: Instance, outcome: str, seconds: float,
                 results: list[tuple[str, str, bytes]]) -> None:
        """Keep the result objects ``(kind, SOP Instance UID, Part 10 bytes)`` of
        ``instance`` and mark it screened, as one step."""
        names = []
        try:
            for kind, sop_instance_uid, data in results:
                name = f"{uuid.uuid4().hex}-{kind}.dcm"
                write_durably(self.results_dir / name, data)
                names.append((kind, sop_instance_uid, name))
            with self._transaction() as db:
                now = _stamp(now_utc())
                unused = []
                for kind, sop_instance_uid, name in names:
                    # a result this node already has (same deterministic UID) is not
                    # delivered twice
                    cursor = db.execute(
                        "INSERT INTO results (instance_id, kind, sop_instance_uid, file, "
                        "next_try) VALUES (?, ?, ?, ?, ?) ON CONFLICT (sop_instance_uid) DO "
                        "NOTHING", (instance.id, kind, sop_instance_uid, name, now))
                    if cursor.rowcount == 0:
                        unused.append(name)
                db.execute("UPDATE instances SET state = 'screened', outcome = ?, "
                           "screen_seconds = ? WHERE id = ?", (outcome, seconds, instance.id))
        except BaseException:
            for _, _, name in names:
                (self.results_dir / name).unlink(missing_ok=True)
            raise
        for name in unused:
            (self.results_dir / name).unlink(missing_ok=True)
        self._finish_if_delivered(instance.id)

    def failed(self, instance: Instance, error: str) -> None:
        """An instance the node could not screen at all: kept (file and row) for someone to
        look at; it gets no result and is not tried again."""
        with self._transaction() as db:
            db.execute("UPDATE instances SET state = 'failed', error = ? WHERE id = ?",
                       (error, instance.id))

    # -- the outbox --------------------------------------------------------------------

    def due_results(self, limit: int = 64) -> list[Result]:
        """Results not yet delivered whose next try has come, oldest first."""
        with self._mutex:
            rows = self._db.execute(
                "SELECT id, instance_id, file, attempts FROM results "
                "WHERE sent IS NULL AND next_try <= ? ORDER BY id LIMIT ?",
                (_stamp(now_utc()), limit)).fetchall()
        return [Result(r[0], r[1], self.results_dir / r[2], r[3]) for r in rows]

    def due_now(self) -> int:
        """Every undelivered result due now (at start-up: whatever made the PACS refuse
        may well be what the restart fixed). Returns how many."""
        with self._transaction() as db:
            return db.execute("UPDATE results SET next_try = ? WHERE sent IS NULL",
                              (_stamp(now_utc()),)).rowcount

    def next_try(self) -> dt.datetime | None:
        """When the earliest undelivered result is due (None: nothing to deliver)."""
        with self._mutex:
            row = self._db.execute(
                "SELECT MIN(next_try) FROM results WHERE sent IS NULL").fetchone()
        return dt.datetime.fromisoformat(row[0]) if row and row[0] else None

    def sent(self, result: Result) -> bool:
        """The destination confirmed ``result``: never send it again. Returns whether its
        instance is done now (every result delivered)."""
        with self._transaction() as db:
            db.execute("UPDATE results SET sent = ?, file = NULL, attempts = attempts + 1 "
                       "WHERE id = ?", (_stamp(now_utc()), result.id))
        result.file.unlink(missing_ok=True)
        return self._finish_if_delivered(result.instance_id)

    def retry_later(self, result: Result, error: str, delay: float) -> None:
        """Delivery failed: try again in ``delay`` seconds."""
        due = now_utc() + dt.timedelta(seconds=delay)
        with self._transaction() as db:
            db.execute("UPDATE results SET attempts = attempts + 1, last_error = ?, "
                       "next_try = ? WHERE id = ?", (error, _stamp(due), result.id))

    def _finish_if_delivered(self, instance_id: int) -> bool:
        """An instance whose results are all delivered is done: its file (the patient's
        data) is deleted. Returns whether it is done."""
        with self._transaction() as db:
            row = db.execute("SELECT file, state FROM instances WHERE id = ?",
                             (instance_id,)).fetchone()
            waiting = db.execute("SELECT COUNT(*) FROM results WHERE instance_id = ? AND "
                                 "sent IS NULL", (instance_id,)).fetchone()[0]
            if row is None or row[1] != "screened" or waiting:
                return row is not None and row[1] == "done"
            db.execute("UPDATE instances SET state = 'done', file = NULL WHERE id = ?",
                       (instance_id,))
        if row[0]:
            (self.received_dir / row[0]).unlink(missing_ok=True)
        return True

    def summary(self, instance_id: int) -> dict:
        """The row of one instance, for its log line."""
        with self._mutex:
            row = self._db.execute(
                "SELECT uid_hash, outcome, screen_seconds, received, (SELECT COUNT(*) FROM "
                "results WHERE instance_id = ?) FROM instances WHERE id = ?",
                (instance_id, instance_id)).fetchone()
        return {"tag": row_tag(instance_id, row[0]), "outcome": row[1],
                "screen_seconds": row[2], "received": dt.datetime.fromisoformat(row[3]),
                "results": row[4]}

    def overdue(self, after: dt.timedelta = OVERDUE_AFTER) -> list[Waiting]:
        """Undelivered results whose image arrived more than ``after`` ago."""
        with self._mutex:
            return waiting_results(self._db, now_utc() - after)

    def counts(self) -> dict[str, int]:
        """Instances by state and undelivered results: for the start-up line."""
        with self._mutex:
            counts = dict(self._db.execute(
                "SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall())
            counts["undelivered"] = self._db.execute(
                "SELECT COUNT(*) FROM results WHERE sent IS NULL").fetchone()[0]
        return counts

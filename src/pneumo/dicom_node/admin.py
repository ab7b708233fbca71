"""``pneumo dicom-spool``: what waits in the node's spool, and what an operator does about
it, beside a running node or without one.

- ``status``: instances by state, results waiting for delivery, the oldest wait, the
  failed instances, the instances overdue to be screened and the waiting results with
  their last error and attempts; named by the tags the node's log uses, never by an
  identifier or a UID;
- ``retry``: failed instances back in the queue to screen, undelivered results due now
  (an operator who fixed the PACS need not wait out the back-off);
- ``purge``: failed instances forgotten, their files (patient data) deleted; with an age,
  also instances whose results are still undelivered that long after their image
  arrived.

Both act on every such row, or with ``--tag`` on the one instance named as the node's
log and ``status`` name it (``#12``, ``#12 [3f9a0c2b1d]``; the hash, when given, is
checked, since a row number can come back for another image after a purge). ``purge
--tag`` also takes an instance whose results are undelivered, whatever their age, and
one still to be screened while no node runs (an image that hangs the screener at every
start).

It works beside a running node, so that ``retry`` helps when it matters (the node is
running, its back-off has reached 5 minutes) and ``status`` can be a monitoring check:

- it never waits for the node's lock, never runs the node's recovery (which deletes
  files no row names: a running node's files are written before their rows), never
  migrates; only ``purge --tag`` of an instance still to be screened takes the lock, for
  the moment it lists or deletes it (listing without ``--yes`` too, so that the listing
  says what ``--yes`` would do), and only when no node holds it (else it refuses: the
  node may be screening that instance);
- each action is one SQLite transaction (``BEGIN IMMEDIATE`` for changes: the node's
  own transactions are milliseconds long and wait for it, as it waits for them); the
  database is in WAL mode, so a reader never blocks the node;
- it changes only rows the node no longer works on (failed instances, results waiting
  for a retry) and never writes a file; it deletes files only after their rows are gone,
  so a crash in between leaves files no row names, which the node deletes at its next
  start.

A running node takes up what ``retry`` made due within 30 seconds (its screener looks
every 5, its sender at least every 30); a stopped node at its start. A result being sent
at the very moment it is purged may still arrive (the PACS then has it; the node notes
nothing). An image the PACS sends again after its instance was purged is screened afresh.

Run it as the node's user: files SQLite makes beside the database (``-wal``, ``-shm``)
as another user (root) would lock the node out, so another user is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
import sqlite3
from pathlib import Path

from .spool import (DATABASE_FILE, FOLDER, LOCK_FILE, MIGRATIONS, OVERDUE_AFTER, InstanceRow,
                    SpoolError, ToScreen, Waiting, _stamp, describe_age, now_utc, row_tag, take_lock,
                    waiting_results, waiting_to_screen)

BUSY_TIMEOUT = 15.0  # seconds: the node's transactions are milliseconds long
#: How soon a running node takes up what ``retry`` made due (its sender's longest idle
#: wait; its screener's is shorter).
PICKED_UP_WITHIN = 30

#: An instance as an operator pastes it from the node's log or from ``status``: ``#12``,
#: ``12``, ``#12 [3f9a0c2b1d]``, ``instance #12 [3f9a0c2b1d]:``, or a result's
#: ``#12 [3f9a0c2b1d] sr`` (which names its instance).
_TAG = re.compile(r"(?:instance\s+)?#?(\d{1,18})(?:\s*\[([0-9a-f]{1,64})\])?(?:\s+s[rc])?:?")


@dataclasses.dataclass(frozen=True)
class Tag:
    """One instance, as ``--tag`` names it: its row, and perhaps the start of its UID's
    hash, which is checked (a row number can come back for another image after a
    purge)."""

    row: int
    hash_start: str | None
    text: str  # as given, for messages

    @classmethod
    def parse(cls, text: str) -> Tag:
        match = _TAG.fullmatch(text.strip().lower())
        if not match:
            raise ValueError(f"--tag {text!r}: expected an instance's tag as the node's log "
                             "and pneumo dicom-spool status print it, e.g. '#12' or "
                             "'#12 [3f9a0c2b1d]'")
        return cls(int(match[1]), match[2], text.strip())


@dataclasses.dataclass
class Tagged(InstanceRow):
    """The instance a ``Tag`` names, found in the spool."""

    state: str
    received: dt.datetime


@dataclasses.dataclass
class FailedInstance(InstanceRow):
    """An instance the node could not screen: kept, with its file, for someone to see."""

    received: dt.datetime
    error: str | None
    has_file: bool


@dataclasses.dataclass
class Status:
    """The spool at one moment (one read transaction)."""

    root: Path
    now: dt.datetime
    overdue_after: dt.timedelta
    states: dict[str, int]  # instances by state: received, screened, done, failed
    delivered: int
    waiting: list[Waiting]  # undelivered results, oldest image first
    failed: list[FailedInstance]
    to_screen: list[ToScreen]  # instances still to be screened, in the screener's order

    @property
    def overdue(self) -> list[Waiting]:
        return [w for w in self.waiting if self.now - w.received > self.overdue_after]

    @property
    def overdue_to_screen(self) -> list[ToScreen]:
        """Instances still not screened ``overdue_after`` after they arrived: the
        screener is stuck or far behind (the node logs them at ERROR too)."""
        return [t for t in self.to_screen if self.now - t.received > self.overdue_after]

    @property
    def oldest(self) -> tuple[dt.timedelta, str] | None:
        """The oldest image still waiting, to be screened or for its results to be
        delivered: how long it has waited, and what it waits as (tag and stage)."""
        candidates = []
        if self.to_screen:
            first = min(self.to_screen, key=lambda t: t.received)
            candidates.append((first.received, f"{first.tag}, to be screened"))
        if self.waiting:
            first = self.waiting[0]
            candidates.append((first.received, f"{row_tag(first.instance_id, first.uid_hash)}"
                                               ", results waiting for delivery"))
        if not candidates:
            return None
        received, what = min(candidates)
        return self.now - received, what

    @property
    def needs_attention(self) -> bool:
        """Failed instances, instances overdue to be screened or overdue results: what
        ``status`` exits 1 for."""
        return bool(self.failed or self.overdue_to_screen or self.overdue)

    def as_dict(self) -> dict:
        """For ``status --json``: the same facts, ages in seconds."""
        oldest = self.oldest
        return {
            "spool": str(self.root),
            "instances": {state: self.states.get(state, 0)
                          for state in ("received", "screened", "done", "failed")},
            "screening": {"waiting": len(self.to_screen),
                          "overdue": len(self.overdue_to_screen)},
            "results": {"waiting": len(self.waiting), "overdue": len(self.overdue),
                        "delivered": self.delivered},
            "overdue_after_seconds": self.overdue_after.total_seconds(),
            "oldest_wait_seconds": round(oldest[0].total_seconds(), 1) if oldest else None,
            "oldest_waiting": oldest[1] if oldest else None,
            "failed": [{"tag": f.tag, "age_seconds": self._age(f.received),
                        "error": f.error, "file_kept": f.has_file} for f in self.failed],
            "overdue_to_screen": [{"tag": t.tag, "age_seconds": self._age(t.received)}
                                  for t in self.overdue_to_screen],
            "waiting": [{"tag": w.tag, "age_seconds": self._age(w.received),
                         "overdue": self.now - w.received > self.overdue_after,
                         "attempts": w.attempts, "last_error": w.last_error,
                         "next_try_in_seconds": max(self._until(w.next_try), 0.0)}
                        for w in self.waiting],
        }

    def _age(self, moment: dt.datetime) -> float:
        return round((self.now - moment).total_seconds(), 1)

    def _until(self, moment: dt.datetime) -> float:
        return round((moment - self.now).total_seconds(), 1)

    def text(self, limit: int = 20) -> str:
        """What ``status`` prints: counts, the oldest wait, then the failed instances, the
        instances overdue to be screened and the waiting results (at most ``limit`` of
        each)."""
        s = self.states
        overdue = self.overdue
        late = {w.result_id for w in overdue}
        overdue_after = describe_age(self.overdue_after.total_seconds())
        stuck = self.overdue_to_screen
        lines = [
            f"spool: {self.root}",
            f"instances: {s.get('received', 0)} to screen"
            + (f" ({len(stuck)} overdue: arrived more than {overdue_after} ago)" if stuck
               else "")
            + f", {s.get('screened', 0)} with results waiting, {s.get('done', 0)} done, "
            f"{s.get('failed', 0)} failed",
            f"results: {len(self.waiting)} waiting for delivery ({len(overdue)} overdue: "
            f"image arrived more than {overdue_after} ago), {self.delivered} delivered",
        ]
        oldest = self.oldest
        lines.append(f"oldest waiting: {describe_age(oldest[0].total_seconds())} "
                     f"({oldest[1]})" if oldest else "oldest waiting: nothing waits")
        if self.failed:
            lines.append("failed (not tried again; the files hold patient data: "
                         "pneumo dicom-spool retry, or purge):")
            for f in self.failed[:limit]:
                kept = "" if f.has_file else "; file missing"
                lines.append(f"  {f.tag}  arrived {describe_age(self._age(f.received))} ago"
                             f"  error: {f.error or 'unknown'}{kept}")
            lines.extend(_more(len(self.failed), limit))
        if stuck:
            lines.append(f"not screened more than {overdue_after} after they arrived (the "
                         "screener is stuck on one, or far behind; see the node's log):")
            lines.extend(f"  {t.tag}  arrived {describe_age(self._age(t.received))} ago"
                         for t in stuck[:limit])
            lines.extend(_more(len(stuck), limit))
        if self.waiting:
            lines.append("waiting for delivery (oldest first):")
            for w in self.waiting[:limit]:
                due = self._until(w.next_try)
                when = f"next try in {describe_age(due)}" if due > 0 else "due now"
                flag = "  OVERDUE" if w.result_id in late else ""
                lines.append(f"  {w.tag}  arrived {describe_age(self._age(w.received))} ago"
                             f"{flag}  {w.attempts} attempt(s), {when}  last error: "
                             f"{w.last_error or 'none yet'}")
            lines.extend(_more(len(self.waiting), limit))
        return "\n".join(lines)


def _more(count: int, limit: int) -> list[str]:
    return [f"  ... and {count - limit} more (--limit)"] if count > limit else []


@dataclasses.dataclass
class Retried:
    instances: int  # failed instances back in the queue to screen
    results: int  # undelivered results due now
    without_file: list[str]  # tags of failed instances left failed: no file to screen
    only: Tagged | None = None  # the one instance --tag named

    def text(self) -> str:
        if not (self.instances or self.results or self.without_file):
            if self.only is None:
                return "nothing to retry: no failed instance, no undelivered result"
            why = {"received": "it waits to be screened, and the node screens it in turn",
                   "done": "it is done, its results delivered"}.get(self.only.state, "")
            return f"nothing to retry: {self.only.tag}" + (f" ({why})" if why else "")
        then = f"A running node takes them up within {PICKED_UP_WITHIN} s, a stopped one " \
               "at its next start."
        if self.only is not None:
            if self.without_file:
                return f"{self.only.tag} failed and has no file left to screen, so it stays " \
                       "failed: purge it"
            what = "back in the queue to screen" if self.instances else \
                f"{self.results} undelivered result(s) due now"
            return f"{self.only.tag}: {what}. {then}"
        lines = [f"{self.instances} failed instance(s) back in the queue to screen; "
                 f"{self.results} undelivered result(s) due now. {then}"]
        if self.without_file:
            lines.append(f"{len(self.without_file)} failed instance(s) have no file left to "
                         f"screen and stay failed ({', '.join(self.without_file)}): purge "
                         "them")
        return "\n".join(lines)


@dataclasses.dataclass
class Abandoned(InstanceRow):
    """An instance whose results are still undelivered past ``purge``'s age."""

    received: dt.datetime
    undelivered: int
    last_error: str | None


@dataclasses.dataclass
class Purge:
    """What ``purge`` deletes (or, without ``--yes``, would delete)."""

    failed: list[FailedInstance]
    abandoned: list[Abandoned]
    results_older_than: dt.timedelta | None
    done: bool = False  # deleted, not only listed
    to_screen: list[ToScreen] = dataclasses.field(default_factory=list)  # --tag, no node
    only: Tagged | None = None  # the one instance --tag named

    def __bool__(self) -> bool:
        return bool(self.failed or self.abandoned or self.to_screen)

    def text(self, now: dt.datetime | None = None) -> str:
        now = now or now_utc()
        verb = "deleted" if self.done else "would delete"
        if not self and self.only is not None:  # the only state left: done
            return f"nothing to purge: {self.only.tag} is done; its files were deleted when " \
                   "its results were delivered"
        if not self:
            scope = "failed instance" if self.results_older_than is None else \
                "failed instance, no result undelivered for more than " \
                f"{describe_age(self.results_older_than.total_seconds())}"
            return f"nothing to purge: no {scope}"
        lines = []
        if self.failed:
            lines.append(f"{verb} {len(self.failed)} failed instance(s) and their files:")
            lines.extend(f"  {f.tag}  arrived {describe_age((now - f.received).total_seconds())}"
                         f" ago  error: {f.error or 'unknown'}" for f in self.failed)
        if self.abandoned:
            undelivered = sum(a.undelivered for a in self.abandoned)
            if self.results_older_than is None:  # named by --tag, whatever its age
                lines.append(f"{verb} {len(self.abandoned)} instance(s) whose results are "
                             f"still undelivered, with {undelivered} undelivered result(s) "
                             "and their files:")
            else:
                age = describe_age(self.results_older_than.total_seconds())
                lines.append(f"{verb} {len(self.abandoned)} instance(s) whose results were "
                             f"still undelivered more than {age} after their image arrived, "
                             f"with {undelivered} undelivered result(s) and their files:")
            lines.extend(f"  {a.tag}  arrived {describe_age((now - a.received).total_seconds())}"
                         f" ago  {a.undelivered} undelivered, last error: "
                         f"{a.last_error or 'none'}" for a in self.abandoned)
        if self.to_screen:
            lines.append(f"{verb} {len(self.to_screen)} instance(s) still to be screened (no "
                         "node runs on this spool) and their files:")
            lines.extend(f"  {t.tag}  arrived {describe_age((now - t.received).total_seconds())}"
                         " ago" for t in self.to_screen)
        if not self.done:
            lines.append("nothing deleted: run again with --yes to delete them (the files "
                         "hold patient data; the rows go too, so an image the PACS sends "
                         "again is screened afresh)")
        return "\n".join(lines)


class SpoolAdmin:
    """The node's spool database, opened for an operator: beside a running node, without
    its lock (see the module's docstring)."""

    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir) / FOLDER
        self.received_dir = self.root / "received"
        self.results_dir = self.root / "results"
        database = self.root / DATABASE_FILE
        try:
            if not database.is_file():
                raise SpoolError(f"no DICOM node spool in {data_dir} ({FOLDER}/{DATABASE_FILE}"
                                 " is made by pneumo dicom-listen at its first start; "
                                 "--data-dir or $PNEUMO_DATA_DIR names another folder)")
            owner = self.root.stat().st_uid
        except PermissionError:
            raise SpoolError(f"cannot open {self.root}: it is not this user's (run pneumo "
                             "dicom-spool as the node's user)") from None
        if owner != os.geteuid():
            raise SpoolError(f"{self.root} belongs to user id {owner}, not to this user "
                             f"({os.geteuid()}): run pneumo dicom-spool as the node's user, "
                             "so that every file beside its database stays the node's")
        try:
            # mode=rw: never create a database where there was none
            self._db = sqlite3.connect(f"{database.resolve().as_uri()}?mode=rw", uri=True,
                                       timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open {database}: {exc}") from None
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self._check_schema(database)
        except BaseException:
            self._db.close()
            raise

    def _check_schema(self, database: Path) -> None:
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"{database} is not a spool database: {exc}") from None
        if version > len(MIGRATIONS):
            raise SpoolError(f"{database} has schema version {version}; this pneumo knows "
                             f"up to {len(MIGRATIONS)}: upgrade pneumo")
        if version < len(MIGRATIONS):
            raise SpoolError(f"{database} has schema version {version}, older than this "
                             "pneumo's: start pneumo dicom-listen once to bring it up to date"
                             if version else f"{database} is not a spool database")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SpoolAdmin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self, write: bool):
        try:
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise SpoolError(f"the spool's database stayed busy for {BUSY_TIMEOUT:.0f} s "
                                 "(the node is writing a lot): nothing changed, try again") \
                    from None
            raise SpoolError(f"the spool's database: {exc}") from None
        except sqlite3.Error as exc:
            raise SpoolError(f"the spool's database: {exc}") from None

    def _failed(self, db: sqlite3.Connection, only: int | None = None
                ) -> list[FailedInstance]:
        """The failed instances (only the one with row ``only``, if given)."""
        rows = db.execute("SELECT id, uid_hash, received, error, file FROM instances "
                          "WHERE state = 'failed' AND (? IS NULL OR id = ?) ORDER BY id",
                          (only, only)).fetchall()
        return [FailedInstance(r[0], r[1], dt.datetime.fromisoformat(r[2]), r[3],
                               bool(r[4]) and (self.received_dir / r[4]).is_file())
                for r in rows]

    # -- status ------------------------------------------------------------------------

    def status(self, overdue_after: dt.timedelta = OVERDUE_AFTER) -> Status:
        with self._transaction(write=False) as db:
            states = dict(db.execute(
                "SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall())
            delivered = db.execute(
                "SELECT COUNT(*) FROM results WHERE sent IS NOT NULL").fetchone()[0]
            to_screen = waiting_to_screen(db)
            waiting = waiting_results(db)
            failed = self._failed(db)
        return Status(self.root, now_utc(), overdue_after, states, delivered, waiting, failed,
                      to_screen)

    def _tagged(self, db: sqlite3.Connection, tag: Tag) -> Tagged:
        """The instance ``tag`` names, or SpoolError (exit 2) saying there is none."""
        row = db.execute("SELECT id, uid_hash, state, received FROM instances WHERE id = ?",
                         (tag.row,)).fetchone()
        if row is None:
            raise SpoolError(f"--tag {tag.text!r}: no instance #{tag.row} in the spool (see "
                             "pneumo dicom-spool status); nothing changed")
        found = Tagged(row[0], row[1], row[2], dt.datetime.fromisoformat(row[3]))
        if tag.hash_start and not found.uid_hash.startswith(tag.hash_start):
            raise SpoolError(f"--tag {tag.text!r}: no such instance in the spool: #{tag.row} "
                             f"is another image now ({found.tag}); nothing changed")
        return found

    def _node_stopped(self):
        """The node's lock, held, when no node holds it (none can start until it is
        closed); None while a node runs."""
        try:
            return take_lock(self.root)
        except OSError as exc:
            raise SpoolError(f"cannot lock {self.root / LOCK_FILE}: {exc.strerror or exc}") \
                from None

    # -- retry -------------------------------------------------------------------------

    def retry(self, tag: Tag | None = None) -> Retried:
        """Failed instances that still have their file back to ``received`` (the screener
        takes them up again); every undelivered result due now; with ``tag``, only those
        of the instance it names. Attempts are kept: they count every try."""
        with self._transaction(write=True) as db:
            only = self._tagged(db, tag) if tag is not None else None
            failed = self._failed(db, only.id if only else None)
            again = [f.id for f in failed if f.has_file]
            db.executemany("UPDATE instances SET state = 'received', error = NULL "
                           "WHERE id = ? AND state = 'failed'", [(i,) for i in again])
            row = only.id if only else None
            results = db.execute("UPDATE results SET next_try = ? WHERE sent IS NULL AND "
                                 "(? IS NULL OR instance_id = ?)",
                                 (_stamp(now_utc()), row, row)).rowcount
        return Retried(len(again), results, [f.tag for f in failed if not f.has_file], only)

    # -- purge -------------------------------------------------------------------------

    def purge(self, results_older_than: dt.timedelta | None = None,
              confirmed: bool = False) -> Purge:
        """Failed instances, and with ``results_older_than`` instances whose results are
        still undelivered that long after their image arrived: listed, or with
        ``confirmed`` deleted, rows first (with their results' rows), then files."""
        with self._transaction(write=confirmed) as db:
            failed = self._failed(db)
            abandoned = []
            if results_older_than is not None:
                abandoned = self._abandoned(db, now_utc() - results_older_than)
            plan = Purge(failed, abandoned, results_older_than)
            if not confirmed or not plan:
                return plan
            files = self._delete(db, [f.id for f in failed] + [a.id for a in abandoned])
        return self._deleted(plan, files)

    def purge_one(self, tag: Tag, confirmed: bool = False) -> Purge:
        """``purge`` of the one instance ``tag`` names, whatever its age: failed, with
        undelivered results, or still to be screened while no node runs."""
        lock = None
        try:
            with self._transaction(write=confirmed) as db:
                only = self._tagged(db, tag)
                plan = Purge([], [], None, only=only)
                if only.state == "failed":
                    plan.failed = self._failed(db, only.id)
                elif only.state == "screened":
                    plan.abandoned = self._abandoned(db, None, only.id)
                elif only.state == "received":
                    lock = self._node_stopped()
                    if lock is None:
                        raise SpoolError(f"--tag {tag.text!r}: {only.tag} is still to be "
                                         "screened and a node runs on this spool (it may be "
                                         "screening it now): stop the node, then purge it; "
                                         "nothing changed")
                    plan.to_screen = [ToScreen(only.id, only.uid_hash, only.received)]
                if not confirmed or not plan:
                    return plan
                files = self._delete(db, [only.id])
            return self._deleted(plan, files)
        finally:
            if lock is not None:
                lock.close()

    def _abandoned(self, db: sqlite3.Connection, received_before: dt.datetime | None,
                   only: int | None = None) -> list[Abandoned]:
        """Screened instances with undelivered results: those whose image arrived before
        ``received_before`` if given, only the one with row ``only`` if given."""
        cutoff = _stamp(received_before) if received_before else "9999"
        return [Abandoned(r[0], r[1], dt.datetime.fromisoformat(r[2]), r[3], r[4])
                for r in db.execute(
            "SELECT i.id, i.uid_hash, i.received, COUNT(*), MAX(r.last_error) "
            "FROM instances i JOIN results r ON r.instance_id = i.id "
            "WHERE i.state = 'screened' AND r.sent IS NULL AND i.received < ? "
            "AND (? IS NULL OR i.id = ?) GROUP BY i.id ORDER BY i.id",
            (cutoff, only, only)).fetchall()]

    def _delete(self, db: sqlite3.Connection, instance_ids: list[int]) -> list[Path]:
        """Delete the rows of ``instance_ids`` and their results'; returns their files, to
        be deleted once the transaction is committed."""
        ids = [(instance_id,) for instance_id in instance_ids]
        files = []
        for (instance_id,) in ids:
            row = db.execute("SELECT file FROM instances WHERE id = ?",
                             (instance_id,)).fetchone()
            if row and row[0]:
                files.append(self.received_dir / row[0])
            files.extend(self.results_dir / name for (name,) in db.execute(
                "SELECT file FROM results WHERE instance_id = ? AND file IS NOT NULL",
                (instance_id,)))
        db.executemany("DELETE FROM results WHERE instance_id = ?", ids)
        db.executemany("DELETE FROM instances WHERE id = ?", ids)
        return files

    def _deleted(self, plan: Purge, files: list[Path]) -> Purge:
        """The rows are gone: the files go too."""
        plan.done = True
        left = []
        for path in files:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                left.append(f"{path.name}: {exc.strerror or exc}")
        if left:
            raise SpoolError(f"rows deleted, but {len(left)} file(s) could not be: "
                             f"{'; '.join(left[:3])} (the node deletes them at its next "
                             "start)")
        return plan


def open_spool(data_dir: str | Path | None) -> SpoolAdmin:
    """The spool under ``data_dir`` (default: ``$PNEUMO_DATA_DIR`` or
    ``~/.local/share/pneumo``, as the node's)."""
    from ..studies import default_data_dir

    return SpoolAdmin(Path(data_dir) if data_dir else default_data_dir())

"""Kept predictions ("studies") and the readers' feedback, in one SQLite file.

The database lives in a data folder outside the code (``$PNEUMO_DATA_DIR``,
default ``~/.local/share/pneumo``). The app creates and migrates the schema
itself: ``PRAGMA user_version`` says which migrations have run, and each runs
in the same transaction as the version bump, so a crash leaves the previous
schema intact. Every write is one transaction: a crash in the middle of one
loses nothing already stored.

A study keeps what is needed to find a result again and to learn from the
reader's correction: a server-made id, the time, the result, the model's name
and version, and the image as the model saw it (its input size, grayscale PNG)
for ``pneumo export-feedback``; its thumbnail is drawn from that image when a
page asks for it. Never the uploaded file's name, never DICOM header fields.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import sqlite3
import threading
import time
import uuid
import zlib
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .config import CLASS_NAMES

DATA_DIR_ENV = "PNEUMO_DATA_DIR"
DATABASE_FILE = "pneumo.sqlite3"
THUMBNAIL_SIDE = 160
VERDICTS = ("agree", *CLASS_NAMES)  # agree, or correct to NORMAL / PNEUMONIA
PAGE_SIZE = 20

MIGRATIONS = [
    # 1: studies
    """
    CREATE TABLE studies (
        id TEXT PRIMARY KEY,
        created TEXT NOT NULL,              -- UTC, ISO 8601
        label TEXT NOT NULL CHECK (label IN ('NORMAL', 'PNEUMONIA')),
        probability REAL NOT NULL,
        threshold REAL NOT NULL,
        inconclusive INTEGER NOT NULL DEFAULT 0,
        input_status TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        thumbnail BLOB NOT NULL,            -- PNG, long side THUMBNAIL_SIDE (dropped in 3)
        model_input BLOB NOT NULL           -- PNG, the model's input (grayscale, its size)
    );
    CREATE INDEX studies_created ON studies (created);
    """,
    # 2: feedback, one current verdict per study
    """
    CREATE TABLE feedback (
        study_id TEXT PRIMARY KEY REFERENCES studies (id) ON DELETE CASCADE,
        verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'NORMAL', 'PNEUMONIA')),
        comment TEXT NOT NULL DEFAULT '',
        updated TEXT NOT NULL
    );
    """,
    # 3: no stored thumbnails; they are drawn from model_input, the same pixels, on request.
    # SQLite rewrites the table once for this; the pages it frees hold later studies.
    """
    ALTER TABLE studies DROP COLUMN thumbnail;
    """,
]


class StudyNotFound(LookupError):
    pass


def default_data_dir() -> Path:
    """``$PNEUMO_DATA_DIR``, else ``$XDG_DATA_HOME/pneumo``, else ``~/.local/share/pneumo``."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "pneumo"


def input_png(model_input: np.ndarray) -> bytes:
    """The model input as the lossless grayscale PNG a study keeps. Huffman coding alone,
    after PNG's row filters: keeping a study sits on the request's path, and on the
    training X-rays this is 20% faster than zlib level 1 and 15% smaller."""
    image = Image.fromarray(np.asarray(model_input, dtype=np.uint8).squeeze(), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_type=zlib.Z_HUFFMAN_ONLY)
    return buffer.getvalue()


def thumbnail_png(png: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """A PNG at most ``side`` pixels a side of the PNG ``png``."""
    with Image.open(io.BytesIO(png)) as image:
        image.thumbnail((side, side), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Study:
    id: str
    created: str
    label: str
    probability: float
    threshold: float
    inconclusive: bool
    input_status: str
    model_name: str
    model_version: str
    verdict: str | None = None
    comment: str = ""
    feedback_updated: str | None = None

    @property
    def reference_label(self) -> str | None:
        """The reader's label: the model's when they agreed, theirs when they corrected it."""
        if self.verdict is None:
            return None
        return self.label if self.verdict == "agree" else self.verdict

    def to_dict(self) -> dict:
        feedback = None
        if self.verdict is not None:
            feedback = {"verdict": self.verdict, "comment": self.comment,
                        "updated": self.feedback_updated}
        return {"id": self.id, "created": self.created, "label": self.label,
                "probability": self.probability, "threshold": self.threshold,
                "inconclusive": self.inconclusive, "input_status": self.input_status,
                "model": {"name": self.model_name, "version": self.model_version},
                "feedback": feedback}


_SELECT = """SELECT s.id, s.created, s.label, s.probability, s.threshold, s.inconclusive,
                    s.input_status, s.model_name, s.model_version,
                    f.verdict, COALESCE(f.comment, ''), f.updated
             FROM studies s LEFT JOIN feedback f ON f.study_id = s.id"""


def _study(row) -> Study:
    return Study(*row[:5], bool(row[5]), *row[6:])


def _use_write_ahead_log(db: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Switch the file to write-ahead logging (kept in the file; see ``StudyStore``).

    The first switch needs the file to itself. When two processes that open a new
    database together switch at the same moment, each holds a shared lock and wants the
    exclusive one; SQLite then answers one of them "database is locked" at once instead
    of waiting out the busy timeout, since the two would wait on each other (seen once
    in the full suite under load). So try again here, a few milliseconds apart; once the
    file is in WAL mode the statement changes nothing and takes no lock."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class StudyStore:
    """The database at ``data_dir / pneumo.sqlite3``, safe from any request thread: each
    thread keeps its own connection.

    The database is in write-ahead-log mode with ``synchronous = FULL``: every
    committed study is on disk before the request answers, and a commit appends to
    one file rather than journalling and rewriting pages; a kept connection skips
    opening the file each time. Keeping a study costs about 0.27 ms of database time
    on the machine of docs/performance.md. Back the file up with SQLite's own
    ``.backup`` (it includes the log), not by copying it.
    """

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DATABASE_FILE
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.migrate()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA synchronous = FULL")
        return db

    @contextlib.contextmanager
    def _db(self):
        """This thread's connection (opened on first use, kept)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        yield db

    @property
    def schema_version(self) -> int:
        with self._db() as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> int:
        """Run the migrations this database has not seen, each with its version bump in one
        transaction; refuses a database from a newer pneumo."""
        with closing(self._connect()) as db:
            while True:
                # The version is read inside the write transaction: several processes or
                # threads opening a new database at once each see the version the previous
                # one left, never one it is about to change.
                db.execute("BEGIN IMMEDIATE")
                try:
                    version = db.execute("PRAGMA user_version").fetchone()[0]
                    if version > len(MIGRATIONS):
                        raise RuntimeError(f"{self.path} has schema version {version}; this "
                                           f"pneumo knows up to {len(MIGRATIONS)}: upgrade pneumo")
                    if version < len(MIGRATIONS):
                        for statement in MIGRATIONS[version].split(";"):
                            if statement.strip():
                                db.execute(statement)
                        db.execute(f"PRAGMA user_version = {version + 1}")
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                if version >= len(MIGRATIONS) - 1:
                    break
            _use_write_ahead_log(db)
            return len(MIGRATIONS)

    def add(self, prediction, model_input: np.ndarray | None, *, input_status: str,
            model_name: str, model_version: str, now: dt.datetime | None = None,
            image_png: bytes | None = None) -> str:
        """Keep one prediction; returns the new study's id. ``image_png``: the model
        input's ``input_png``, when already encoded (then ``model_input`` may be None)."""
        if image_png is None:
            image_png = input_png(model_input)
        study_id = uuid.uuid4().hex
        created = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
        with self._db() as db, db:
            db.execute("BEGIN")
            db.execute(
                "INSERT INTO studies (id, created, label, probability, threshold, inconclusive,"
                " input_status, model_name, model_version, model_input)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                    study_id, created.isoformat(timespec="seconds"), prediction.label,
                    round(float(prediction.probability), 6),
                    round(float(prediction.threshold), 6), int(bool(prediction.inconclusive)),
                    input_status, model_name, model_version, image_png))
        return study_id

    def get(self, study_id: str) -> Study:
        with self._db() as db:
            row = db.execute(_SELECT + " WHERE s.id = ?", (study_id,)).fetchone()
        if row is None:
            raise StudyNotFound(study_id)
        return _study(row)

    def image(self, study_id: str, kind: str = "thumbnail") -> bytes:
        """The study's PNG: ``thumbnail`` or ``model_input``."""
        if kind not in ("thumbnail", "model_input"):
            raise ValueError(kind)
        with self._db() as db:
            row = db.execute("SELECT model_input FROM studies WHERE id = ?",
                             (study_id,)).fetchone()
        if row is None:
            raise StudyNotFound(study_id)
        return thumbnail_png(row[0]) if kind == "thumbnail" else bytes(row[0])

    def search(self, *, since: dt.date | None = None, until: dt.date | None = None,
               label: str | None = None, page: int = 1,
               page_size: int = PAGE_SIZE) -> tuple[list[Study], int]:
        """Studies newest first, from ``since`` to ``until`` (UTC days, inclusive) with
        ``label``; returns ``(page of studies, total matching)``."""
        where, values = [], []
        if since:
            where.append("s.created >= ?")
            values.append(since.isoformat())
        if until:
            where.append("s.created < ?")
            values.append((until + dt.timedelta(days=1)).isoformat())
        if label:
            where.append("s.label = ?")
            values.append(label)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        page = max(1, int(page))
        with self._db() as db:
            total = db.execute("SELECT COUNT(*) FROM studies s" + clause, values).fetchone()[0]
            rows = db.execute(_SELECT + clause + " ORDER BY s.created DESC, s.rowid DESC "
                              "LIMIT ? OFFSET ?", [*values, page_size, (page - 1) * page_size]
                              ).fetchall()
        return [_study(row) for row in rows], int(total)

    def set_feedback(self, study_id: str, verdict: str, comment: str = "",
                     now: dt.datetime | None = None) -> Study:
        """Record (or replace) the reader's verdict on a study."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        comment = (comment or "").strip()
        if len(comment) > 2000:
            raise ValueError("the comment is longer than 2000 characters")
        updated = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
        with self._db() as db, db:
            db.execute("BEGIN")
            if db.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
                raise StudyNotFound(study_id)
            db.execute("INSERT INTO feedback VALUES (?, ?, ?, ?) ON CONFLICT (study_id) DO "
                       "UPDATE SET verdict = excluded.verdict, comment = excluded.comment, "
                       "updated = excluded.updated", (study_id, verdict, comment, updated))
        return self.get(study_id)

    def reviewed(self) -> list[Study]:
        """Every study with feedback, oldest first."""
        with self._db() as db:
            rows = db.execute(_SELECT + " WHERE f.verdict IS NOT NULL ORDER BY s.created").fetchall()
        return [_study(row) for row in rows]


def export_feedback(store: StudyStore, out_dir: str | Path, *,
                    corrections_only: bool = False) -> dict[str, int]:
    """Write reviewed studies as ``out_dir/{NORMAL,PNEUMONIA}/study-<id>.png`` (the image
    as the model saw it, labelled by the reader): a folder ``pneumo train`` and
    ``pneumo calibrate`` accept. Returns the count per class."""
    out_dir = Path(out_dir)
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for study in store.reviewed():
        if corrections_only and study.verdict == "agree":
            continue
        label = study.reference_label
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"study-{study.id}.png").write_bytes(store.image(study.id, "model_input"))
        counts[label] += 1
    return counts

"""The embedded default journal store: one SQLite file in WAL mode.

Durability: every append is one ``BEGIN IMMEDIATE`` transaction committed with
``synchronous=FULL``, so a record is on disk once ``append`` returns; a process killed at any
point leaves either the whole append or none of it.  The file is marked with SQLite's own
``application_id``; a file that is not a SQLite database, or is some other program's database,
is reported and never written to.  Runner exclusivity uses ``flock`` on a lock file per rollout,
which the kernel releases when the holding process dies (even by SIGKILL).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from deploystate.journal import (
    Entry,
    JournalCorrupt,
    JournalError,
    Record,
    busy,
    conflict,
    unknown,
)

APPLICATION_ID = 0x64736A6C  # "dsjl"
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

_SCHEMA = """
CREATE TABLE records (
    rollout_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    action TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    step TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (rollout_id, seq)
) WITHOUT ROWID;
"""


class SQLiteStore:
    """A journal in one SQLite file (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._check_file()
        try:
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as error:
            raise JournalError(f"cannot open journal {self.path}: {error}") from None
        self._lock = threading.Lock()
        try:
            self._prepare()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise JournalCorrupt(f"{self.path} is damaged ({error}); it was not changed. Restore it "
                                 "from a backup or point --store at another file") from None

    def _check_file(self) -> None:
        if not self.path.exists():
            if not self.path.parent.is_dir():
                raise JournalError(f"cannot create journal {self.path}: folder {self.path.parent} "
                                   "does not exist")
            return
        if self.path.is_dir():
            raise JournalError(f"journal path {self.path} is a folder; give a file path")
        with self.path.open("rb") as file:
            head = file.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise JournalCorrupt(f"{self.path} is not a deploystate journal (not a SQLite file); it "
                                 "was not changed. Point --store at another file")

    def _prepare(self) -> None:
        db = self._db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if app_id == 0 and not tables:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                # Re-check inside the write lock: another process may have initialised it.
                if db.execute("PRAGMA application_id").fetchone()[0] == 0:
                    db.execute(_SCHEMA)
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            app_id = APPLICATION_ID
        if app_id != APPLICATION_ID:
            raise JournalCorrupt(f"{self.path} is a SQLite database of another program (application "
                                 f"id {app_id:#x}); it was not changed. Point --store at another file")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise JournalCorrupt(f"{self.path} has journal schema {version}, this deploystate reads "
                                 f"{SCHEMA_VERSION}; use a matching deploystate version")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise JournalCorrupt(f"{self.path} failed SQLite's integrity check ({check}); it was not "
                                 "changed. Restore it from a backup")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")

    def append(self, rollout_id: str, expected_seq: int, entries: Sequence[Entry]) -> list[Record]:
        _check_id(rollout_id)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records WHERE rollout_id = ?",
                                  (rollout_id,)).fetchone()[0]
                if last != expected_seq:
                    raise conflict(rollout_id, expected_seq, last)
                made = [
                    Record(rollout_id, last + i + 1, e.action, e.at, e.actor, e.step, dict(e.data))
                    for i, e in enumerate(entries)
                ]
                db.executemany(
                    "INSERT INTO records (rollout_id, seq, action, at, actor, step, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r.rollout_id, r.seq, r.action, r.at, r.actor, r.step,
                      json.dumps(r.data, sort_keys=True, allow_nan=False)) for r in made],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return made

    def read(self, rollout_id: str, after: int = 0) -> list[Record]:
        with self._lock:
            rows = self._db.execute(
                "SELECT rollout_id, seq, action, at, actor, step, data FROM records "
                "WHERE rollout_id = ? AND seq > ? ORDER BY seq", (rollout_id, after)).fetchall()
        if not rows and (after == 0 or rollout_id not in self.rollouts()):
            raise unknown(rollout_id, self.rollouts())
        return [self._record(row) for row in rows]

    def read_all(self) -> dict[str, list[Record]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT rollout_id, seq, action, at, actor, step, data FROM records "
                "ORDER BY rollout_id, seq").fetchall()
        result: dict[str, list[Record]] = {}
        for row in rows:
            result.setdefault(row[0], []).append(self._record(row))
        return result

    def rollouts(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT rollout_id FROM records")]

    def _record(self, row: tuple[str, int, str, float, str, str | None, str]) -> Record:
        try:
            data = json.loads(row[6])
        except ValueError:
            raise JournalCorrupt(f"{self.path}: record {row[1]} of rollout {row[0]} is damaged "
                                 "(data is not JSON); restore the journal from a backup") from None
        return Record(row[0], row[1], row[2], row[3], row[4], row[5], data)

    @contextlib.contextmanager
    def hold(self, rollout_id: str) -> Iterator[None]:
        _check_id(rollout_id)
        folder = self.path.with_name(self.path.name + ".locks")
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / f"{rollout_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy(rollout_id) from None
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _check_id(rollout_id: str) -> None:
    if not _SAFE_ID.match(rollout_id):
        raise JournalError(f"rollout id {rollout_id!r} is not valid; use letters, digits, '.', '+', "
                           "'_' and '-'")

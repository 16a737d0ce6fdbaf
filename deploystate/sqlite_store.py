"""The embedded default journal store: one SQLite file in WAL mode.

Durability: every append is one ``BEGIN IMMEDIATE`` transaction committed with
``synchronous=FULL``, so a record is on disk once ``append`` returns; a process killed at any
point leaves either the whole append or none of it.  The file is marked with SQLite's own
``application_id``; a file that is not a SQLite database, or is some other program's database,
is reported and never written to.  So is a file with more than one name (hard links): SQLite
keeps the write-ahead log beside the name it opens, so each name would be a journal of its own.

Runner exclusivity (:meth:`SQLiteStore.hold`) is a lock on the journal file itself, one byte per
rollout, so it is the same lock whatever path a process took to the file (``./x``, a symbolic link,
another working folder).  It is an open file description lock (``F_OFD_SETLK``, Linux 3.15 and
later): it belongs to the file, the kernel releases it when the holder dies (even by SIGKILL), and
SQLite closing its own descriptors does not drop it, as it would a plain POSIX lock.  The bytes lie
from 1 TiB on, far from SQLite's own lock bytes (at 1 GiB) and past any journal's end; locks
beyond a file's end are allowed and change nothing in it.  Each process opens the journal file once
for this, however many stores it has on it, and closes it only with the last of them: closing any
descriptor of a file drops every POSIX lock the process holds on it, SQLite's own included
(https://www.sqlite.org/howtocorrupt.html, 2.2).  A process that forks (without exec) shares its
holds with the child.

A journal that cannot be written (file or folder permissions, a read-only mount) is still read;
writes are refused with :class:`JournalReadOnly`, saying why.  In a read-only folder with no
write-ahead log, SQLite reads the file as immutable (no writer can exist there: it would first
have to create the log).  A full disk is a one-line :class:`JournalError`; nothing is written.

Beside the ``records`` the file keeps one row per rollout in ``rollouts``: its last sequence
number and its latest summary, written in the transaction of the append they describe.  So
existence checks, the expected-sequence check, listings and summaries cost the same whatever the
number of rollouts, and never read a record.

Opening a file checks only what it costs nothing to check (the header, the schema version, the
first page of each table); :meth:`SQLiteStore.check` is the full check (``deploystate
check-store``).  Damage found later, in normal use, is reported as :class:`JournalCorrupt`.

Beside the rollouts, each environment has a journal of its own in ``environment_records`` (locks,
claims, what succeeded there), appended with the sequence number expected like a rollout's; and
``deliveries`` keeps how far each notifier has been told each rollout's records.

Schema versions: 1 had ``records`` only; 2 added ``rollouts``; 3 added ``environment_records`` and
``deliveries``.  An older file is upgraded in place when it is opened, in one transaction (a
version-1 file's summaries start stale); one that cannot be written is read as it is (no
environment records, nothing delivered) and its writes are refused.  A file of a newer version is
refused and left as it is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import struct
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from deploystate.journal import (
    MOST_PROBLEMS,
    Entry,
    JournalCorrupt,
    JournalError,
    JournalReadOnly,
    ProblemList,
    Record,
    Summary,
    beyond_last,
    busy,
    check_delivery,
    check_environment_name,
    check_rollout_id,
    conflict,
    env_conflict,
    json_object,
    summary_text,
    unknown,
)

APPLICATION_ID = 0x64736A6C  # "dsjl"
SCHEMA_VERSION = 3
SQLITE_MAGIC = b"SQLite format 3\x00"

_RECORDS_TABLE = """
CREATE TABLE records (
    rollout_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    action TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    step TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (rollout_id, seq)
) WITHOUT ROWID
"""

# One row per rollout, written with each append.  summary_seq is the record the summary
# describes; a summary is stale when summary_seq != last_seq (or NULL: none yet).
_ROLLOUTS_TABLE = """
CREATE TABLE rollouts (
    rollout_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    summary_seq INTEGER,
    summary TEXT
) WITHOUT ROWID
"""

# Every environment's own journal (environment: its name).  No table of last sequence numbers as
# for rollouts: MAX(seq) of one environment is a seek on the primary key.
_ENVIRONMENT_RECORDS_TABLE = """
CREATE TABLE environment_records (
    environment TEXT NOT NULL,
    seq INTEGER NOT NULL,
    action TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    step TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (environment, seq)
) WITHOUT ROWID
"""

# Each environment's summary (its journal replayed up to record seq), written with each append:
# a journal that grows with every rollout is then read from its summary on, not from record 1.
_ENVIRONMENT_SUMMARIES_TABLE = """
CREATE TABLE environment_summaries (
    environment TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    summary TEXT NOT NULL
) WITHOUT ROWID
"""

# The last record of each rollout that each notifier accepted (no row: none yet).
_DELIVERIES_TABLE = """
CREATE TABLE deliveries (
    rollout_id TEXT NOT NULL,
    notifier TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, notifier)
) WITHOUT ROWID
"""

_TABLES = {1: ("records",), 2: ("records", "rollouts"),
           3: ("records", "rollouts", "environment_records", "environment_summaries", "deliveries")}
_COLUMNS = "rollout_id, seq, action, at, actor, step, data"
_ENV_COLUMNS = "environment, seq, action, at, actor, step, data"

# For a journal too old to hold these tables and that cannot be upgraded (read-only): empty stand-ins
# in the connection's temporary schema, so reads need no second path.  Views, so nothing can be
# written to them by mistake (writes are refused before they get here).
_EMPTY_STAND_INS = {
    "environment_records": "CREATE TEMP VIEW environment_records AS SELECT '' AS environment, 0 AS seq, "
                           "'' AS action, 0.0 AS at, '' AS actor, NULL AS step, '' AS data WHERE 0",
    "deliveries": "CREATE TEMP VIEW deliveries AS SELECT '' AS rollout_id, '' AS notifier, 0 AS seq WHERE 0",
    "environment_summaries": "CREATE TEMP VIEW environment_summaries AS SELECT '' AS environment, "
                             "0 AS seq, '' AS summary WHERE 0",
}

# SQLite's primary result codes (the low byte of an extended one), and one extended code.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_FULL = 5, 6, 8, 11, 13
_SQLITE_CANTOPEN, _SQLITE_NOTADB = 14, 26
_SQLITE_READONLY_DIRECTORY = _SQLITE_READONLY | 6 << 8

# The runner locks: one byte per rollout in [_LOCK_BASE, _LOCK_BASE + _LOCK_SPAN) of the journal file.
_LOCK_BASE = _LOCK_SPAN = 1 << 40
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)

_Row = tuple[str, int, str, float, str, str | None, str]


class SQLiteStore:
    """A journal in one SQLite file (created if missing).  Implements :class:`deploystate.ports.Store`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._immutable = False  # read as an immutable file (a read-only folder without a -wal)
        self._old_schema: int | None = None  # the schema of a file read as it is, not upgraded
        file = self._check_file()
        try:
            self._db = self._connect()
            try:
                self._open()
                if file is None:  # SQLite has just made it
                    file = self._check_file()
                    if file is None:
                        raise JournalError(f"cannot open journal {self.path}: it vanished as it was made")
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            if file is not None:
                _release(file)
            raise
        self._file = file
        self._release_file = weakref.finalize(self, _release, file)

    # -- opening ------------------------------------------------------------------------------
    def _check_file(self) -> _File | None:
        """The journal's file, open (None if there is none yet: it can be made)."""
        try:
            if self.path.is_dir():
                raise JournalError(f"journal path {self.path} is a folder; give a file path")
            file = _open_file(self.path)
        except PermissionError:
            raise JournalError(f"cannot read journal {self.path} (permission denied); it was not changed. "
                               f"Make it readable (chmod u+rw {self.path}) or point --store at another "
                               "file") from None
        except OSError as error:
            raise JournalError(f"cannot open journal {self.path}: {error.strerror}") from None
        if file is None:
            folder = self.path.parent
            if not folder.is_dir():
                raise JournalError(f"cannot create journal {self.path}: folder {folder} does not exist")
            why = _not_writable_because(folder)
            if why is not None:
                fix = ("Remount it read-write" if why == _MOUNTED_READ_ONLY else
                       f"Make the folder writable (chmod u+w {folder})")
                raise JournalReadOnly(f"cannot create journal {self.path}: its folder {folder} is read-only "
                                      f"({why}); nothing was written. {fix} or point --store at a "
                                      "writable folder")
            return None
        try:
            links = os.fstat(file.fd).st_nlink
            if links > 1:
                raise JournalError(
                    f"journal {self.path} has {links} names (hard links); SQLite keeps a journal's "
                    "write-ahead log beside the name it is opened by, so each name would be a journal of "
                    "its own; nothing was done. Keep one name (remove the other hard links; a symbolic "
                    "link is fine)")
            head = os.pread(file.fd, len(SQLITE_MAGIC), 0)
            if head and head != SQLITE_MAGIC:
                raise JournalCorrupt(f"{self.path} is not a deploystate journal (not a SQLite file); it "
                                     "was not changed. Point --store at another file")
        except BaseException:
            _release(file)
            raise
        return file

    def _connect(self, *, immutable: bool = False) -> sqlite3.Connection:
        try:
            if immutable:
                return sqlite3.connect(f"{self.path.absolute().as_uri()}?immutable=1", uri=True,
                                       isolation_level=None, check_same_thread=False)
            return sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise JournalError(f"cannot open journal {self.path}: {error}") from None

    def _open(self) -> None:
        try:
            self._prepare()
        except sqlite3.DatabaseError as error:
            real = Path(os.path.realpath(self.path))
            if (error.sqlite_errorcode not in (_SQLITE_READONLY_DIRECTORY, _SQLITE_CANTOPEN)
                    or Path(f"{real}-wal").exists() or _not_writable_because(real.parent) is None):
                self._fail(error)
            # A read-only folder (or mount), and no -wal: SQLite cannot make one to read through, and no
            # writer can either, so the file is all there is and stays as it is.
            self._db.close()
            self._db = self._connect(immutable=True)
            self._immutable = True
            with self._guard():
                self._prepare()

    def _prepare(self) -> None:
        db = self._db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if app_id == 0 and version == 0 and self._empty():
            self._create()
            app_id, version = APPLICATION_ID, SCHEMA_VERSION
        if app_id != APPLICATION_ID:
            raise JournalCorrupt(f"{self.path} is a SQLite database of another program (application "
                                 f"id {app_id:#x}, user_version {version}); it was not changed. Point "
                                 "--store at another file")
        if version > SCHEMA_VERSION:
            raise JournalCorrupt(f"{self.path} has journal schema {version}, newer than schema "
                                 f"{SCHEMA_VERSION} that this deploystate reads; it was not changed. "
                                 "Use a deploystate at least as new as the one that wrote it")
        if version not in _TABLES:
            raise JournalCorrupt(f"{self.path} has journal schema {version}, which no deploystate "
                                 f"wrote (this one reads 1 to {SCHEMA_VERSION}); it was not changed")
        self._require_tables(version)
        db.execute("PRAGMA synchronous=FULL")
        if not self._immutable:
            db.execute("PRAGMA journal_mode=WAL")
        if version < SCHEMA_VERSION:
            try:
                self._upgrade()
            except sqlite3.DatabaseError as error:
                if ((getattr(error, "sqlite_errorcode", None) or 0) & 0xFF) != _SQLITE_READONLY:
                    raise
                # A read-only older journal is read as it is (writes are refused anyway), what it
                # lacks stood in for in this connection only: a schema-1 journal's rollouts worked out
                # from the records; no environment records, nothing delivered.
                if version == 1:
                    db.execute("CREATE TEMP VIEW rollouts AS SELECT rollout_id, MAX(seq) AS last_seq, "
                               "NULL AS summary_seq, NULL AS summary FROM records GROUP BY rollout_id")
                for table, stand_in in _EMPTY_STAND_INS.items():
                    if table not in _TABLES[version]:
                        db.execute(stand_in)
                self._old_schema = version
        # Cheap, unlike quick_check: the first page of each table, so a file whose table roots
        # are damaged is refused on open even by commands that would read only one table.
        for table in _TABLES[SCHEMA_VERSION]:
            db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()

    def _tables(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _empty(self) -> bool:
        """No table, view, index or trigger: a new file, not another program's."""
        return self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None

    def _require_tables(self, version: int) -> None:
        missing = [t for t in _TABLES[version] if t not in self._tables()]
        if missing:
            raise JournalCorrupt(f"{self.path} is a damaged journal (schema {version} without table "
                                 f"{', '.join(missing)}); it was not changed. Restore it from a backup")

    def _create(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        with self._transaction():
            # Re-check inside the write lock: another process may have initialised it.
            if (db.execute("PRAGMA application_id").fetchone()[0] == 0 and self._empty()
                    and db.execute("PRAGMA user_version").fetchone()[0] == 0):
                for table in (_RECORDS_TABLE, _ROLLOUTS_TABLE, _ENVIRONMENT_RECORDS_TABLE,
                              _ENVIRONMENT_SUMMARIES_TABLE, _DELIVERIES_TABLE):
                    db.execute(table)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _upgrade(self) -> None:
        """An older schema to this one, in one transaction, keeping every record: from 1, ``rollouts``
        filled from the records (no summaries); from 1 or 2, the environment journals and the
        delivery positions, empty."""
        db = self._db
        with self._transaction():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return  # another process upgraded it meanwhile
            if version < 2:
                db.execute(_ROLLOUTS_TABLE)
                db.execute("INSERT INTO rollouts (rollout_id, last_seq) "
                           "SELECT rollout_id, MAX(seq) FROM records GROUP BY rollout_id")
            db.execute(_ENVIRONMENT_RECORDS_TABLE)
            db.execute(_ENVIRONMENT_SUMMARIES_TABLE)
            db.execute(_DELIVERIES_TABLE)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite's errors as journal errors: damage is :class:`JournalCorrupt`, never a traceback."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            self._fail(error)

    def _fail(self, error: sqlite3.DatabaseError) -> NoReturn:
        code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            raise JournalCorrupt(f"{self.path} is damaged ({error}); it was not changed. Restore it "
                                 "from a backup or point --store at another file ('deploystate "
                                 "check-store' lists what is wrong)") from None
        if code == _SQLITE_READONLY:
            raise self._read_only(str(error)) from None
        if code == _SQLITE_FULL:
            raise JournalError(f"the disk holding {self.path} is full; nothing was written for this step; "
                               "free space and run again") from None
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            raise JournalError(f"journal {self.path} is locked by another process ({error}); "
                               "nothing was written. Try again") from None
        if isinstance(error, sqlite3.IntegrityError):
            raise JournalCorrupt(f"{self.path} is inconsistent ({error}): its rollouts table "
                                 "disagrees with its records; nothing was written. Run 'deploystate "
                                 "check-store'") from None
        raise JournalError(f"cannot use journal {self.path}: {error}") from None

    def _read_only(self, cause: str) -> JournalReadOnly:
        """The refusal of a write to this journal, saying why it cannot be written."""
        real = Path(os.path.realpath(self.path))
        why = _not_writable_because(real)
        if why is None:
            in_folder = _not_writable_because(real.parent)
            why = (f"{in_folder} on its folder {real.parent}, where SQLite keeps the journal's write-ahead "
                   "log" if in_folder is not None else cause)
        fix = ("Remount it read-write" if why == _MOUNTED_READ_ONLY else
               f"Make it writable (chmod u+w {self.path} and its folder)")
        return JournalReadOnly(f"journal {self.path} is read-only ({why}); nothing was written. {fix} or "
                               "point --store at a writable copy")

    # -- the Store protocol ---------------------------------------------------------------------
    def append(self, rollout_id: str, expected_seq: int, entries: Sequence[Entry],
               summary: Mapping[str, Any] | None = None) -> list[Record]:
        """See :meth:`deploystate.ports.Store.append`.  Records, last seq and summary: one transaction."""
        check_rollout_id(rollout_id)
        text = None if summary is None else summary_text(summary)
        rows = [(e.action, e.at, e.actor, e.step, json.dumps(e.data, sort_keys=True, allow_nan=False))
                for e in entries]
        with self._lock, self._guard(), self._transaction():
            db = self._db
            found = db.execute("SELECT last_seq FROM rollouts WHERE rollout_id = ?",
                               (rollout_id,)).fetchone()
            last = found[0] if found else 0
            if last != expected_seq:
                raise conflict(rollout_id, expected_seq, last)
            if not rows and not found:
                return []  # nothing to append, and no rollout to keep a summary for
            new_last = last + len(rows)
            db.executemany(f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(rollout_id, last + i + 1, *r) for i, r in enumerate(rows)])
            if not found:
                db.execute("INSERT INTO rollouts (rollout_id, last_seq, summary_seq, summary) "
                           "VALUES (?, ?, ?, ?)",
                           (rollout_id, new_last, None if text is None else new_last, text))
            elif text is None:
                db.execute("UPDATE rollouts SET last_seq = ? WHERE rollout_id = ?", (new_last, rollout_id))
            else:
                db.execute("UPDATE rollouts SET last_seq = ?, summary_seq = ?, summary = ? "
                           "WHERE rollout_id = ?", (new_last, new_last, text, rollout_id))
        return [Record(rollout_id, last + i + 1, e.action, e.at, e.actor, e.step, dict(e.data))
                for i, e in enumerate(entries)]

    def read(self, rollout_id: str, after: int = 0) -> list[Record]:
        with self._lock, self._guard():
            db = self._db
            found = db.execute("SELECT last_seq FROM rollouts WHERE rollout_id = ?",
                               (rollout_id,)).fetchone()
            if found is None:
                raise unknown(rollout_id, self._some_rollouts())
            if found[0] <= after:
                return []  # nothing new: no record is read
            rows = db.execute(f"SELECT {_COLUMNS} FROM records WHERE rollout_id = ? AND seq > ? "
                              "ORDER BY seq", (rollout_id, after)).fetchall()
        return [self._record(row) for row in rows]

    def _refuse_old_schema(self) -> None:
        """Writes of what an older, read-only journal has no table for are refused as any write is."""
        if self._old_schema is not None:
            raise self._read_only(f"schema {self._old_schema}, which it cannot be upgraded from")

    def _some_rollouts(self) -> list[str]:
        """The newest few rollout ids (by name), for an error message."""
        rows = self._db.execute("SELECT rollout_id FROM rollouts ORDER BY rollout_id DESC LIMIT 5")
        return [r[0] for r in rows]

    def read_all(self) -> dict[str, list[Record]]:
        with self._lock, self._guard():
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM records ORDER BY rollout_id, seq").fetchall()
        result: dict[str, list[Record]] = {}
        for row in rows:
            result.setdefault(row[0], []).append(self._record(row))
        return result

    def rollouts(self) -> list[str]:
        with self._lock, self._guard():
            return [r[0] for r in self._db.execute("SELECT rollout_id FROM rollouts")]

    def last_seq(self, rollout_id: str) -> int:
        with self._lock, self._guard():
            found = self._db.execute("SELECT last_seq FROM rollouts WHERE rollout_id = ?",
                                     (rollout_id,)).fetchone()
        return int(found[0]) if found else 0

    def summaries(self) -> dict[str, tuple[int, Summary | None]]:
        with self._lock, self._guard():
            rows = self._db.execute(
                "SELECT rollout_id, last_seq, summary_seq, summary FROM rollouts").fetchall()
        result: dict[str, tuple[int, Summary | None]] = {}
        for rollout_id, last, summary_seq, text in rows:
            if summary_seq is None or text is None:
                result[rollout_id] = (last, None)
                continue
            data = json_object(text)
            if data is None:
                raise JournalCorrupt(f"{self.path}: the summary of rollout {rollout_id} is damaged (not "
                                     "a JSON object); restore the journal from a backup")
            result[rollout_id] = (last, Summary(summary_seq, data))
        return result

    def _record(self, row: _Row, of: str = "rollout") -> Record:
        data = json_object(row[6])
        if data is None:
            raise JournalCorrupt(f"{self.path}: record {row[1]} of {of} {row[0]} is damaged "
                                 "(data is not JSON); restore the journal from a backup")
        return Record(row[0], row[1], row[2], row[3], row[4], row[5], data)

    # -- environments and deliveries (the Store protocol) ------------------------------------------
    def env_append(self, environment: str, expected_seq: int, entries: Sequence[Entry],
                   summary: Mapping[str, Any] | None = None) -> list[Record]:
        """See :meth:`deploystate.ports.Store.env_append`: one transaction, like :meth:`append`."""
        check_environment_name(environment)
        rows = [(e.action, e.at, e.actor, e.step, json.dumps(e.data, sort_keys=True, allow_nan=False))
                for e in entries]
        text = None if summary is None else summary_text(summary)
        with self._lock, self._guard():
            self._refuse_old_schema()
            with self._transaction():
                db = self._db
                last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM environment_records "
                                  "WHERE environment = ?", (environment,)).fetchone()[0]
                if last != expected_seq:
                    raise env_conflict(environment, expected_seq, last)
                db.executemany(f"INSERT INTO environment_records ({_ENV_COLUMNS}) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(environment, last + i + 1, *r) for i, r in enumerate(rows)])
                if text is not None and rows:
                    db.execute("INSERT INTO environment_summaries (environment, seq, summary) "
                               "VALUES (?, ?, ?) ON CONFLICT (environment) DO UPDATE SET seq = excluded.seq, "
                               "summary = excluded.summary", (environment, last + len(rows), text))
        return [Record(environment, last + i + 1, e.action, e.at, e.actor, e.step, dict(e.data))
                for i, e in enumerate(entries)]

    def env_summary(self, environment: str) -> Summary | None:
        check_environment_name(environment)
        with self._lock, self._guard():
            row = self._db.execute("SELECT seq, summary FROM environment_summaries WHERE environment = ?",
                                   (environment,)).fetchone()
        if row is None:
            return None
        data = json_object(row[1])
        return None if data is None else Summary(row[0], data)  # unreadable: replay from record 1

    def env_read(self, environment: str, after: int = 0) -> list[Record]:
        check_environment_name(environment)
        with self._lock, self._guard():
            rows = self._db.execute(f"SELECT {_ENV_COLUMNS} FROM environment_records "
                                    "WHERE environment = ? AND seq > ? ORDER BY seq",
                                    (environment, after)).fetchall()
        return [self._record(row, "environment") for row in rows]

    def environments(self) -> list[str]:
        # One seek per environment instead of a pass over every environment record: each step
        # finds the next name after the last one on the primary key.
        with self._lock, self._guard():
            rows = self._db.execute(
                "WITH RECURSIVE names(name) AS (SELECT MIN(environment) FROM environment_records "
                "UNION ALL SELECT (SELECT MIN(environment) FROM environment_records "
                "WHERE environment > name) FROM names WHERE name IS NOT NULL) "
                "SELECT name FROM names WHERE name IS NOT NULL").fetchall()
        return [r[0] for r in rows]

    def delivered(self, rollout_id: str) -> dict[str, int]:
        with self._lock, self._guard():
            rows = self._db.execute("SELECT notifier, seq FROM deliveries WHERE rollout_id = ?",
                                    (rollout_id,)).fetchall()
        return {notifier: int(seq) for notifier, seq in rows}

    def set_delivered(self, rollout_id: str, notifier: str, seq: int) -> None:
        """See :meth:`deploystate.ports.Store.set_delivered`: durable on return, never backwards
        (two deliverers racing keep the further position)."""
        check_delivery(rollout_id, notifier, seq)
        with self._lock, self._guard():
            self._refuse_old_schema()
            with self._transaction():
                db = self._db
                found = db.execute("SELECT last_seq FROM rollouts WHERE rollout_id = ?",
                                   (rollout_id,)).fetchone()
                if found is None:
                    raise unknown(rollout_id, self._some_rollouts())
                if seq > found[0]:
                    raise beyond_last(rollout_id, notifier, seq, found[0])
                if seq == 0:
                    return  # position 0 is "none yet": nothing to keep
                db.execute("INSERT INTO deliveries (rollout_id, notifier, seq) VALUES (?, ?, ?) "
                           "ON CONFLICT (rollout_id, notifier) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                           (rollout_id, notifier, seq))

    @contextlib.contextmanager
    def hold(self, rollout_id: str) -> Iterator[None]:
        """See :meth:`deploystate.ports.Store.hold`: a lock on the journal file (see the module's
        docstring).  Costs one ``fcntl`` to take and one to release; no file is made."""
        check_rollout_id(rollout_id)
        file = self._file
        if not self._release_file.alive:
            raise JournalError(f"journal {self.path} is closed; open it again")
        if file.not_writable is not None or self._immutable:
            raise self._read_only(str(file.not_writable or "its folder cannot take a write-ahead log"))
        setlk = getattr(fcntl, "F_OFD_SETLK", None)
        if setlk is None:
            raise self._no_file_locks(rollout_id)
        offset = _lock_offset(rollout_id)
        with _FILES_LOCK:
            if rollout_id in file.held:  # by another store of this process on this file
                raise busy(rollout_id)
            try:
                fcntl.fcntl(file.fd, setlk, _flock(fcntl.F_WRLCK, offset))
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EACCES):
                    raise busy(rollout_id) from None
                if error.errno == errno.EINVAL:  # a kernel older than 3.15
                    raise self._no_file_locks(rollout_id) from None
                raise JournalError(f"cannot hold rollout {rollout_id}: locking journal {self.path} failed "
                                   f"({error.strerror}); nothing was done. Keep the journal on a local "
                                   "disk") from None
            file.held.add(rollout_id)
        try:
            yield
        finally:
            with _FILES_LOCK:
                try:
                    fcntl.fcntl(file.fd, setlk, _flock(fcntl.F_UNLCK, offset))
                finally:
                    file.held.discard(rollout_id)
                    _close_if_unused(file)

    def _no_file_locks(self, rollout_id: str) -> JournalError:
        return JournalError(f"cannot hold rollout {rollout_id}: deploystate's runner lock needs open file "
                            "description locks (fcntl F_OFD_SETLK, Linux 3.15 or later), which this "
                            "platform does not have; nothing was done")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._release_file()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the full check -----------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Check the whole journal; returns the problems found, one sentence each (empty: all fine).

        For ``deploystate check-store``.  Unlike opening, this reads every page and every record,
        so it takes time in proportion to the journal's size (about 1 s of CPU for 10,000
        rollouts, 240,000 records, on a small machine).  It looks at one consistent snapshot (a
        read transaction: runners may go on appending meanwhile) and never writes.  It reports:

        - what SQLite's ``PRAGMA integrity_check`` finds (damaged pages, broken indexes, ...);
        - a rollout, or an environment, whose records are not numbered 1, 2, ... up to its last
          one (a gap);
        - disagreement between the ``rollouts`` table and the records: a rollout listed with a
          last sequence number other than its last record's, a rollout listed without records,
          records of a rollout that is not listed, a summary that describes a record after the
          last one;
        - a delivery position of a rollout that is not in the journal, or beyond its last record,
          or below record 1;
        - a record's data (of a rollout or an environment), or a summary, that is not a JSON object.

        At most 100 problems of each kind are listed, then how many more there are.  Damage that
        stops a part of the check (SQLite's own check stops at some) is reported as a problem of
        that part, not raised.
        """
        problems: list[str] = []
        steps = [("SQLite integrity check", self._check_sqlite),
                 ("the check of record numbers", self._check_numbering),
                 ("the check of environment record numbers", self._check_environment_numbering),
                 ("the check of the rollouts table", self._check_rollouts_table),
                 ("the check of delivery positions", self._check_deliveries),
                 ("the check of JSON data", self._check_json)]
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN")
                for name, step in steps:
                    try:
                        step(problems)
                    except sqlite3.DatabaseError as error:
                        # SQLite's own check too stops at some damage (it scans tables for NOT NULL)
                        problems.append(f"{name}: stopped, the journal cannot be read past damage "
                                        f"({error}); restore it from a backup")
            except sqlite3.DatabaseError as error:
                problems.append(f"the journal cannot be read ({error}); restore it from a backup")
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
        return problems

    def _check_sqlite(self, problems: list[str]) -> None:
        found = [r[0] for r in self._db.execute(f"PRAGMA integrity_check({MOST_PROBLEMS})")]
        if found != ["ok"]:
            problems += [f"SQLite integrity check: {text}" for text in found]

    def _check_numbering(self, problems: list[str]) -> None:
        self._check_gaps(problems, "records", "rollout_id", "rollout")

    def _check_environment_numbering(self, problems: list[str]) -> None:
        self._check_gaps(problems, "environment_records", "environment", "environment")

    def _check_gaps(self, problems: list[str], table: str, key: str, kind: str) -> None:
        """Each ``key`` of ``table`` (a journal) numbers its records 1, 2, ... without a gap."""
        rows = self._db.execute(
            f"SELECT {key}, COUNT(*), MIN(seq), MAX(seq) FROM {table} GROUP BY {key} "
            "HAVING MIN(seq) != 1 OR COUNT(*) != MAX(seq)")
        listed = ProblemList(problems, f"{kind}s with gaps in their records")
        for name, count, first, last in rows:
            missing = self._db.execute(
                f"SELECT r.seq + 1 FROM {table} r WHERE r.{key} = ? AND r.seq < ? AND NOT EXISTS "
                f"(SELECT 1 FROM {table} n WHERE n.{key} = r.{key} AND n.seq = r.seq + 1) "
                "ORDER BY r.seq LIMIT 1", (name, last)).fetchone()
            gap = 1 if first != 1 else (missing[0] if missing else None)
            where = f"record {gap} is missing" if gap is not None else "records are numbered wrongly"
            listed.add(f"{kind} {name}: {where} ({count} records numbered {first} to {last})")
        listed.close()

    def _check_deliveries(self, problems: list[str]) -> None:
        listed = ProblemList(problems, "delivery positions that name no record")
        for rollout_id, notifier, seq, last in self._db.execute(
                "SELECT d.rollout_id, d.notifier, d.seq, o.last_seq FROM deliveries d "
                "LEFT JOIN rollouts o ON o.rollout_id = d.rollout_id "
                "WHERE o.last_seq IS NULL OR d.seq > o.last_seq OR d.seq < 1 "
                "ORDER BY d.rollout_id, d.notifier"):
            if last is None:
                listed.add(f"rollout {rollout_id}: notifier {notifier} is at record {seq}, but the rollout "
                           "is not in the journal")
            elif seq < 1:
                listed.add(f"rollout {rollout_id}: notifier {notifier} is at record {seq}, which no record "
                           "has")
            else:
                listed.add(f"rollout {rollout_id}: notifier {notifier} is at record {seq}, beyond its last "
                           f"record {last}")
        listed.close()

    def _check_rollouts_table(self, problems: list[str]) -> None:
        db = self._db
        listed = ProblemList(problems, "disagreements between the rollouts table and the records")
        for rollout_id, listed_last, actual in db.execute(
                "SELECT o.rollout_id, o.last_seq, (SELECT MAX(seq) FROM records r "
                "WHERE r.rollout_id = o.rollout_id) AS actual FROM rollouts o "
                "WHERE actual IS NULL OR actual != o.last_seq"):
            if actual is None:
                listed.add(f"rollout {rollout_id} is listed (last record {listed_last}) but has no "
                           "records")
            else:
                listed.add(f"rollout {rollout_id} is listed with last record {listed_last}, its last "
                           f"record is {actual}")
        for rollout_id, last in db.execute(
                "SELECT rollout_id, MAX(seq) FROM records r GROUP BY rollout_id HAVING NOT EXISTS "
                "(SELECT 1 FROM rollouts o WHERE o.rollout_id = r.rollout_id)"):
            listed.add(f"rollout {rollout_id} has records (up to {last}) but is not in the rollouts table")
        for rollout_id, summary_seq, last in db.execute(
                "SELECT rollout_id, summary_seq, last_seq FROM rollouts "
                "WHERE summary_seq > last_seq OR summary_seq < 1 "
                "OR (summary_seq IS NULL) != (summary IS NULL)"):
            listed.add(f"rollout {rollout_id}: its summary describes record {summary_seq}, its last "
                       f"record is {last}" if summary_seq is not None else
                       f"rollout {rollout_id}: a summary without the record it describes")
        listed.close()

    def _check_json(self, problems: list[str]) -> None:
        listed = ProblemList(problems, "records or summaries that are not JSON objects")
        for rollout_id, seq, data in self._db.execute("SELECT rollout_id, seq, data FROM records"):
            if not isinstance(data, str) or json_object(data) is None:
                listed.add(f"rollout {rollout_id}: record {seq}'s data is not a JSON object")
        for environment, seq, data in self._db.execute(
                "SELECT environment, seq, data FROM environment_records"):
            if not isinstance(data, str) or json_object(data) is None:
                listed.add(f"environment {environment}: record {seq}'s data is not a JSON object")
        for rollout_id, text in self._db.execute(
                "SELECT rollout_id, summary FROM rollouts WHERE summary IS NOT NULL"):
            if not isinstance(text, str) or json_object(text) is None:
                listed.add(f"rollout {rollout_id}: its summary is not a JSON object")
        listed.close()






_MOUNTED_READ_ONLY = "its file system is mounted read-only"


def _not_writable_because(path: Path) -> str | None:
    """Why this process cannot write ``path`` (a file or a folder), or None if it can."""
    with contextlib.suppress(OSError):
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return _MOUNTED_READ_ONLY
    if not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0), effective_ids=True):
        return "permission denied"
    return None


# -- the journal file, shared by the stores of a process ---------------------------------------------


class _File:
    """A journal file as this process has it open: one descriptor, whatever path each store took."""

    def __init__(self, key: tuple[int, int], fd: int, not_writable: OSError | None) -> None:
        self.key, self.fd, self.not_writable = key, fd, not_writable
        self.users = 0  # open stores
        self.held: set[str] = set()  # rollouts held through it
        self.spare: list[int] = []  # descriptors of it opened in a race, closed with it


_FILES: dict[tuple[int, int], _File] = {}  # by (device, inode)
_FILES_LOCK = threading.Lock()


def _open_file(path: Path) -> _File | None:
    """The file at ``path`` (one user more), opened if no store of this process has it; None if none."""
    with _FILES_LOCK:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        found = _FILES.get((info.st_dev, info.st_ino))
        if found is None:
            try:
                fd, not_writable = os.open(path, os.O_RDWR | os.O_CLOEXEC), None
            except OSError as error:
                if error.errno not in _NOT_WRITABLE:
                    raise
                fd, not_writable = os.open(path, os.O_RDONLY | os.O_CLOEXEC), error
            opened = os.fstat(fd)
            key = (opened.st_dev, opened.st_ino)
            found = _FILES.get(key)
            if found is None:
                found = _FILES[key] = _File(key, fd, not_writable)
            else:  # the path moved to another file between stat and open, one open here already
                found.spare.append(fd)
        found.users += 1
        return found


def _release(file: _File) -> None:
    with _FILES_LOCK:
        file.users -= 1
        _close_if_unused(file)


def _close_if_unused(file: _File) -> None:
    """Close ``file`` once no store uses it and no rollout is held through it (under _FILES_LOCK)."""
    if file.users == 0 and not file.held and _FILES.get(file.key) is file:
        del _FILES[file.key]
        for fd in (file.fd, *file.spare):
            os.close(fd)


def _lock_offset(rollout_id: str) -> int:
    """The byte of the journal file whose lock is the right to run ``rollout_id``."""
    digest = hashlib.blake2b(rollout_id.encode(), digest_size=8).digest()
    return _LOCK_BASE + int.from_bytes(digest, "big") % _LOCK_SPAN


def _flock(kind: int, offset: int) -> bytes:
    """A ``struct flock`` for the one byte at ``offset`` (l_pid 0, as open file description locks need)."""
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, 1, 0)

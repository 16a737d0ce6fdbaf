"""The embedded default journal store: one SQLite file in WAL mode.

Durability: every append is one ``BEGIN IMMEDIATE`` transaction committed with
``synchronous=FULL``, so a record is on disk once ``append`` returns; a process killed at any
point leaves either the whole append or none of it.  The file is marked with SQLite's own
``application_id``; a file that is not a SQLite database, or is some other program's database,
is reported and never written to.  Runner exclusivity uses ``flock`` on a lock file per rollout,
which the kernel releases when the holding process dies (even by SIGKILL).

Beside the ``records`` the file keeps one row per rollout in ``rollouts``: its last sequence
number and its latest summary, written in the transaction of the append they describe.  So
existence checks, the expected-sequence check, listings and summaries cost the same whatever the
number of rollouts, and never read a record.

Opening a file checks only what it costs nothing to check (the header, the schema version, the
first page of each table); :meth:`SQLiteStore.check` is the full check (``deploystate
check-store``).  Damage found later, in normal use, is reported as :class:`JournalCorrupt`.

Schema versions: 1 had ``records`` only; 2 added ``rollouts``.  A version-1 file is upgraded in
place when it is opened, in one transaction (its summaries start stale); a file of a newer
version is refused and left as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from deploystate.journal import (
    Entry,
    JournalCorrupt,
    JournalError,
    Record,
    Summary,
    busy,
    conflict,
    summary_text,
    unknown,
)

APPLICATION_ID = 0x64736A6C  # "dsjl"
SCHEMA_VERSION = 2
SQLITE_MAGIC = b"SQLite format 3\x00"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_MOST_PROBLEMS = 100  # of one kind, in check()'s answer

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

_TABLES = {1: ("records",), 2: ("records", "rollouts")}
_COLUMNS = "rollout_id, seq, action, at, actor, step, data"

# SQLite's primary result codes (the low byte of an extended one).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26

_Row = tuple[str, int, str, float, str, str | None, str]


class SQLiteStore:
    """A journal in one SQLite file (created if missing).  Implements :class:`deploystate.ports.Store`."""

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
            with self._guard():
                self._prepare()
        except BaseException:
            self._db.close()
            raise

    # -- opening ------------------------------------------------------------------------------
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
        if app_id == 0 and not self._tables():
            self._create()
            app_id = APPLICATION_ID
        if app_id != APPLICATION_ID:
            raise JournalCorrupt(f"{self.path} is a SQLite database of another program (application "
                                 f"id {app_id:#x}); it was not changed. Point --store at another file")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalCorrupt(f"{self.path} has journal schema {version}, newer than schema "
                                 f"{SCHEMA_VERSION} that this deploystate reads; it was not changed. "
                                 "Use a deploystate at least as new as the one that wrote it")
        if version not in _TABLES:
            raise JournalCorrupt(f"{self.path} has journal schema {version}, which no deploystate "
                                 f"wrote (this one reads 1 to {SCHEMA_VERSION}); it was not changed")
        self._require_tables(version)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA journal_mode=WAL")
        if version < SCHEMA_VERSION:
            self._upgrade()
        # Cheap, unlike quick_check: the first page of each table, so a file whose table roots
        # are damaged is refused on open even by commands that would read only one table.
        db.execute("SELECT 1 FROM records LIMIT 1").fetchall()
        db.execute("SELECT 1 FROM rollouts LIMIT 1").fetchall()

    def _tables(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

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
            if db.execute("PRAGMA application_id").fetchone()[0] == 0 and not self._tables():
                db.execute(_RECORDS_TABLE)
                db.execute(_ROLLOUTS_TABLE)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _upgrade(self) -> None:
        """Schema 1 to 2, in one transaction: ``rollouts`` filled from the records, no summaries."""
        db = self._db
        with self._transaction():
            if db.execute("PRAGMA user_version").fetchone()[0] != 1:
                return  # another process upgraded it meanwhile
            db.execute(_ROLLOUTS_TABLE)
            db.execute("INSERT INTO rollouts (rollout_id, last_seq) "
                       "SELECT rollout_id, MAX(seq) FROM records GROUP BY rollout_id")
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
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            raise JournalError(f"journal {self.path} is locked by another process ({error}); "
                               "nothing was written. Try again") from None
        if isinstance(error, sqlite3.IntegrityError):
            raise JournalCorrupt(f"{self.path} is inconsistent ({error}): its rollouts table "
                                 "disagrees with its records; nothing was written. Run 'deploystate "
                                 "check-store'") from None
        raise JournalError(f"cannot use journal {self.path}: {error}") from None

    # -- the Store protocol ---------------------------------------------------------------------
    def append(self, rollout_id: str, expected_seq: int, entries: Sequence[Entry],
               summary: Mapping[str, Any] | None = None) -> list[Record]:
        """See :meth:`deploystate.ports.Store.append`.  Records, last seq and summary: one transaction."""
        _check_id(rollout_id)
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
            data = _json_object(text)
            if data is None:
                raise JournalCorrupt(f"{self.path}: the summary of rollout {rollout_id} is damaged (not "
                                     "a JSON object); restore the journal from a backup")
            result[rollout_id] = (last, Summary(summary_seq, data))
        return result

    def _record(self, row: _Row) -> Record:
        data = _json_object(row[6])
        if data is None:
            raise JournalCorrupt(f"{self.path}: record {row[1]} of rollout {row[0]} is damaged "
                                 "(data is not JSON); restore the journal from a backup")
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
        - a rollout whose records are not numbered 1, 2, ... up to its last one (a gap);
        - disagreement between the ``rollouts`` table and the records: a rollout listed with a
          last sequence number other than its last record's, a rollout listed without records,
          records of a rollout that is not listed, a summary that describes a record after the
          last one;
        - a record's data, or a summary, that is not a JSON object.

        At most 100 problems of each kind are listed, then how many more there are.  Damage that
        stops a part of the check (SQLite's own check stops at some) is reported as a problem of
        that part, not raised.
        """
        problems: list[str] = []
        steps = [("SQLite integrity check", self._check_sqlite),
                 ("the check of record numbers", self._check_numbering),
                 ("the check of the rollouts table", self._check_rollouts_table),
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
        found = [r[0] for r in self._db.execute(f"PRAGMA integrity_check({_MOST_PROBLEMS})")]
        if found != ["ok"]:
            problems += [f"SQLite integrity check: {text}" for text in found]

    def _check_numbering(self, problems: list[str]) -> None:
        rows = self._db.execute(
            "SELECT rollout_id, COUNT(*), MIN(seq), MAX(seq) FROM records GROUP BY rollout_id "
            "HAVING MIN(seq) != 1 OR COUNT(*) != MAX(seq)")
        listed = _Limited(problems, "rollouts with gaps in their records")
        for rollout_id, count, first, last in rows:
            missing = self._db.execute(
                "SELECT r.seq + 1 FROM records r WHERE r.rollout_id = ? AND r.seq < ? AND NOT EXISTS "
                "(SELECT 1 FROM records n WHERE n.rollout_id = r.rollout_id AND n.seq = r.seq + 1) "
                "ORDER BY r.seq LIMIT 1", (rollout_id, last)).fetchone()
            gap = 1 if first != 1 else (missing[0] if missing else None)
            where = f"record {gap} is missing" if gap is not None else "records are numbered wrongly"
            listed.add(f"rollout {rollout_id}: {where} ({count} records numbered {first} to {last})")
        listed.close()

    def _check_rollouts_table(self, problems: list[str]) -> None:
        db = self._db
        listed = _Limited(problems, "disagreements between the rollouts table and the records")
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
        listed = _Limited(problems, "records or summaries that are not JSON objects")
        for rollout_id, seq, data in self._db.execute("SELECT rollout_id, seq, data FROM records"):
            if not isinstance(data, str) or _json_object(data) is None:
                listed.add(f"rollout {rollout_id}: record {seq}'s data is not a JSON object")
        for rollout_id, text in self._db.execute(
                "SELECT rollout_id, summary FROM rollouts WHERE summary IS NOT NULL"):
            if not isinstance(text, str) or _json_object(text) is None:
                listed.add(f"rollout {rollout_id}: its summary is not a JSON object")
        listed.close()


class _Limited:
    """Collects problems of one kind into ``problems``, at most ``_MOST_PROBLEMS`` of them."""

    def __init__(self, problems: list[str], kind: str) -> None:
        self.problems, self.kind, self.count = problems, kind, 0

    def add(self, problem: str) -> None:
        self.count += 1
        if self.count <= _MOST_PROBLEMS:
            self.problems.append(problem)

    def close(self) -> None:
        if self.count > _MOST_PROBLEMS:
            self.problems.append(f"... and {self.count - _MOST_PROBLEMS} more {self.kind}")


def _json_object(text: str) -> dict[str, Any] | None:
    """``text`` decoded if it is a JSON object, else None."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _check_id(rollout_id: str) -> None:
    if not _SAFE_ID.match(rollout_id):
        raise JournalError(f"rollout id {rollout_id!r} is not valid; use letters, digits, '.', '+', "
                           "'_' and '-'")

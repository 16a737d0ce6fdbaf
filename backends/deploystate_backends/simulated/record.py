"""The simulated world's record: its scenario, its virtual time, every trigger, retry, cancel and build.

The record lives in one SQLite file, or in memory when no file is given.  In a file, every
trigger, act, build and clock advance is one ``BEGIN IMMEDIATE`` transaction committed with
``synchronous=FULL`` before the call returns, so a process killed with SIGKILL leaves either all
of a change or none of it, and a process that opens the file later sees every trigger the killed
one was told about.

Reading and decoding the tables on every call cost most of a simulated rollout, so this process
keeps a decoded copy.  Catching it up is cheap because the record is only ever appended to (and
the clock only moves forward): it means reading the rows after the last one seen.  A world in
memory belongs to its one connection, so nothing else can change it and its time lives in
Python (its ``clock`` row keeps the start).  A world file may be shared by several processes:
before answering from the copy, :meth:`Record.refresh` asks SQLite whether another connection
committed since (``PRAGMA data_version``, one cheap statement), and every write first catches
up inside its own write transaction, where nobody else can commit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from deploystate.ports import TriggerRequest
from deploystate_backends.simulated.errors import WorldError
from deploystate_backends.simulated.scenario import Scenario
from deploystate_backends.simulated.timeline import Act

APPLICATION_ID = 0x64737377  # "dssw": deploystate simulated world
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE scenario (id INTEGER PRIMARY KEY CHECK (id = 0), settings TEXT NOT NULL);
CREATE TABLE clock (id INTEGER PRIMARY KEY CHECK (id = 0), now REAL NOT NULL);
CREATE TABLE triggers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    environments TEXT NOT NULL,
    ref TEXT NOT NULL,
    check_mode INTEGER NOT NULL,
    user TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX triggers_by_key ON triggers (key, id);
CREATE TABLE acts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment INTEGER NOT NULL REFERENCES triggers (id),
    kind TEXT NOT NULL CHECK (kind IN ('retry', 'cancel')),
    at REAL NOT NULL
);
CREATE TABLE builds (
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    anchor REAL NOT NULL,
    PRIMARY KEY (package, version)
);
"""

_NO_ACTS: tuple[Act, ...] = ()


@attrs.frozen
class TriggerRecord:
    """One trigger the simulated deployer received, exactly as asked."""

    id: str
    key: str
    version: str
    environments: tuple[str, ...]
    ref: str
    check_mode: bool
    user: str
    at: float


@attrs.frozen
class ActRecord:
    deployment_id: str
    kind: str  # "retry" or "cancel"
    at: float
    seq: int


class Record:
    """One connection to a world's record, and the record as decoded by this process.

    Readers call :meth:`refresh` once, then read a consistent copy through the other methods;
    ``lock`` (re-entrant) keeps threads from interleaving such a sequence with a write.
    ``version`` changes whenever the copy gains rows, so derived caches know when to rebuild;
    an act list (:meth:`acts_of`) is replaced, never changed, so its identity says the same.
    """

    def __init__(self, db: sqlite3.Connection, path: Path | None, scenario: Scenario, *,
                 new: bool = False) -> None:
        self._db = db
        self.path = path
        self.scenario = scenario
        self.lock = threading.RLock()
        self.version = 0
        # Only a file can be written by another connection; in memory this one is the only one.
        self._shared = path is not None
        self._seen_data_version: int | None = None
        self._stale = True
        self._triggers: dict[str, TriggerRecord] = {}
        self._first_by_key: dict[str, str] = {}
        self._acts: list[ActRecord] = []
        self._acts_by_id: dict[str, tuple[Act, ...]] = {}
        self._builds: dict[tuple[str, str], float] = {}
        self._last_trigger = self._last_act = self._last_build = 0
        # A world just made in memory holds nothing to read; a file is read all the same, since
        # another process may have opened it already (and its data_version must be noted).
        if new and not self._shared:
            self._now, self._stale = scenario.start, False
            return
        with self.lock, _transaction(db, write=False):
            self._now = self._stored_time()
            self._catch_up()

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | None, scenario: Scenario | None, *, create: bool) -> Record:
        """The record in ``path`` (made with ``scenario`` if new), or a new one in memory.

        An existing record keeps its own scenario and time: ``scenario`` may be None (use the
        file's) or must equal the file's, so a resumed run cannot silently change the script.
        """
        if path is None:
            return cls._in_memory(scenario or Scenario())
        _check_file(path, create=create)
        try:
            db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise WorldError(f"cannot open simulated world {path}: {error}") from None
        try:
            return cls._prepared(db, path, scenario)
        except sqlite3.DatabaseError as error:
            db.close()
            raise WorldError(f"{path} is damaged ({error}); it was not changed. Start a new world "
                             "file") from None
        except BaseException:
            db.close()
            raise

    @classmethod
    def _prepared(cls, db: sqlite3.Connection, path: Path | None, scenario: Scenario | None) -> Record:
        where = str(path) if path is not None else "in memory"
        if path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        with _transaction(db):
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
            if app_id == 0 and tables == 0:
                made = scenario or Scenario()
                _create_tables(db)
                _start(db, made)
                return cls(db, path, made)
            if app_id != APPLICATION_ID:
                raise WorldError(f"{where} is a SQLite database of another program (application id "
                                 f"{app_id:#x}); it was not changed. Give a new file for the world")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise WorldError(f"{where} is a simulated world of format {version}; this version reads "
                                 f"format {SCHEMA_VERSION}. Start a new world file")
            stored = Scenario.from_settings(json.loads(db.execute("SELECT settings FROM scenario")
                                                       .fetchone()[0]))
        if scenario is not None and scenario != stored:
            differences = _differences(stored, scenario)
            raise WorldError(f"simulated world {where} was made with other settings ({differences}); "
                             "resume with the same settings, with only the world path, or use a new "
                             "world file")
        return cls(db, path, stored)

    @classmethod
    def _in_memory(cls, scenario: Scenario) -> Record:
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        image = _empty_image()
        if image is not None:
            db.deserialize(image)
        with _transaction(db):
            if image is None:
                _create_tables(db)
            _start(db, scenario)
        return cls(db, None, scenario, new=True)

    def close(self) -> None:
        with self.lock:
            self._db.close()

    # -- keeping the copy current ---------------------------------------------------------------
    def refresh(self) -> None:
        """Catch up with whatever another connection committed since this one last looked."""
        with self.lock:
            if self._stale or (self._shared and self._data_version() != self._seen_data_version):
                with _transaction(self._db, write=False):
                    self._catch_up()

    def _catch_up(self) -> None:
        """Read what is new; only inside a transaction, so every table is read at one moment."""
        if self._stale:
            self._forget_rows()
        elif not self._shared or self._data_version() == self._seen_data_version:
            return
        if self._shared:
            # A file's time may have been moved by another process; a memory world's lives here.
            self._now = self._stored_time()
            self._seen_data_version = self._data_version()
        self._read_triggers()
        self._read_acts()
        self._read_builds()
        self._stale = False

    def _forget_rows(self) -> None:
        self._triggers, self._first_by_key, self._acts, self._acts_by_id, self._builds = {}, {}, [], {}, {}
        self._last_trigger = self._last_act = self._last_build = 0
        self.version += 1

    def _data_version(self) -> int:
        # Changes whenever another connection commits to the file; never for this one's commits.
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _stored_time(self) -> float:
        return float(self._db.execute("SELECT now FROM clock").fetchone()[0])

    def _read_triggers(self) -> None:
        rows = self._db.execute("SELECT id, key, version, environments, ref, check_mode, user, at "
                                "FROM triggers WHERE id > ? ORDER BY id", (self._last_trigger,)).fetchall()
        for row in rows:
            record = _trigger_record(row)
            self._triggers[record.id] = record
            self._first_by_key.setdefault(record.key, record.id)
        if rows:
            self._last_trigger = rows[-1][0]
            self.version += 1

    def _read_acts(self) -> None:
        rows = self._db.execute("SELECT seq, deployment, kind, at FROM acts WHERE seq > ? ORDER BY seq",
                                (self._last_act,)).fetchall()
        for seq, deployment, kind, at in rows:
            deployment_id = str(deployment)
            self._acts.append(ActRecord(deployment_id, kind, at, seq))
            self._acts_by_id[deployment_id] = (*self._acts_by_id.get(deployment_id, _NO_ACTS),
                                               Act(at, seq, kind))
        if rows:
            self._last_act = rows[-1][0]
            self.version += 1

    def _read_builds(self) -> None:
        # Builds are never deleted, so their rowids only grow, like the other tables' ids.
        rows = self._db.execute("SELECT rowid, package, version, anchor FROM builds WHERE rowid > ? "
                                "ORDER BY rowid", (self._last_build,)).fetchall()
        for _rowid, package, version, anchor in rows:
            self._builds[(package, version)] = float(anchor)
        if rows:
            self._last_build = rows[-1][0]
            self.version += 1

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write transaction that starts from the current record (nobody else commits meanwhile)."""
        with self.lock:
            try:
                with _transaction(self._db):
                    self._catch_up()
                    yield
            except BaseException:
                # The copy may hold rows that were rolled back: read everything again next time.
                self._stale = True
                raise

    # -- reading the copy (after refresh) -------------------------------------------------------
    @property
    def now(self) -> float:
        return self._now

    def time(self) -> float:
        """The current virtual time, refreshed first."""
        if self._shared or self._stale:
            self.refresh()
        return self._now

    def trigger(self, deployment_id: str) -> TriggerRecord | None:
        return self._triggers.get(deployment_id)

    def first_with_key(self, key: str) -> TriggerRecord | None:
        deployment_id = self._first_by_key.get(key)
        return None if deployment_id is None else self._triggers[deployment_id]

    def triggers(self) -> list[TriggerRecord]:
        return list(self._triggers.values())

    def acts(self) -> list[ActRecord]:
        return list(self._acts)

    def acts_of(self, deployment_id: str) -> tuple[Act, ...]:
        return self._acts_by_id.get(deployment_id, _NO_ACTS)

    def anchor(self, package: str, version: str) -> float | None:
        return self._builds.get((package, version))

    def builds(self) -> list[tuple[str, str, float]]:
        return [(package, version, anchor) for (package, version), anchor in self._builds.items()]

    # -- writing --------------------------------------------------------------------------------
    def add_trigger(self, request: TriggerRequest) -> TriggerRecord:
        with self._writing():
            cursor = self._db.execute(
                "INSERT INTO triggers (key, version, environments, ref, check_mode, user, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request.key, request.version, json.dumps(list(request.environments)), request.ref,
                 int(request.check_mode), request.user, self._now))
            self._read_triggers()
            return self._triggers[str(cursor.lastrowid)]

    def add_act(self, deployment_id: str, kind: str) -> None:
        with self._writing():
            self._db.execute("INSERT INTO acts (deployment, kind, at) VALUES (?, ?, ?)",
                             (int(deployment_id), kind, self._now))
            self._read_acts()

    def add_build(self, package: str, version: str, tagged_at: float | None) -> float:
        """Remember when ``version``'s build was anchored (``tagged_at``, else now); the anchor kept."""
        with self._writing():
            anchor = self._builds.get((package, version))  # another process may have just added it
            if anchor is None:
                self._db.execute("INSERT OR IGNORE INTO builds (package, version, anchor) VALUES (?, ?, ?)",
                                 (package, version, self._now if tagged_at is None else tagged_at))
                self._read_builds()
                anchor = self._builds[(package, version)]
            return anchor

    def advance(self, seconds: float) -> float:
        return self._move(lambda now: now + seconds)

    def advance_to(self, at: float) -> float:
        return self._move(lambda _now: at)

    def _move(self, target: Callable[[float], float]) -> float:
        """Move time to ``target(now)``, or keep it if that is earlier: the clock never goes back."""
        with self.lock:
            if not self._shared:
                self._now = max(self._now, target(self._now))
                return self._now
            with self._writing():
                # Caught up under the write lock, so self._now is the file's time until COMMIT.
                moved = max(self._now, target(self._now))
                self._db.execute("UPDATE clock SET now = max(now, ?)", (moved,))
            self._now = moved
            return moved


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, *, write: bool = True) -> Iterator[None]:
    if db.in_transaction:  # already inside one (a reader's snapshot, or a write that catches up)
        yield
        return
    db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT leaves the transaction open
            db.execute("ROLLBACK")
        raise


def _create_tables(db: sqlite3.Connection) -> None:
    # One statement at a time: executescript would commit the open transaction.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _start(db: sqlite3.Connection, scenario: Scenario) -> None:
    db.execute("INSERT INTO scenario VALUES (0, ?)", (json.dumps(scenario.to_settings()),))
    db.execute("INSERT INTO clock VALUES (0, ?)", (scenario.start,))


@functools.cache
def _empty_image() -> bytes | None:
    """A new world's empty tables, made once per process (None where SQLite cannot load images).

    A simulation opens a world in memory for every rollout, and creating the tables costs
    several times more than loading a copy of them.
    """
    if not hasattr(sqlite3.Connection, "deserialize"):
        return None
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _create_tables(db)
        return db.serialize()
    finally:
        db.close()


def _check_file(path: Path, *, create: bool) -> None:
    if path.is_dir():
        raise WorldError(f"world path {path} is a folder; give a file path")
    if not path.exists():
        if not create:
            raise WorldError(f"there is no simulated world at {path}; check the path")
        if not path.parent.is_dir():
            raise WorldError(f"cannot create simulated world {path}: folder {path.parent} does not exist")
        return
    with path.open("rb") as file:
        head = file.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise WorldError(f"{path} is not a simulated world (not a SQLite file); it was not changed. "
                         "Give a new file for the world")


def _trigger_record(row: tuple[Any, ...]) -> TriggerRecord:
    id_, key, version, environments, ref, check_mode, user, at = row
    return TriggerRecord(str(id_), key, version, tuple(json.loads(environments)), ref, bool(check_mode),
                         user, float(at))


def _differences(stored: Scenario, given: Scenario) -> str:
    old, new = stored.to_settings(), given.to_settings()
    return "; ".join(f"{name}: file has {old[name]!r}, given {new[name]!r}"
                     for name in old if old[name] != new[name])

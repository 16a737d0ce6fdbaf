"""The simulated world's record: its scenario, its virtual time, every trigger, retry and cancel.

The record is the only state; statuses are computed from it (``timeline.py``).  It lives in one
SQLite file (or in memory when no file is given).  Every trigger and every clock advance is one
``BEGIN IMMEDIATE`` transaction committed with ``synchronous=FULL`` before the call returns, so
a process killed with SIGKILL leaves either all of a change or none of it, and a process that
opens the file later sees every trigger the killed one was told about.  Several processes may
share a file: each reads the file, not a copy, on every call.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from deploystate.protocols import Deployment, PackageBuild, TriggerRequest
from deploystate.spec import PACKAGES
from deploystate_backends.simulated.clock import VirtualClock
from deploystate_backends.simulated.errors import UnknownDeployment, UnknownPackage, WorldError
from deploystate_backends.simulated.scenario import Scenario, tag_time
from deploystate_backends.simulated.timeline import (
    CANCEL,
    QUEUED,
    RETRY,
    TERMINAL,
    Act,
    Piece,
    build_timeline,
    deployment_timeline,
    next_change,
    outcome_of,
    status_at,
)

log = logging.getLogger(__name__)

APPLICATION_ID = 0x64737377  # "dssw": deploystate simulated world
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
WEB = "https://simulated.invalid"

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


class World:
    """A simulated deployer's and packaging projects' shared world, on a virtual clock."""

    def __init__(self, db: sqlite3.Connection, path: Path | None, scenario: Scenario) -> None:
        self._db = db
        self._lock = threading.RLock()
        self.path = path
        self.scenario = scenario
        self.clock = VirtualClock(store=self)
        self._timelines: dict[tuple[TriggerRecord, tuple[Act, ...]], list[Piece]] = {}

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None, scenario: Scenario | None = None, *,
             create: bool = True) -> World:
        """Open the world in ``path`` (made with ``scenario`` if new), or a new one in memory.

        An existing world keeps its own scenario and time: ``scenario`` may be None (use the
        file's) or must equal the file's, so a resumed run cannot silently change the script.
        """
        if path is None:
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            return cls._prepared(db, None, scenario)
        path = Path(path)
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
    def _prepared(cls, db: sqlite3.Connection, path: Path | None, scenario: Scenario | None) -> World:
        where = str(path) if path is not None else "in memory"
        if path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        with _transaction(db):
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
            if app_id == 0 and tables == 0:
                made = scenario or Scenario()
                # One statement at a time: executescript would commit the open transaction.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("INSERT INTO scenario VALUES (0, ?)", (json.dumps(made.to_settings()),))
                db.execute("INSERT INTO clock VALUES (0, ?)", (made.start,))
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

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the clock's time store -----------------------------------------------------------------
    def read_time(self) -> float:
        with self._lock:
            return float(self._db.execute("SELECT now FROM clock").fetchone()[0])

    def advance_time(self, seconds: float) -> float:
        return self._write_time("UPDATE clock SET now = now + ?", seconds)

    def advance_time_to(self, at: float) -> float:
        return self._write_time("UPDATE clock SET now = max(now, ?)", at)

    def _write_time(self, sql: str, value: float) -> float:
        with self._lock, _transaction(self._db):
            self._db.execute(sql, (value,))
            return float(self._db.execute("SELECT now FROM clock").fetchone()[0])

    # -- the deployer ---------------------------------------------------------------------------
    def trigger(self, request: TriggerRequest) -> Deployment:
        if not request.check_mode:
            log.info("simulated deployer: %s asks for a real deployment of %s to %s (check_mode false); "
                     "recorded, and as always nothing is deployed", request.key, request.version,
                     ",".join(request.environments))
        with self._lock, _transaction(self._db):
            db = self._db
            now = db.execute("SELECT now FROM clock").fetchone()[0]
            cursor = db.execute(
                "INSERT INTO triggers (key, version, environments, ref, check_mode, user, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request.key, request.version, json.dumps(list(request.environments)), request.ref,
                 int(request.check_mode), request.user, now))
            new_id = cursor.lastrowid
        return self.deployment(str(new_id))

    def deployment(self, deployment_id: str) -> Deployment:
        with self._lock, _transaction(self._db, write=False):
            record = self._trigger(deployment_id)
            acts = self._all_acts().get(record.id, [])
            now = self.read_time()
        return self._deployment(record, acts, now)

    def find(self, key: str) -> Deployment | None:
        """The first deployment triggered with ``key`` (a duplicate trigger stays in the record)."""
        with self._lock:
            row = self._db.execute("SELECT id FROM triggers WHERE key = ? ORDER BY id LIMIT 1",
                                   (key,)).fetchone()
        return None if row is None else self.deployment(str(row[0]))

    def act(self, deployment_id: str, kind: str) -> Deployment:
        """Record a retry or cancel; like GitLab, one that does not apply changes nothing."""
        if kind not in (RETRY, CANCEL):
            raise ValueError(f"act must be {RETRY!r} or {CANCEL!r}, got {kind!r}")
        with self._lock:
            record = self._trigger(deployment_id)
            with _transaction(self._db):
                self._db.execute("INSERT INTO acts (deployment, kind, at) VALUES (?, ?, "
                                 "(SELECT now FROM clock))", (int(record.id), kind))
        return self.deployment(deployment_id)

    def _deployment(self, record: TriggerRecord, acts: Sequence[Act], now: float) -> Deployment:
        pieces = self._timeline(record, acts)
        piece = status_at(pieces, now)
        # A pipeline canceled while still queued never started.
        started = next((p.at for p in pieces if p.status not in QUEUED and p.at <= now
                        and p.status != "canceled"), None)
        return Deployment(id=record.id, key=record.key, status=piece.status,
                          outcome=outcome_of(piece.status),
                          web_url=f"{WEB}/deployer/-/pipelines/{record.id}", started_at=started,
                          finished_at=piece.at if piece.status in TERMINAL else None)

    def _timeline(self, record: TriggerRecord, acts: Sequence[Act]) -> list[Piece]:
        # A timeline depends only on the (append-only) record, so it is computed once per change.
        cache_key = (record, tuple(acts))
        pieces = self._timelines.get(cache_key)
        if pieces is None:
            segments = self.scenario.segments(record.version, record.environments)
            pieces = self._timelines[cache_key] = deployment_timeline(record.at, segments, acts,
                                                                      self.scenario)
        return pieces

    # -- package builds -------------------------------------------------------------------------
    def build(self, package: str, version: str) -> PackageBuild:
        if package not in PACKAGES:
            raise UnknownPackage(f"the simulation builds no package {package!r}; ask for "
                                 f"{' or '.join(PACKAGES)}")
        anchor = self._build_anchor(package, version)
        pieces = self._build_timeline(package, version, anchor)
        status = status_at(pieces, self.read_time()).status
        tag = self.scenario.package_tag(package, version)
        return PackageBuild(package=package, tag=tag, status=status, outcome=outcome_of(status),
                            web_url=f"{WEB}/{package}/-/pipelines?ref={tag}")

    def _build_anchor(self, package: str, version: str) -> float:
        """When ``version`` was tagged: from the tag itself, else when someone first asked."""
        with self._lock:
            row = self._db.execute("SELECT anchor FROM builds WHERE package = ? AND version = ?",
                                   (package, version)).fetchone()
            if row is not None:
                return float(row[0])
            with _transaction(self._db):
                # Remembered even when the tag says when it was cut: next_change_at watches it.
                self._db.execute(
                    "INSERT OR IGNORE INTO builds (package, version, anchor) "
                    "VALUES (?, ?, coalesce(?, (SELECT now FROM clock)))",
                    (package, version, tag_time(version)))
                anchor = self._db.execute("SELECT anchor FROM builds WHERE package = ? AND version = ?",
                                          (package, version)).fetchone()[0]
            return float(anchor)

    def _build_timeline(self, package: str, version: str, anchor: float) -> list[Piece]:
        scenario = self.scenario
        return build_timeline(anchor + scenario.build_appear_s, scenario.build_duration(package, version),
                              package in scenario.fail_builds)

    # -- hints ----------------------------------------------------------------------------------
    def next_change_at(self) -> float | None:
        """When the next status of anything triggered or watched changes; None if nothing will."""
        with self._lock, _transaction(self._db, write=False):
            now = self.read_time()
            triggers = self.triggers()
            acts = self._all_acts()
            builds = self._db.execute("SELECT package, version, anchor FROM builds").fetchall()
        times: list[float] = []
        for record in triggers:
            at = next_change(self._timeline(record, acts.get(record.id, [])), now)
            if at is not None:
                times.append(at)
        for package, version, anchor in builds:
            at = next_change(self._build_timeline(package, version, anchor), now)
            if at is not None:
                times.append(at)
        return min(times, default=None)

    # -- the record, for tests and the command line ----------------------------------------------
    def triggers(self) -> list[TriggerRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, key, version, environments, ref, check_mode, user, at "
                                    "FROM triggers ORDER BY id").fetchall()
        return [_trigger_record(row) for row in rows]

    def trigger_count(self, environment: str, *, ref: str | None = None, alone: bool = False) -> int:
        """How many triggers included ``environment`` (``alone``: asked for it and nothing else)."""
        return sum(1 for t in self.triggers()
                   if (t.environments == (environment,) if alone else environment in t.environments)
                   and (ref is None or t.ref == ref))

    def acts(self) -> list[ActRecord]:
        with self._lock:
            rows = self._db.execute("SELECT deployment, kind, at, seq FROM acts ORDER BY seq").fetchall()
        return [ActRecord(str(d), kind, at, seq) for d, kind, at, seq in rows]

    def summary(self) -> dict[str, Any]:
        """Plain data about everything in the record (what ``python -m ...simulated --json`` prints)."""
        with self._lock, _transaction(self._db, write=False):
            now = self.read_time()
            triggers = self.triggers()
            acts = self._all_acts()
            next_at = self.next_change_at()
        per_environment: Counter[str] = Counter(env for t in triggers for env in t.environments)
        per_target: Counter[str] = Counter(",".join(t.environments) for t in triggers)
        deployments = []
        for t in triggers:
            current = self._deployment(t, acts.get(t.id, []), now)
            deployments.append({**attrs.asdict(t, value_serializer=_plain_value), "status": current.status,
                                "outcome": current.outcome.value, "retries": _count(acts, t.id, RETRY),
                                "cancels": _count(acts, t.id, CANCEL)})
        return {
            "world": str(self.path) if self.path is not None else None,
            "seed": self.scenario.seed,
            "scenario": self.scenario.to_settings(),
            "now": now,
            "now_utc": _utc(now),
            "next_change_at": next_at,
            "triggers": len(triggers),
            "per_environment": dict(sorted(per_environment.items())),
            "per_target": dict(sorted(per_target.items())),
            "real_requests": sum(1 for t in triggers if not t.check_mode),
            "deployments": deployments,
        }

    def _trigger(self, deployment_id: str) -> TriggerRecord:
        row = None
        if isinstance(deployment_id, str) and deployment_id.isdigit():
            row = self._db.execute("SELECT id, key, version, environments, ref, check_mode, user, at "
                                   "FROM triggers WHERE id = ?", (int(deployment_id),)).fetchone()
        if row is None:
            raise UnknownDeployment(f"no simulated deployment {deployment_id!r} was triggered in this "
                                    "world; use an id that trigger() or find() returned")
        return _trigger_record(row)

    def _all_acts(self) -> dict[str, list[Act]]:
        by_id: dict[str, list[Act]] = {}
        for act in self.acts():
            by_id.setdefault(act.deployment_id, []).append(Act(act.at, act.seq, act.kind))
        return by_id


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, *, write: bool = True) -> Iterator[None]:
    if db.in_transaction:  # already inside one (a read snapshot that calls a reader)
        yield
        return
    db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


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


def _count(acts: dict[str, list[Act]], deployment_id: str, kind: str) -> int:
    return sum(1 for a in acts.get(deployment_id, []) if a.kind == kind)


def _plain_value(_instance: object, _field: object, value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")

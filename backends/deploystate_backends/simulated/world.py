"""A simulated deployer's and packaging projects' world: statuses computed from its record.

The record (``record.py``) is the only state: what was triggered, retried, canceled and
watched, and the virtual time.  Every status is computed from it (``timeline.py``), so a world
reopened in another process shows exactly the same statuses.  A timeline depends only on the
append-only record, so it is computed once per change of its deployment's part of the record,
and the status shown at each of its pieces once.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

from deploystate.ports import Deployment, PackageBuild, TriggerRequest
from deploystate_backends.simulated.clock import VirtualClock
from deploystate_backends.simulated.errors import UnknownDeployment, UnknownPackage
from deploystate_backends.simulated.record import ActRecord, Record, TriggerRecord
from deploystate_backends.simulated.scenario import PACKAGES, Scenario, tag_time
from deploystate_backends.simulated.timeline import (
    CANCEL,
    QUEUED,
    RETRY,
    TERMINAL,
    Act,
    Piece,
    build_timeline,
    deployment_timeline,
    outcome_of,
)

__all__ = ["WEB", "ActRecord", "TriggerRecord", "World"]

log = logging.getLogger(__name__)

WEB = "https://simulated.invalid"


class _Timeline:
    """A deployment's timeline for one state of its record, and what it shows at each piece."""

    __slots__ = ("acts", "ats", "pieces", "record", "shown")

    def __init__(self, record: TriggerRecord, acts: tuple[Act, ...], pieces: list[Piece]) -> None:
        self.record = record
        self.acts = acts
        self.pieces = pieces
        self.ats = [piece.at for piece in pieces]
        self.shown: dict[int, Deployment] = {}  # by index of the last piece started at or before now


class _BuildTimeline:
    __slots__ = ("anchor", "ats", "pieces", "shown", "tag")

    def __init__(self, anchor: float, pieces: list[Piece], tag: str) -> None:
        self.anchor = anchor
        self.pieces = pieces
        self.ats = [piece.at for piece in pieces]
        self.tag = tag
        self.shown: dict[int, PackageBuild] = {}


class World:
    """A simulated deployer's and packaging projects' shared world, on a virtual clock."""

    def __init__(self, record: Record) -> None:
        self._record = record
        self._lock = record.lock
        self.path = record.path
        self.scenario: Scenario = record.scenario
        self.clock = VirtualClock(store=self)
        self._timelines: dict[str, _Timeline] = {}
        self._build_timelines: dict[tuple[str, str], _BuildTimeline] = {}
        # Every moment at which anything's status changes, for next_change_at; rebuilt when the
        # record's version moves on.
        self._changes: list[float] = []
        self._changes_version = -1

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None, scenario: Scenario | None = None, *,
             create: bool = True) -> World:
        """Open the world in ``path`` (made with ``scenario`` if new), or a new one in memory.

        An existing world keeps its own scenario and time: ``scenario`` may be None (use the
        file's) or must equal the file's, so a resumed run cannot silently change the script.
        """
        return cls(Record.open(None if path is None else Path(path), scenario, create=create))

    def close(self) -> None:
        self._record.close()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the clock's time store -----------------------------------------------------------------
    def read_time(self) -> float:
        return self._record.time()

    def advance_time(self, seconds: float) -> float:
        return self._record.advance(seconds)

    def advance_time_to(self, at: float) -> float:
        return self._record.advance_to(at)

    # -- the deployer ---------------------------------------------------------------------------
    def trigger(self, request: TriggerRequest) -> Deployment:
        if not request.check_mode:
            log.info("simulated deployer: %s asks for a real deployment of %s to %s (check_mode false); "
                     "recorded, and as always nothing is deployed", request.key, request.version,
                     ",".join(request.environments))
        return self.deployment(self._record.add_trigger(request).id)

    def deployment(self, deployment_id: str) -> Deployment:
        with self._lock:
            self._record.refresh()
            return self._deployment(self._known(deployment_id), self._record.now)

    def find(self, key: str) -> Deployment | None:
        """The first deployment triggered with ``key`` (a duplicate trigger stays in the record)."""
        with self._lock:
            self._record.refresh()
            record = self._record.first_with_key(key)
            return None if record is None else self._deployment(record, self._record.now)

    def act(self, deployment_id: str, kind: str) -> Deployment:
        """Record a retry or cancel; like GitLab, one that does not apply changes nothing."""
        if kind not in (RETRY, CANCEL):
            raise ValueError(f"act must be {RETRY!r} or {CANCEL!r}, got {kind!r}")
        with self._lock:
            self._record.refresh()
            record = self._known(deployment_id)
            self._record.add_act(record.id, kind)
            return self._deployment(record, self._record.now)

    def _known(self, deployment_id: str) -> TriggerRecord:
        record = None
        if isinstance(deployment_id, str) and deployment_id.isdigit():
            with_digits = _canonical_id(deployment_id)
            record = None if with_digits is None else self._record.trigger(with_digits)
        if record is None:
            raise UnknownDeployment(f"no simulated deployment {deployment_id!r} was triggered in this "
                                    "world; use an id that trigger() or find() returned")
        return record

    def _deployment(self, record: TriggerRecord, now: float) -> Deployment:
        timeline = self._timeline(record)
        # The pieces at or before now are those up to index (-1: before the first one).
        index = bisect.bisect_right(timeline.ats, now) - 1
        shown = timeline.shown.get(index)
        if shown is None:
            shown = timeline.shown[index] = _shown(record, timeline.pieces, index)
        return shown

    def _timeline(self, record: TriggerRecord) -> _Timeline:
        acts = self._record.acts_of(record.id)
        timeline = self._timelines.get(record.id)
        # The record hands out a new acts tuple (and, after a reload, new records) on every change.
        if timeline is None or timeline.acts is not acts or timeline.record is not record:
            segments = self.scenario.segments(record.version, record.environments)
            pieces = deployment_timeline(record.at, segments, acts, self.scenario)
            timeline = self._timelines[record.id] = _Timeline(record, acts, pieces)
        return timeline

    # -- package builds -------------------------------------------------------------------------
    def build(self, package: str, version: str) -> PackageBuild:
        if package not in PACKAGES:
            raise UnknownPackage(f"the simulation builds no package {package!r}; ask for "
                                 f"{' or '.join(PACKAGES)} (fix the spec's package_wait step)")
        with self._lock:
            self._record.refresh()
            anchor = self._record.anchor(package, version)
            if anchor is None:
                # When the tag says it was cut, else when someone first asked; remembered either
                # way, since next_change_at watches every build asked about.
                anchor = self._record.add_build(package, version, tag_time(version))
            timeline = self._build_timeline(package, version, anchor)
            index = max(bisect.bisect_right(timeline.ats, self._record.now) - 1, 0)
            shown = timeline.shown.get(index)
            if shown is None:
                status = timeline.pieces[index].status
                shown = timeline.shown[index] = PackageBuild(
                    package=package, tag=timeline.tag, status=status, outcome=outcome_of(status),
                    web_url=f"{WEB}/{package}/-/pipelines?ref={timeline.tag}")
            return shown

    def _build_timeline(self, package: str, version: str, anchor: float) -> _BuildTimeline:
        timeline = self._build_timelines.get((package, version))
        if timeline is None or timeline.anchor != anchor:
            scenario = self.scenario
            appears_at = anchor + scenario.build_appear_s
            pieces = build_timeline(appears_at, scenario.build_duration(package, version),
                                    package in scenario.fail_builds)
            timeline = self._build_timelines[(package, version)] = _BuildTimeline(
                anchor, pieces, scenario.package_tag(package, version))
        return timeline

    # -- hints ----------------------------------------------------------------------------------
    def next_change_at(self) -> float | None:
        """When the next status of anything triggered or watched changes; None if nothing will."""
        with self._lock:
            self._record.refresh()
            return self._next_change(self._record.now)

    def _next_change(self, now: float) -> float | None:
        if self._changes_version != self._record.version:
            changes: list[float] = []
            for record in self._record.triggers():
                changes += self._timeline(record).ats
            for package, version, anchor in self._record.builds():
                changes += self._build_timeline(package, version, anchor).ats
            changes.sort()
            self._changes, self._changes_version = changes, self._record.version
        # The first change after now is the earliest of every timeline's next change.
        index = bisect.bisect_right(self._changes, now)
        return self._changes[index] if index < len(self._changes) else None

    # -- the record, for tests and the command line ----------------------------------------------
    def triggers(self) -> list[TriggerRecord]:
        with self._lock:
            self._record.refresh()
            return self._record.triggers()

    def trigger_count(self, environment: str, *, ref: str | None = None, alone: bool = False) -> int:
        """How many triggers included ``environment`` (``alone``: asked for it and nothing else)."""
        return sum(1 for t in self.triggers()
                   if (t.environments == (environment,) if alone else environment in t.environments)
                   and (ref is None or t.ref == ref))

    def acts(self) -> list[ActRecord]:
        with self._lock:
            self._record.refresh()
            return self._record.acts()

    def summary(self) -> dict[str, Any]:
        """Plain data about everything in the record (what ``python -m ...simulated --json`` prints)."""
        with self._lock:
            self._record.refresh()  # then everything below reads one state of the record
            now = self._record.now
            triggers = self._record.triggers()
            next_at = self._next_change(now)
            deployments = []
            for t in triggers:
                current = self._deployment(t, now)
                acts = self._record.acts_of(t.id)
                deployments.append({**attrs.asdict(t, value_serializer=_plain_value),
                                    "status": current.status, "outcome": current.outcome.value,
                                    "retries": _count(acts, RETRY), "cancels": _count(acts, CANCEL)})
        per_environment: Counter[str] = Counter(env for t in triggers for env in t.environments)
        per_target: Counter[str] = Counter(",".join(t.environments) for t in triggers)
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


def _shown(record: TriggerRecord, pieces: list[Piece], index: int) -> Deployment:
    """What a deployment shows while ``pieces[index]`` is the last piece that has begun."""
    piece = pieces[max(index, 0)]
    # A pipeline canceled while still queued never started.
    started = next((p.at for p in pieces[:index + 1] if p.status not in QUEUED and p.status != "canceled"),
                   None)
    return Deployment(id=record.id, key=record.key, status=piece.status, outcome=outcome_of(piece.status),
                      web_url=f"{WEB}/deployer/-/pipelines/{record.id}", started_at=started,
                      finished_at=piece.at if piece.status in TERMINAL else None)


def _canonical_id(digits: str) -> str | None:
    """The id as the record writes it ("007" names trigger 7, as it did to SQLite)."""
    try:
        return str(int(digits))
    except ValueError:  # digits int() does not read, such as superscripts
        return None


def _count(acts: tuple[Act, ...], kind: str) -> int:
    return sum(1 for a in acts if a.kind == kind)


def _plain_value(_instance: object, _field: object, value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")

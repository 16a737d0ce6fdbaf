"""Environments shared by every rollout of a store: locks, claims, and what succeeded there.

Each environment has its own journal in the store (:meth:`deploystate.ports.Store.env_append`),
appended with the sequence number expected, like a rollout's.  Its records are replayed here into
an :class:`EnvironmentView`, and :func:`claim` decides, purely, what a rollout's deployment may do
there:

- at most one real deployment per environment at a time, whatever rollout it belongs to (a
  second one queues, says for whom, and goes on when the first ends);
- a locked environment gets no new deployment;
- never an older version over a newer one: a version older than one that succeeded there, is
  deploying there, or is queued there is *superseded* (a CI server's "prevent outdated deployment
  jobs", and ``resource_group`` ``newest_first``), unless it is a deliberate rollback.

Two runners claiming one environment append with the same expected sequence number: one wins,
the other reads again and decides on what the winner wrote.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from deploystate.actions import Action
from deploystate.journal import Entry, Record

VersionKey = Callable[[str], tuple[Any, ...]]


@attrs.frozen
class Lock:
    by: str
    reason: str
    at: float


@attrs.frozen
class Claim:
    """A rollout's step holds (or queues for) the environment."""

    rollout: str
    step: str
    key: str
    version: str
    at: float
    rollback: bool = False


@attrs.frozen
class Success:
    version: str
    rollout: str
    at: float
    rollback: bool = False


@attrs.frozen
class EnvironmentView:
    name: str
    seq: int = 0
    lock: Lock | None = None
    holder: Claim | None = None
    queued: tuple[Claim, ...] = ()
    successes: tuple[Success, ...] = ()  # oldest first

    @property
    def current(self) -> Success | None:
        """What the environment runs now: the last deployment that succeeded there."""
        return self.successes[-1] if self.successes else None

    def newest(self, version_key: VersionKey) -> Success | None:
        """The newest version that ever succeeded there (a rollback does not make it older)."""
        if not self.successes:
            return None
        return max(self.successes, key=lambda s: (version_key(s.version), s.at))

    def holds(self, rollout: str) -> list[Claim]:
        """This rollout's claim and queue places here."""
        return [c for c in (self.holder, *self.queued) if c is not None and c.rollout == rollout]

    def applied(self, records: Sequence[Record]) -> EnvironmentView:
        view = self
        for record in records:
            view = _apply(view, record)
        return view

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.name, "seq": self.seq,
                "lock": None if self.lock is None else attrs.asdict(self.lock),
                "holder": None if self.holder is None else attrs.asdict(self.holder),
                "queued": [attrs.asdict(c) for c in self.queued],
                "current": None if self.current is None else attrs.asdict(self.current)}


def environment_view(name: str, records: Sequence[Record]) -> EnvironmentView:
    return EnvironmentView(name).applied(records)


def _claim_of(data: Mapping[str, Any], at: float) -> Claim:
    return Claim(str(data.get("rollout")), str(data.get("step")), str(data.get("key")),
                 str(data.get("version")), float(data.get("at", at)), bool(data.get("rollback")))


def _apply(view: EnvironmentView, record: Record) -> EnvironmentView:
    data = record.data
    action = record.action
    changes: dict[str, Any] = {"seq": record.seq}
    if action == Action.LOCKED:
        changes["lock"] = Lock(str(data.get("by")), str(data.get("reason")), record.at)
    elif action == Action.UNLOCKED:
        changes["lock"] = None
    elif action == Action.QUEUED:
        claim = _claim_of(data, record.at)
        if not any(q.key == claim.key for q in view.queued):
            changes["queued"] = (*view.queued, claim)
    elif action == Action.CLAIMED:
        claim = _claim_of(data, record.at)
        changes["holder"] = claim
        changes["queued"] = tuple(q for q in view.queued if q.key != claim.key)
    elif action == Action.RELEASED:
        key = str(data.get("key"))
        changes["queued"] = tuple(q for q in view.queued if q.key != key)
        holder = view.holder
        if holder is not None and holder.key == key:
            changes["holder"] = None
            if data.get("outcome") == "succeeded":
                changes["successes"] = (*view.successes,
                                        Success(holder.version, holder.rollout, record.at, holder.rollback))
    return attrs.evolve(view, **changes)


# -- what a deployment may do ------------------------------------------------------------------


class Move(enum.StrEnum):
    HELD = "held"  # the deployment holds the environment: go on
    CLAIM = "claim"  # free: claim it
    WAIT = "wait"  # locked, or another deployment runs there: queue and wait
    SUPERSEDED = "superseded"  # a newer version got there first


@attrs.frozen
class Answer:
    move: Move
    why: str = ""  # for WAIT and SUPERSEDED: one line naming who and how
    by_version: str | None = None  # SUPERSEDED: the newer version


def claim(view: EnvironmentView, want: Claim, version_key: VersionKey) -> Answer:
    """What the deployment ``want`` (its rollout, step, key, version) may do in ``view`` now."""
    env = view.name
    holder = view.holder
    if holder is not None and holder.key == want.key:
        return Answer(Move.HELD)
    mine = version_key(want.version)
    if not want.rollback:
        newest = view.newest(version_key)
        if newest is not None and version_key(newest.version) > mine:
            how = "a rollback" if newest.rollback else "rollout " + newest.rollout
            return Answer(Move.SUPERSEDED, f"{newest.version} already succeeded in {env} ({how}, at "
                                              f"{_when(newest.at)})", newest.version)
        for other in (holder, *view.queued):
            if other is not None and other.rollout != want.rollout and version_key(other.version) > mine:
                doing = "is deploying to" if other is holder else "is waiting for"
                return Answer(Move.SUPERSEDED, f"{other.version} {doing} {env} (rollout {other.rollout}, "
                                                  f"since {_when(other.at)})", other.version)
    if view.lock is not None:
        lock = view.lock
        return Answer(Move.WAIT, f"{env} is locked by {lock.by} since {_when(lock.at)}: {lock.reason}; "
                                    f"it goes on after 'deploystate unlock {env} --by YOU'")
    if holder is not None:
        return Answer(Move.WAIT, f"{env} is busy: {holder.version} (rollout {holder.rollout}, step "
                                    f"{holder.step}) has deployed there since {_when(holder.at)}; this one "
                                    "starts when it ends")
    return Answer(Move.CLAIM)


def _when(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


# -- the records --------------------------------------------------------------------------------


def claim_data(claim_: Claim) -> dict[str, Any]:
    return {"rollout": claim_.rollout, "step": claim_.step, "key": claim_.key, "version": claim_.version,
            "rollback": claim_.rollback}


def claimed(claim_: Claim, now: float, actor: str) -> Entry:
    return Entry(Action.CLAIMED.value, now, actor, claim_.step, claim_data(claim_))


def queued(claim_: Claim, now: float, actor: str) -> Entry:
    return Entry(Action.QUEUED.value, now, actor, claim_.step, claim_data(claim_))


def released(claim_: Claim, outcome: str, now: float, actor: str) -> Entry:
    return Entry(Action.RELEASED.value, now, actor, claim_.step, {**claim_data(claim_), "outcome": outcome})


def locked(by: str, reason: str, now: float) -> Entry:
    return Entry(Action.LOCKED.value, now, by, None, {"by": by, "reason": reason})


def unlocked(by: str, now: float) -> Entry:
    return Entry(Action.UNLOCKED.value, now, by, None, {"by": by})

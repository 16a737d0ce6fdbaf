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
from deploystate.ports import Store

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
    successes: tuple[Success, ...] = ()  # the last KEPT_SUCCESSES, oldest first
    newest: Success | None = None  # the newest version that ever succeeded (as its writer ordered them)

    @property
    def current(self) -> Success | None:
        """What the environment runs now: the last deployment that succeeded there."""
        return self.successes[-1] if self.successes else None


    def holds(self, rollout: str) -> list[Claim]:
        """This rollout's claim and queue places here."""
        return [c for c in (self.holder, *self.queued) if c is not None and c.rollout == rollout]

    def applied(self, records: Sequence[Record]) -> EnvironmentView:
        """The view after ``records`` (which follow this one).  Worked out on plain lists and
        frozen once: an environment's journal grows with every rollout of the store."""
        if not records:
            return self
        state = _Replaying(self)
        for record in records:
            state.apply(record)
        return state.result()

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.name, "seq": self.seq,
                "lock": None if self.lock is None else attrs.asdict(self.lock),
                "holder": None if self.holder is None else attrs.asdict(self.holder),
                "queued": [attrs.asdict(c) for c in self.queued],
                "current": None if self.current is None else attrs.asdict(self.current),
                "newest": None if self.newest is None else attrs.asdict(self.newest)}


# How many of an environment's last successes a view keeps (what a rollback may go back to, and
# what status shows): its journal grows with every rollout, its summary must not.
KEPT_SUCCESSES = 25
_SUMMARY_FORM = 1


def summary_of(view: EnvironmentView) -> dict[str, Any]:
    """What a store keeps beside an environment's records (plain JSON): the whole view."""
    return {"form": _SUMMARY_FORM, "seq": view.seq,
            "lock": None if view.lock is None else attrs.asdict(view.lock),
            "holder": None if view.holder is None else attrs.asdict(view.holder),
            "queued": [attrs.asdict(c) for c in view.queued],
            "successes": [attrs.asdict(s) for s in view.successes],
            "newest": None if view.newest is None else attrs.asdict(view.newest)}


def from_summary(name: str, seq: int, data: Mapping[str, Any]) -> EnvironmentView | None:
    """The view a summary describes, or None when it cannot be read (then: replay from record 1)."""
    try:
        if data.get("form") != _SUMMARY_FORM or data.get("seq") != seq:
            return None
        lock = data.get("lock")
        holder = data.get("holder")
        newest = data.get("newest")
        return EnvironmentView(
            name, seq, None if lock is None else Lock(**lock), None if holder is None else Claim(**holder),
            tuple(Claim(**c) for c in data.get("queued", ())),
            tuple(Success(**s) for s in data.get("successes", ())),
            None if newest is None else Success(**newest))
    except (TypeError, ValueError, AttributeError):
        return None


def newer_of(known: Success | None, success: Success, version_key: VersionKey) -> Success:
    """The newer of two successes (the later one of equal versions)."""
    if known is None or version_key(success.version) >= version_key(known.version):
        return success
    return known


def environment_view(name: str, records: Sequence[Record]) -> EnvironmentView:
    return EnvironmentView(name).applied(records)


def read_environment(store: Store, name: str) -> EnvironmentView:
    """``name``'s journal from its summary on (from record 1 when it has none, or an unreadable one)."""
    summary = store.env_summary(name)
    start = None if summary is None else from_summary(name, summary.seq, summary.data)
    if start is None:
        return environment_view(name, store.env_read(name))
    return start.applied(store.env_read(name, after=start.seq))


def _claim_of(data: Mapping[str, Any], at: float) -> Claim:
    return Claim(str(data.get("rollout")), str(data.get("step")), str(data.get("key")),
                 str(data.get("version")), float(data.get("at", at)), bool(data.get("rollback")))


class _Replaying:
    def __init__(self, view: EnvironmentView) -> None:
        self.view = view
        self.seq = view.seq
        self.lock = view.lock
        self.holder = view.holder
        self.queued = list(view.queued)
        self.successes = list(view.successes)
        self.newest = view.newest

    def apply(self, record: Record) -> None:
        data = record.data
        action = record.action
        self.seq = record.seq
        if action == Action.LOCKED:
            self.lock = Lock(str(data.get("by")), str(data.get("reason")), record.at)
        elif action == Action.UNLOCKED:
            self.lock = None
        elif action == Action.QUEUED:
            claim_ = _claim_of(data, record.at)
            if not any(q.key == claim_.key for q in self.queued):
                self.queued.append(claim_)
        elif action == Action.CLAIMED:
            claim_ = _claim_of(data, record.at)
            self.holder = claim_
            self.queued = [q for q in self.queued if q.key != claim_.key]
        elif action == Action.RELEASED:
            key = str(data.get("key"))
            self.queued = [q for q in self.queued if q.key != key]
            holder = self.holder
            if holder is not None and holder.key == key:
                self.holder = None
                if data.get("outcome") == "succeeded":
                    success = Success(holder.version, holder.rollout, record.at, holder.rollback)
                    self.successes.append(success)
                    # Its writer ordered the versions (the backend's order) and said which is newest.
                    newest = data.get("newest")
                    if isinstance(newest, Mapping):
                        self.newest = Success(**newest)
                    elif self.newest is None:
                        self.newest = success

    def result(self) -> EnvironmentView:
        return EnvironmentView(self.view.name, self.seq, self.lock, self.holder, tuple(self.queued),
                               tuple(self.successes[-KEPT_SUCCESSES:]), self.newest)


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
        newest = view.newest
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


def released(claim_: Claim, outcome: str, now: float, actor: str, *,
             newest: Success | None = None) -> Entry:
    """``newest``: for a success, the newest version that has now succeeded there."""
    data: dict[str, Any] = {**claim_data(claim_), "outcome": outcome}
    if newest is not None:
        data["newest"] = attrs.asdict(newest)
    return Entry(Action.RELEASED.value, now, actor, claim_.step, data)


def locked(by: str, reason: str, now: float) -> Entry:
    return Entry(Action.LOCKED.value, now, by, None, {"by": by, "reason": reason})


def unlocked(by: str, now: float) -> Entry:
    return Entry(Action.UNLOCKED.value, now, by, None, {"by": by})

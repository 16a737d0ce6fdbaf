"""The journal: every rollout's records, appended in order, never rewritten.

A record is an event of the machine (``start``, ``succeed``, ...) or a fact around one
(``created``, ``triggered``, ``observed``).  A rollout's state is never stored; it is rebuilt by
replaying its records (see ``deploystate.replay``), so the state and the record cannot disagree.

Appends name the sequence number they expect to follow: a writer that lost a race gets
:class:`JournalConflict` and nothing is written.  Runners also hold a per-rollout lock so that
only one of them talks to the deployer for a rollout at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from deploystate.errors import DeploystateError

JSONValue = Any  # what json.dumps accepts


class JournalError(DeploystateError):
    """The journal cannot be used as asked."""


class JournalConflict(JournalError):
    """Another writer appended first; re-read the rollout and decide again."""


class JournalCorrupt(JournalError):
    """The store is damaged or is not a deploystate journal; it was left untouched."""


class UnknownRollout(JournalError):
    pass


class RolloutBusy(JournalError):
    """Another runner holds the rollout."""


def _check_data(instance: object, _attribute: object, value: Mapping[str, JSONValue]) -> None:
    try:
        json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise JournalError(f"record data must be plain JSON: {error}") from None


def _check_at(instance: object, _attribute: object, value: float) -> None:
    if not math.isfinite(value):
        raise JournalError(f"record time must be a finite number, got {value!r}")


@attrs.frozen
class Entry:
    """A record about to be appended (its sequence number is given by the journal)."""

    action: str = attrs.field(validator=attrs.validators.min_len(1))
    at: float = attrs.field(converter=float, validator=_check_at)
    actor: str = attrs.field(validator=attrs.validators.min_len(1))
    step: str | None = None
    data: Mapping[str, JSONValue] = attrs.field(factory=dict, validator=_check_data)


@attrs.frozen
class Record:
    rollout_id: str
    seq: int
    action: str
    at: float
    actor: str
    step: str | None
    data: Mapping[str, JSONValue]

    def as_dict(self) -> dict[str, JSONValue]:
        return {"rollout": self.rollout_id, "seq": self.seq, "at": self.at, "actor": self.actor,
                "action": self.action, "step": self.step, "data": dict(self.data)}


class MemoryStore:
    """A store in memory (:class:`deploystate.ports.Store`): for tests and throw-away simulations."""

    def __init__(self) -> None:
        self._records: dict[str, list[Record]] = {}
        self._lock = threading.Lock()
        self._held: set[str] = set()

    def append(self, rollout_id: str, expected_seq: int, entries: Sequence[Entry]) -> list[Record]:
        with self._lock:
            existing = self._records.get(rollout_id, [])
            last = existing[-1].seq if existing else 0
            if last != expected_seq:
                raise conflict(rollout_id, expected_seq, last)
            made = [_record(rollout_id, last + i + 1, e) for i, e in enumerate(entries)]
            self._records[rollout_id] = [*existing, *made]
            return made

    def read(self, rollout_id: str, after: int = 0) -> list[Record]:
        with self._lock:
            if rollout_id not in self._records:
                raise unknown(rollout_id, list(self._records))
            return self._records[rollout_id][after:]

    def read_all(self) -> dict[str, list[Record]]:
        with self._lock:
            return {k: list(v) for k, v in self._records.items()}

    def rollouts(self) -> list[str]:
        with self._lock:
            return list(self._records)

    @contextlib.contextmanager
    def hold(self, rollout_id: str) -> Iterator[None]:
        with self._lock:
            if rollout_id in self._held:
                raise busy(rollout_id)
            self._held.add(rollout_id)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(rollout_id)

    def close(self) -> None:
        return None


def _record(rollout_id: str, seq: int, entry: Entry) -> Record:
    return Record(rollout_id, seq, entry.action, entry.at, entry.actor, entry.step, dict(entry.data))


def conflict(rollout_id: str, expected: int, last: int) -> JournalConflict:
    if expected == 0:
        return JournalConflict(f"rollout {rollout_id} already exists; use 'deploystate status "
                               f"{rollout_id}' or 'deploystate run {rollout_id}'")
    return JournalConflict(
        f"rollout {rollout_id} changed while this command was deciding (expected record "
        f"{expected}, found {last}); nothing was written. Another runner or command is active: "
        "check 'deploystate status' and try again"
    )


def unknown(rollout_id: str, known: Sequence[str]) -> UnknownRollout:
    hint = f"known rollouts: {', '.join(sorted(known)[-5:])}" if known else "the journal is empty"
    return UnknownRollout(f"no rollout {rollout_id} in the journal ({hint}); start it with "
                          f"'deploystate start {rollout_id}'")


def busy(rollout_id: str) -> RolloutBusy:
    return RolloutBusy(f"rollout {rollout_id} is being run by another process; nothing was done. "
                       "Wait for it to stop, or check it with 'deploystate status'")

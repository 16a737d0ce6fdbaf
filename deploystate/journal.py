"""The journal: every rollout's records, appended in order, never rewritten.

A record is an event of the machine (``start``, ``succeed``, ...) or a fact around one
(``created``, ``triggered``, ``observed``).  A rollout's state is never stored; it is rebuilt by
replaying its records (see ``deploystate.rollout``), so the state and the record cannot disagree.

Appends name the sequence number they expect to follow: a writer that lost a race gets
:class:`JournalConflict` and nothing is written.  Runners also hold a per-rollout lock so that
only one of them talks to the deployer for a rollout at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
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


class JournalReadOnly(JournalError):
    """The journal can be read but not written (file or folder permissions, a read-only mount)."""


# A rollout id names rows (and once, files): 1 to 128 of these characters, the first a letter or a
# digit.  fullmatch, not match with "$", which also matches before a final newline.
_ROLLOUT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_rollout_id(rollout_id: str) -> None:
    """``JournalError`` unless ``rollout_id`` is one every store accepts."""
    if not isinstance(rollout_id, str) or not _ROLLOUT_ID.fullmatch(rollout_id):
        raise JournalError(f"rollout id {rollout_id!r} is not valid; use 1 to 128 letters, digits, '.', "
                           "'+', '_' and '-', starting with a letter or a digit")


def check_environment_name(environment: str) -> None:
    """``JournalError`` unless ``environment`` is a name every store accepts (the rules of rollout ids).

    Reads check it too: a name that no journal can hold (``"prod\\n"``) would otherwise read as an
    environment nobody has claimed."""
    if not isinstance(environment, str) or not _ROLLOUT_ID.fullmatch(environment):
        raise JournalError(f"environment name {environment!r} is not valid; use 1 to 128 letters, digits, "
                           "'.', '+', '_' and '-', starting with a letter or a digit")


def check_delivery(rollout_id: str, notifier: str, seq: int) -> None:
    """``JournalError`` unless ``set_delivered(rollout_id, notifier, seq)`` names a position at all
    (whether the rollout has record ``seq`` is for the store to say)."""
    check_rollout_id(rollout_id)
    if not isinstance(notifier, str) or not notifier:
        raise JournalError(f"notifier name {notifier!r} is not valid; give the name of its [notify.NAME] "
                           "table")
    if type(seq) is not int or seq < 0:
        raise JournalError(f"a delivery position must be a record's sequence number (a whole number, 0 or "
                           f"more), got {seq!r}")


_PLAIN = (str, int, bool, type(None))


def _plainly_json(value: Mapping[str, JSONValue]) -> bool:
    """True when ``value`` is surely plain JSON: a dict of text keys whose values are text, whole
    numbers, booleans, None, finite floats, or lists of those (what the core itself writes).
    False means "not sure": :func:`_check_data` then asks ``json.dumps`` as before."""
    if type(value) is not dict:
        return False
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str:
            return False
        if kind in _PLAIN:
            continue
        if kind is float:
            if item - item != 0.0:  # inf or nan
                return False
            continue
        if kind is list or kind is tuple:
            for part in item:
                if type(part) not in _PLAIN:
                    return False
            continue
        return False
    return True


def _check_data(instance: object, _attribute: object, value: Mapping[str, JSONValue]) -> None:
    if _plainly_json(value):
        return  # what json.dumps below would accept, found without encoding it
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


@attrs.frozen
class Summary:
    """What a store keeps beside a rollout's records so listings need not replay them.

    ``seq`` is the record it describes; ``data`` is plain JSON made by the core's model
    (:func:`deploystate.rollout.summary_of`), opaque to the store.
    """

    seq: int
    data: Mapping[str, Any]


class MemoryStore:
    """A store in memory (:class:`deploystate.ports.Store`): for tests and throw-away simulations.

    It keeps the same promises as :class:`deploystate.sqlite_store.SQLiteStore` (an append and
    its summary are one step; a summary is kept as JSON text, so readers get what a file would
    give back), minus durability.
    """

    def __init__(self) -> None:
        self._records: dict[str, list[Record]] = {}
        # rollout -> (seq it describes, its JSON text, or a flat dict of plain values in the key
        # order that text would have: decoding the text would give that very dict back)
        self._summaries: dict[str, tuple[int, str | dict[str, JSONValue]]] = {}
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._env_summaries: dict[str, tuple[int, str]] = {}
        self._environments: dict[str, list[Record]] = {}
        self._delivered: dict[str, dict[str, int]] = {}  # rollout -> notifier -> last record told

    def append(self, rollout_id: str, expected_seq: int, entries: Sequence[Entry],
               summary: Mapping[str, JSONValue] | None = None) -> list[Record]:
        check_rollout_id(rollout_id)
        text = None if summary is None else _flat_summary(summary) or summary_text(summary)
        with self._lock:
            existing = self._records.get(rollout_id, [])
            last = existing[-1].seq if existing else 0
            if last != expected_seq:
                raise conflict(rollout_id, expected_seq, last)
            if not entries and not existing:
                return []  # nothing to append, and no rollout to keep a summary for
            made = [_record(rollout_id, last + i + 1, e) for i, e in enumerate(entries)]
            self._records[rollout_id] = [*existing, *made]
            if text is not None:
                self._summaries[rollout_id] = (last + len(made), text)
            return made

    def read(self, rollout_id: str, after: int = 0) -> list[Record]:
        with self._lock:
            if rollout_id not in self._records:
                raise unknown(rollout_id, list(self._records))
            return self._records[rollout_id][max(after, 0):]

    def read_all(self) -> dict[str, list[Record]]:
        with self._lock:
            return {k: list(v) for k, v in self._records.items()}

    def rollouts(self) -> list[str]:
        with self._lock:
            return list(self._records)

    def last_seq(self, rollout_id: str) -> int:
        with self._lock:
            records = self._records.get(rollout_id)
            return records[-1].seq if records else 0

    def summaries(self) -> dict[str, tuple[int, Summary | None]]:
        with self._lock:
            kept = {rid: (records[-1].seq, self._summaries.get(rid))
                    for rid, records in self._records.items()}
        return {rid: (last, None if s is None else Summary(s[0], json.loads(s[1]) if isinstance(s[1], str)
                                                            else dict(s[1])))
                for rid, (last, s) in kept.items()}

    @contextlib.contextmanager
    def hold(self, rollout_id: str) -> Iterator[None]:
        check_rollout_id(rollout_id)
        with self._lock:
            if rollout_id in self._held:
                raise busy(rollout_id)
            self._held.add(rollout_id)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(rollout_id)

    def env_append(self, environment: str, expected_seq: int, entries: Sequence[Entry],
                   summary: Mapping[str, JSONValue] | None = None) -> list[Record]:
        check_environment_name(environment)
        text = None if summary is None else summary_text(summary)
        with self._lock:
            existing = self._environments.setdefault(environment, [])
            last = existing[-1].seq if existing else 0
            if last != expected_seq:
                if not existing:
                    del self._environments[environment]
                raise env_conflict(environment, expected_seq, last)
            if not entries:
                if not existing:
                    del self._environments[environment]
                return []  # an environment exists only through its records
            made = [_record(environment, last + i + 1, e) for i, e in enumerate(entries)]
            existing.extend(made)  # in place: an environment's journal grows with every rollout
            if text is not None:
                self._env_summaries[environment] = (last + len(made), text)
            return made

    def env_summary(self, environment: str) -> Summary | None:
        check_environment_name(environment)
        with self._lock:
            kept = self._env_summaries.get(environment)
        return None if kept is None else Summary(kept[0], json.loads(kept[1]))

    def env_read(self, environment: str, after: int = 0) -> list[Record]:
        check_environment_name(environment)
        with self._lock:
            return self._environments.get(environment, [])[max(after, 0):]

    def environments(self) -> list[str]:
        with self._lock:
            return sorted(self._environments)

    def delivered(self, rollout_id: str) -> dict[str, int]:
        with self._lock:
            return dict(self._delivered.get(rollout_id, {}))

    def set_delivered(self, rollout_id: str, notifier: str, seq: int) -> None:
        check_delivery(rollout_id, notifier, seq)
        with self._lock:
            records = self._records.get(rollout_id)
            if records is None:
                raise unknown(rollout_id, list(self._records))
            if seq > records[-1].seq:
                raise beyond_last(rollout_id, notifier, seq, records[-1].seq)
            if seq == 0:
                return  # position 0 is "none yet": nothing to keep
            positions = self._delivered.setdefault(rollout_id, {})
            positions[notifier] = max(positions.get(notifier, 0), seq)

    def close(self) -> None:
        return None

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _flat_summary(summary: Mapping[str, JSONValue]) -> dict[str, JSONValue] | None:
    """``summary`` as ``json.loads(summary_text(summary))`` would give it back, when it is a flat
    dict of text keys and plain values (the core's summaries are): then nothing needs encoding.
    None when it is anything else (it is then kept as text, checked by :func:`summary_text`)."""
    if type(summary) is not dict:
        return None
    for key, value in summary.items():
        kind = type(value)
        if type(key) is not str or not (kind in _PLAIN or (kind is float and value - value == 0.0)):
            return None
    return dict(sorted(summary.items()))


def summary_text(summary: Mapping[str, JSONValue]) -> str:
    """``summary`` as the JSON text stores keep; ``JournalError`` if it is not a plain JSON object."""
    if not isinstance(summary, Mapping):
        raise JournalError(f"a rollout summary must be a mapping, got {type(summary).__name__}")
    try:
        return json.dumps(summary, allow_nan=False, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise JournalError(f"rollout summary must be plain JSON: {error}") from None


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


def env_conflict(environment: str, expected: int, last: int) -> JournalConflict:
    return JournalConflict(
        f"environment {environment} changed while this command was deciding (expected record {expected}, "
        f"found {last}); nothing was written. Another runner claimed or released it meanwhile: read the "
        "environment again and try again"
    )


def beyond_last(rollout_id: str, notifier: str, seq: int, last: int) -> JournalError:
    return JournalError(f"cannot mark record {seq} of rollout {rollout_id} delivered to {notifier}: its last "
                        f"record is {last}; nothing was written. Deliver only records read from the journal")


def unknown(rollout_id: str, known: Sequence[str]) -> UnknownRollout:
    hint = f"known rollouts: {', '.join(sorted(known)[-5:])}" if known else "the journal is empty"
    return UnknownRollout(f"no rollout {rollout_id} in the journal ({hint}); start it with "
                          f"'deploystate start {rollout_id}'")


def busy(rollout_id: str) -> RolloutBusy:
    return RolloutBusy(f"rollout {rollout_id} is being run by another process; nothing was done. "
                       "Wait for it to stop, or check it with 'deploystate status'")


# -- what every store's check() shares ----------------------------------------------------------

MOST_PROBLEMS = 100  # of one kind, in a store's check() answer


class ProblemList:
    """Collects problems of one kind into ``problems``, at most ``MOST_PROBLEMS`` of them."""

    def __init__(self, problems: list[str], kind: str) -> None:
        self.problems, self.kind, self.count = problems, kind, 0

    def add(self, problem: str) -> None:
        self.count += 1
        if self.count <= MOST_PROBLEMS:
            self.problems.append(problem)

    def close(self) -> None:
        if self.count > MOST_PROBLEMS:
            self.problems.append(f"... and {self.count - MOST_PROBLEMS} more {self.kind}")


def json_object(text: object) -> dict[str, Any] | None:
    """``text`` decoded if it is the text of a JSON object, else None."""
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

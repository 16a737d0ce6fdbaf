"""One model of a rollout: an immutable view rebuilt from its journal records.

Everything the runner, the report, the notices and the command line ask about a rollout is
answered here, computed once per record: each step's phase (from the machine, never from the
records a second time), its attempts, timings and deployment, and where the rollout as a whole
stands (:mod:`deploystate.standing`).  A view never changes; :meth:`RolloutView.applied` returns
the view after more records, so a decision made on a view cannot be spoilt by later writes.

A deployment's ``start`` record carries its idempotency key, ref and check mode: it is the
intent, written before the deployer is called.
"""

from __future__ import annotations

import functools
import json
import operator
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from deploystate.actions import Action
from deploystate.errors import EventRefused
from deploystate.journal import Entry, JournalCorrupt, Record
from deploystate.machine import ABORTED, ACTIVE, DONE, Phase, Rollout, RolloutMachine
from deploystate.ports import Store
from deploystate.spec import Spec, StepKind
from deploystate.standing import Standing, standing_of
from deploystate.strategy import Strategy

State = tuple[str, ...] | str


@attrs.frozen
class StepState:
    """What the journal says about one step: its phase, and its current attempt."""

    name: str
    kind: StepKind
    phase: Phase = Phase.PENDING
    attempt: int = 0
    key: str | None = None
    keys: tuple[str, ...] = ()  # every attempt's idempotency key, in order
    ref: str | None = None
    check_mode: bool | None = None
    environments: tuple[str, ...] = ()
    deployment_id: str | None = None
    web_url: str | None = None
    first_started_at: float | None = None  # the first attempt's start
    started_at: float | None = None  # the current attempt's start
    timed_from: float | None = None  # a bake counts from here (the deployment before it finished)
    ended_at: float | None = None  # succeeded or skipped
    failed_at: float | None = None
    finished_at: float | None = None  # the deployment's own end, as its deployer reported it
    last_status: str | None = None
    triggers: int = 0  # accepted triggers over all attempts
    doubt_since: float | None = None  # a trigger of this attempt failed in doubt at this time
    reason: str | None = None
    timed_out: bool = False  # the last failure was the runner giving up waiting
    closed_by: str | None = None  # who promoted, or skipped the bake
    closing: Action | None = None  # the action that last ended it (succeed, skip, fail)
    canceled: bool = False  # its current deployment was canceled by a person's command
    # How its deployment ended out there after the rollout itself had ended (an abort's cancel
    # found it already succeeded; one left running was watched to its end): an Outcome's value.
    outside_outcome: str | None = None

    @property
    def duration_s(self) -> float | None:
        end = self.ended_at if self.phase is Phase.SUCCEEDED else (
            self.failed_at if self.phase is Phase.FAILED else None)
        if self.first_started_at is None or end is None:
            return None
        return end - self.first_started_at


@attrs.frozen
class Override:
    """A person overrode the production checks named in ``checks`` until ``until``."""

    by: str
    reason: str
    checks: frozenset[str]
    at: float
    until: float

    def covers(self, names: frozenset[str], now: float) -> bool:
        return now < self.until and names <= self.checks


@attrs.frozen
class RolloutView:
    """A rollout as rebuilt from its records.  Frozen: :meth:`applied` makes the next one."""

    rollout_id: str
    version: str
    spec: Spec
    machine: RolloutMachine = attrs.field(repr=False, eq=False)
    state: State  # the machine's configuration
    settings: Mapping[str, Any]
    created: Mapping[str, Any]  # the 'created' record's data (plan, backend, ...)
    created_at: float
    created_by: str
    seq: int
    last: Record
    steps: Mapping[str, StepState]
    ended_at: float | None = None
    abort_reason: str | None = None
    leave_running: bool = False  # aborted with its running deployments left alone
    overrides: tuple[Override, ...] = ()
    # The last production checks' record data, by what they were run for ("promotion", a step).
    checks: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    superseded: Mapping[str, Any] | None = None  # the 'superseded' record's data
    _standing: Standing | None = attrs.field(default=None, init=False, repr=False, eq=False)
    _ready: tuple[str, ...] | None = attrs.field(default=None, init=False, repr=False, eq=False)

    @property
    def standing(self) -> Standing:
        """Where the rollout stands: computed once per view, when first asked."""
        if self._standing is None:
            object.__setattr__(self, "_standing", standing_of(
                self.status, self.spec, self.steps, self.abort_reason, self.machine.optional,
                superseded=None if self.superseded is None else str(self.superseded.get("why")),
                checks_refused=self.checks.get("promotion", {}).get("passed") is False))
        assert self._standing is not None
        return self._standing

    # -- reading ----------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """``active``, ``done`` or ``aborted``."""
        return self.state if isinstance(self.state, str) and self.state in (DONE, ABORTED) else ACTIVE

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    @property
    def phases(self) -> dict[str, Phase]:
        """Each step's phase (once the rollout has ended: the last phase each reached)."""
        return {name: step.phase for name, step in self.steps.items()}

    @property
    def last_at(self) -> float:
        return self.last.at

    @property
    def plan(self) -> str | None:
        plan = self.created.get("plan")
        return None if plan is None else str(plan)

    @property
    def deploys(self) -> bool:
        """Whether its backend really deploys (False: a simulation)."""
        if "deploys" in self.created:
            return bool(self.created["deploys"])
        # Made before this was recorded: the simulated backend said so in its description.
        return "nothing is ever deployed" not in str(self.created.get("backend", ""))

    @property
    def rollback(self) -> Mapping[str, Any] | None:
        """For a rollback (``deploystate rollback``): its environment, who asked and why."""
        found = self.created.get("rollback")
        return found if isinstance(found, Mapping) else None

    def live_overrides(self, now: float) -> tuple[Override, ...]:
        return tuple(o for o in self.overrides if now < o.until)

    def overridden(self, failing: frozenset[str], now: float) -> bool:
        """Whether live overrides cover every check in ``failing`` (none failing: nothing to cover)."""
        if not failing:
            return True
        covered: set[str] = set()
        for override in self.live_overrides(now):
            covered |= override.checks
        return failing <= covered

    @property
    def strategy(self) -> Strategy:
        """The plan the rollout was created with (which path is real)."""
        return Strategy.from_mapping(self.settings)

    @property
    def backend(self) -> str | None:
        backend = self.created.get("backend")
        return None if backend is None else str(backend)

    def ready(self) -> list[str]:
        """Pending steps whose needs have all succeeded: what may start now."""
        return list(self.ready_steps)

    @property
    def ready_steps(self) -> tuple[str, ...]:
        """:meth:`ready` as a tuple, worked out once per view (a view never changes)."""
        ready = self._ready
        if ready is None:
            found: list[str] = []
            if self.active:
                steps = self.steps
                for s in self.spec.steps:
                    if steps[s.name].phase is Phase.PENDING:
                        for need in s.needs:
                            if steps[need].phase is not Phase.SUCCEEDED:
                                break
                        else:
                            found.append(s.name)
            ready = tuple(found)
            object.__setattr__(self, "_ready", ready)
        return ready

    def can_finish(self) -> bool:
        """Every step the real path needs succeeded, and every dry run is over (or can never start)."""
        return self.active and self.machine.finishable(self.state)

    def step_of_key(self) -> dict[str, str]:
        """Every idempotency key this rollout used, and its step."""
        return {key: name for name, step in self.steps.items() for key in step.keys}

    # -- changing ---------------------------------------------------------------------------
    def applied(self, records: Iterable[Record]) -> RolloutView:
        """The view after ``records`` (which must follow this view's last record)."""
        replay = _Replay(self)
        for record in records:
            if record.seq != replay.seq + 1:
                raise JournalCorrupt(f"rollout {self.rollout_id}: record {record.seq} does not follow "
                                     f"record {replay.seq}")
            replay.apply(record)
        return replay.result()

    def with_entries(self, entries: Sequence[Entry]) -> tuple[RolloutView, list[Record]]:
        """The view after ``entries`` were appended, and the records they would become.

        Raises :class:`EventRefused` if the machine refuses one (nothing is changed).
        """
        records = [Record(self.rollout_id, self.seq + i + 1, e.action, e.at, e.actor, e.step, dict(e.data))
                   for i, e in enumerate(entries)]
        replay = _Replay(self)
        for record in records:
            replay.apply(record, refuse=True)
        return replay.result(), records


def summary_of(view: RolloutView) -> dict[str, Any]:
    """What a store keeps beside the records so listings need not replay (plain JSON)."""
    standing = view.standing
    return {"rollout": view.rollout_id, "version": view.version, "spec": view.spec.name,
            "status": view.status, "situation": standing.situation, "where": standing.where.value,
            "created_at": view.created_at, "last_at": view.last_at, "records": view.seq,
            **({"superseded": True} if view.superseded is not None else {})}


class Machines:
    """One compiled machine per spec and plan, shared by every rollout that runs with them.

    The plan (the rollout's recorded strategy) says which steps are dry runs the rollout may
    finish without (:meth:`deploystate.strategy.Strategy.optional_steps`).
    """

    def __init__(self) -> None:
        self._specs: dict[str, Spec] = {}
        self._by_key: dict[tuple[str, frozenset[str]], RolloutMachine] = {}

    def for_mapping(self, mapping: Mapping[str, Any],
                    settings: Mapping[str, Any] | None = None) -> tuple[Spec, RolloutMachine]:
        text = json.dumps(mapping, sort_keys=True)
        spec = self._specs.get(text)
        if spec is None:
            spec = self._specs[text] = Spec.from_mapping(mapping, source="journal")
        optional = Strategy.from_mapping(settings).optional_steps(spec) if settings else frozenset()
        machine = self._by_key.get((text, optional))
        if machine is None:
            machine = self._by_key[(text, optional)] = RolloutMachine(spec, optional)
        return spec, machine


MACHINES = Machines()


def rebuild(records: Sequence[Record], machines: Machines = MACHINES) -> RolloutView:
    """Replay ``records`` (one rollout's, in order) into a :class:`RolloutView`."""
    if not records or records[0].action != Action.CREATED:
        rid = records[0].rollout_id if records else "?"
        raise JournalCorrupt(f"rollout {rid}: the journal does not start with 'created'; it cannot "
                             "be replayed. Restore the journal from a backup")
    first = records[0]
    data = first.data
    try:
        spec, machine = machines.for_mapping(data["spec"], data.get("settings"))
        version = str(data["version"])
    except (KeyError, TypeError) as error:
        raise JournalCorrupt(f"rollout {first.rollout_id}: 'created' record is incomplete "
                             f"({error})") from None
    initial = _initial_state(machine)
    view = RolloutView(
        rollout_id=first.rollout_id, version=version, spec=spec, machine=machine, state=initial,
        settings=dict(data.get("settings", {})), created=dict(data), created_at=first.at,
        created_by=first.actor, seq=first.seq, last=first,
        steps={s.name: StepState(s.name, s.kind) for s in spec.steps},
    )
    return view.applied(records[1:])


# -- replaying one record ---------------------------------------------------------------------

class _Scratch:
    """One model per machine to compute next states on: views hold states, not models."""

    def __init__(self, machine: RolloutMachine) -> None:
        self.lock = threading.Lock()
        self.model: Rollout = machine.new("~scratch")
        self.initial: State = _frozen(self.model.state)


_SCRATCH: weakref.WeakKeyDictionary[RolloutMachine, _Scratch] = weakref.WeakKeyDictionary()
_SCRATCH_LOCK = threading.Lock()


def _scratch(machine: RolloutMachine) -> _Scratch:
    found = _SCRATCH.get(machine)
    if found is None:
        with _SCRATCH_LOCK:
            found = _SCRATCH.get(machine)
            if found is None:
                found = _SCRATCH[machine] = _Scratch(machine)
    return found


def _initial_state(machine: RolloutMachine) -> State:
    return _scratch(machine).initial


def _frozen(state: str | list[str]) -> State:
    return tuple(state) if isinstance(state, list) else state


class _Replay:
    """Applies records to a view: steps change as plain dicts, frozen once at the end (a frozen
    copy per record made replaying a journal cost several times as much)."""

    def __init__(self, view: RolloutView) -> None:
        self.view = view
        self.state: State = view.state
        self.seq = view.seq
        self.last = view.last
        self.ended_at = view.ended_at
        self.leave_running = view.leave_running
        self.abort_reason = view.abort_reason
        self.overrides = view.overrides
        self.checks = view.checks
        self.superseded = view.superseded
        self.changed: dict[str, dict[str, Any]] = {}

    def result(self) -> RolloutView:
        view = self.view
        if self.seq == view.seq:
            return view
        steps = dict(view.steps)
        for name, fields in self.changed.items():
            steps[name] = StepState(**fields)
        return _replace(view, state=self.state, seq=self.seq, last=self.last, ended_at=self.ended_at,
                        leave_running=self.leave_running, abort_reason=self.abort_reason, steps=steps,
                        overrides=self.overrides, checks=self.checks, superseded=self.superseded)

    def apply(self, record: Record, *, refuse: bool = False) -> None:
        rid = self.view.rollout_id
        action = _ACTIONS.get(record.action)
        if action is None:
            raise JournalCorrupt(f"rollout {rid}: record {record.seq} has unknown action "
                                 f"{record.action!r}; it was written by a newer deploystate?") from None
        data = record.data
        if action.is_event:
            try:
                self.state = self._fire(action, record.step, data)
            except EventRefused:
                if refuse:
                    raise
                raise JournalCorrupt(f"rollout {rid}: record {record.seq} ({action} {record.step or ''}) "
                                     "cannot be replayed: the machine refuses it") from None
            except TypeError as error:
                raise JournalCorrupt(f"rollout {rid}: record {record.seq} has bad data ({error})") from None
            if record.step is None:
                self.ended_at = record.at
                if action is Action.ABORT:
                    self.abort_reason = str(data.get("reason"))
                    self.leave_running = bool(data.get("leave_running"))
            else:
                _after_event(self._step(record), record, action, _phase_in(self.state, record.step))
        elif action is Action.CREATED:
            raise JournalCorrupt(f"rollout {rid}: record {record.seq} is a second 'created'")
        elif action in _GATE_FACTS:
            self._gate_fact(action, record)
        elif record.step is not None:
            step = self._step(record)
            if action is Action.TRIGGERED:
                step.update(deployment_id=str(data.get("deployment_id")), web_url=data.get("web_url"),
                            triggers=step["triggers"] + 1, doubt_since=None, canceled=False)
            elif action is Action.CANCELED:
                step.update(last_status=data.get("status"),
                            canceled=str(data.get("deployment_id")) == str(step["deployment_id"]))
                if data.get("outcome") is not None:
                    step["outside_outcome"] = str(data["outcome"])
            else:  # observed
                step["last_status"] = data.get("status")
                if data.get("ended") is not None:
                    step["outside_outcome"] = str(data["ended"])
                if data.get("trigger_in_doubt"):
                    step["doubt_since"] = record.at
        self.seq = record.seq
        self.last = record

    def _gate_fact(self, action: Action, record: Record) -> None:
        data = record.data
        if action is Action.CHECKED:
            self.checks = {**self.checks, str(data.get("for") or record.step): dict(data)}
        elif action is Action.OVERRIDDEN:
            names = data.get("checks", ())
            self.overrides = (*self.overrides, Override(
                str(data.get("by")), str(data.get("reason")),
                frozenset(str(n) for n in names) if isinstance(names, list | tuple) else frozenset(),
                record.at, _number(data.get("until"), record.at) or record.at))
        else:  # superseded
            self.superseded = dict(data)

    def _step(self, record: Record) -> dict[str, Any]:
        name = record.step or ""
        fields = self.changed.get(name)
        if fields is None:
            found = self.view.steps.get(name)
            if found is None:
                raise JournalCorrupt(f"rollout {self.view.rollout_id}: record {record.seq} names unknown "
                                     f"step {record.step!r}")
            fields = self.changed[name] = dict(zip(_STEP_FIELDS, _step_values(found), strict=True))
        return fields

    def _fire(self, action: Action, step: str | None, data: Mapping[str, Any]) -> State:
        machine = self.view.machine
        scratch = _scratch(machine)
        with scratch.lock:
            model = scratch.model
            model.state = list(self.state) if isinstance(self.state, tuple) else self.state
            machine.fire(model, action, step, **data)
            return _frozen(model.state)


def _phase_in(state: State, name: str) -> Phase:
    """``name``'s phase in a machine configuration (leaves are ``active.<step>.<phase>``)."""
    phase = _phase_found(state, name)
    if phase is None:
        raise JournalCorrupt(f"step {name!r} has no phase in machine state {state!r}")
    return phase


@functools.lru_cache(maxsize=4096)  # a spec's machine has few configurations; replays meet them again
def _phase_found(state: State, name: str) -> Phase | None:
    prefix = f"{ACTIVE}.{name}."
    for leaf in (state,) if isinstance(state, str) else state:
        if leaf.startswith(prefix):
            return Phase(leaf[len(prefix):])
    return None


def _after_event(step: dict[str, Any], record: Record, action: Action, phase: Phase) -> None:
    """Change ``step`` (its fields) for an event of the machine on it."""
    data = record.data
    step["phase"] = phase
    if action is Action.START:
        key = data.get("key")
        step.update(
            attempt=step["attempt"] + 1, key=key, keys=(*step["keys"], str(key)) if key else step["keys"],
            ref=data.get("ref"), check_mode=data.get("check_mode"),
            environments=tuple(data.get("environments", ())), deployment_id=None, web_url=None,
            first_started_at=record.at if step["first_started_at"] is None else step["first_started_at"],
            started_at=record.at, timed_from=_number(data.get("from"), record.at), ended_at=None,
            failed_at=None, finished_at=None, last_status=None, reason=None, doubt_since=None,
            timed_out=False, canceled=False, outside_outcome=None)
    elif action in (Action.SUCCEED, Action.SKIP):
        step.update(ended_at=record.at, reason=data.get("reason"), closed_by=data.get("by"), closing=action,
                    finished_at=_number(data.get("finished_at"), None))
    elif action is Action.FAIL:
        step.update(failed_at=record.at, reason=data.get("reason"), timed_out=bool(data.get("timed_out")),
                    closing=action, finished_at=_number(data.get("finished_at"), None))
    elif action is Action.RESUME:
        # Retried out there: its wait limit counts from now (first_started_at keeps the duration).
        step.update(failed_at=None, reason=None, timed_out=False, closing=None, started_at=record.at)
    # retry: pending again, its history kept


def _number(value: object, default: float | None) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def listing(store: Store, machines: Machines = MACHINES) -> list[dict[str, Any]]:
    """Every rollout in ``store`` as its summary, oldest first.

    Summaries kept beside the records are used as they are; a rollout whose summary is missing
    or stale (written by an older deploystate, or an append without one) is rebuilt.
    """
    rows = []
    for rollout_id, (last_seq, summary) in store.summaries().items():
        if summary is not None and summary.seq == last_seq:
            rows.append(dict(summary.data))
        else:
            rows.append(summary_of(rebuild(store.read(rollout_id), machines)))
    return sorted(rows, key=lambda row: (row["created_at"], row["rollout"]))


_FIELDS: dict[type, tuple[str, ...]] = {}
_Value = TypeVar("_Value", "RolloutView", "StepState")


def _fields(kind: type) -> tuple[str, ...]:
    names = _FIELDS.get(kind)
    if names is None:
        names = _FIELDS[kind] = tuple(f.name for f in attrs.fields(kind) if f.init)
    return names


_GETTERS: dict[type, operator.attrgetter[Any]] = {}


def _getter(kind: type, names: tuple[str, ...]) -> operator.attrgetter[Any]:
    """Reads every one of ``names`` at once, as a tuple (several fields: attrgetter gives a tuple)."""
    getter = _GETTERS.get(kind)
    if getter is None:
        assert len(names) > 1
        getter = _GETTERS[kind] = operator.attrgetter(*names)
    return getter


_GATE_FACTS = frozenset({Action.CHECKED, Action.OVERRIDDEN, Action.SUPERSEDED})
_ACTIONS: dict[str, Action] = {action.value: action for action in Action}  # Action(text), without enum's cost
_STEP_FIELDS = _fields(StepState)
_step_values = operator.attrgetter(*_STEP_FIELDS)  # a step's fields as a tuple, in that order


def _replace(value: _Value, **changes: Any) -> _Value:
    """``attrs.evolve`` without its checks (these classes have no validators)."""
    kind = type(value)
    made = object.__new__(kind)
    setattr_ = object.__setattr__
    names = _fields(kind)
    for name, kept in zip(names, _getter(kind, names)(value), strict=True):
        setattr_(made, name, kept)
    for name, changed in changes.items():
        setattr_(made, name, changed)
    if kind is RolloutView:
        object.__setattr__(made, "_standing", None)  # worked out again when asked
        object.__setattr__(made, "_ready", None)
    return made

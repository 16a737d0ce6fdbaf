"""Property-based tests of rollouts: hypothesis rules that any spec can be checked with.

This module needs hypothesis, a test dependency (``pip install 'deploystate[test]'``);
``import deploystate`` never imports it.

Check your own spec from your own test suite (pytest or unittest collects the ``TestCase``)::

    from deploystate.spec import load_spec
    from deploystate.testing import rollout_rules

    TestMySpec = rollout_rules(load_spec("mine.toml")).TestCase

The rules open rollouts on one machine (two active at a time, each opened part-way into a
walk towards done) and fire random events at them: legal ones with the data they need, and
illegal ones: every action (facts such as ``triggered`` too) on every step, on no step and on an
unknown one, ``finish`` and ``abort``, starts whose needs have not succeeded, restarts without
``retry``, with and without ``by`` and ``reason``, ``elapsed_s`` below or above a bake's duration.
Steps fail and are resumed or retried; gates are decided well or badly; operators abort.  The
rules keep their own record of every accepted event (the oracle, never the machine's view) and
check, after every single event, each :class:`Invariant`:

* a step never starts before every step it needs has succeeded;
* a protected deployment never starts unless every gate before it (``spec.ancestors``) is
  satisfied: a bake succeeded with ``elapsed_s`` >= its duration or was skipped with a
  ``reason`` and ``by``, and a promotion recorded who promoted (``by``);
* each start of a step is its first or follows an explicit ``retry``;
* ``done`` only when every step succeeded; ``done`` and ``aborted`` are final; an abort has a
  reason;
* a refused event (:class:`~deploystate.errors.EventRefused`) changes nothing, and an event the
  rules allow is never refused;
* an accepted event changes exactly what it should: it follows a transition of its step, and
  the machine's phases agree with the recorded history, for the rollout it was sent to and for
  every other rollout (so an event silently ignored is caught).

A failure raises :class:`InvariantViolated`, naming the rule and listing the accepted events.

Test the machine itself on random valid specs::

    from deploystate.testing import rollout_rules, valid_specs

    TestAnySpec = rollout_rules(valid_specs()).TestCase

Hypothesis settings apply as usual, e.g. fewer events per run::

    from hypothesis import settings

    TestMySpec = settings(stateful_step_count=30)(rollout_rules(spec)).TestCase

Plug in another machine (a wrapper, or a deliberately broken one in a test) with
``rollout_rules(spec, machine_factory=MyMachine)``.

The gate between rollouts
-------------------------

:func:`gate_rules` checks the gate that several rollouts share: real runners (one per rollout,
individual deployments the real path) over one :class:`~deploystate.journal.MemoryStore`, one
:class:`~deploystate.doubles.ManualClock`, a fake deployer whose deployments run until a rule
finishes them, fake production checks that rules fail and pass, and the environment lock check::

    from deploystate.spec import load_spec
    from deploystate.testing import gate_rules

    TestMyGate = gate_rules(load_spec("mine.toml")).TestCase

    # your versions (oldest first) and the names of your checks:
    TestMyGate = gate_rules(spec, versions=("1.0.0", "1.1.0", "1.2.0"), checks=("incidents",)).TestCase

Rules create rollouts of versions drawn from the pool (older or newer than the others), run one
runner pass (``advance``), walk a rollout towards done, finish running deployments (succeeded or
failed), fail and pass checks, promote with and without an override, override, lock and unlock
environments, roll back to a version that succeeded there (or one that did not: refused), retry,
skip a bake, abort (leaving deployments running or not) and let time pass.  Every trigger the
deployer receives is judged when it happens against the world (what runs where, what succeeded
where, the verdicts and the overrides the rules made), never against the journal; each
:class:`GateInvariant`:

* one active deployment per environment (a deployment runs until a rule finishes it or it is
  canceled);
* never an older version over a newer one that succeeded there, except in a rollback the rules
  asked for, to a version that succeeded there;
* a protected deployment is never triggered while a check fails, unless a live override made for
  its rollout covers that check (``environment_lock`` is never covered).

A failure raises :class:`GateViolation`, naming the rule and listing what the world saw.  Settings
apply as usual, e.g. ``settings(max_examples=150, stateful_step_count=40)(gate_rules()).TestCase``.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import attrs
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from deploystate.actions import EVENTS, Action
from deploystate.config import RunnerConfig
from deploystate.doubles import FakeCheck, FakeDeployer, ManualClock, fake_backends
from deploystate.errors import DeploystateError, EventRefused
from deploystate.gates import ENVIRONMENT_LOCK, EnvironmentLockCheck
from deploystate.journal import MemoryStore
from deploystate.machine import ABORTED, ACTIVE, DONE, Phase, RolloutMachine
from deploystate.ports import Check, CheckContext, Deployment, Outcome, TriggerRequest, Verdict, natural_key
from deploystate.rollout import RolloutView
from deploystate.runner import Runner
from deploystate.spec import GATE_KINDS, Spec, Step, StepKind, default_spec, rollback_spec
from deploystate.strategy import Strategy

__all__ = [
    "Event",
    "GateInvariant",
    "GateRules",
    "GateViolation",
    "GateWorld",
    "Invariant",
    "InvariantViolated",
    "MachineUnderTest",
    "RolloutRecord",
    "RolloutRules",
    "gate_rules",
    "rollout_rules",
    "valid_specs",
]


class Invariant(enum.StrEnum):
    """The rules every rollout obeys; a value reads as the rule itself."""

    NEEDS_FIRST = "a step never starts before every step it needs has succeeded"
    GATES_BEFORE_PROTECTED = (
        "a protected deployment never starts unless every gate before it is satisfied "
        "(bake: elapsed_s >= its duration, or skipped with reason and by; promotion: by)"
    )
    RETRY_BEFORE_RESTART = "each start of a step is its first or follows an explicit retry"
    DONE_WHEN_ALL_SUCCEEDED = "done only when every step succeeded"
    ENDS_ARE_FINAL = "done and aborted are final: nothing is accepted after them"
    ABORT_HAS_REASON = "an abort records its reason"
    REFUSAL_CHANGES_NOTHING = "a refused event changes nothing"
    LEGAL_EVENTS_ACCEPTED = "an event the rules allow is accepted"
    MATCHES_HISTORY = "an accepted event changes exactly what it should"
    ROLLOUTS_INDEPENDENT = "an event changes only the rollout it was sent to"
    ONLY_DEFINED_TRANSITIONS = (
        "an accepted step event follows a transition of its step "
        "(start: pending, succeed/fail: running, skip: running bake, resume/retry: failed)"
    )


# The oracle's own transition table, written from the rules rather than read from the machine,
# so that a mistake in the machine's table cannot hide itself.
SOURCE: Mapping[Action, Phase] = {
    Action.START: Phase.PENDING,
    Action.SUCCEED: Phase.RUNNING,
    Action.FAIL: Phase.RUNNING,
    Action.SKIP: Phase.RUNNING,
    Action.RESUME: Phase.FAILED,
    Action.RETRY: Phase.FAILED,
}
DEST: Mapping[Action, Phase] = {
    Action.START: Phase.RUNNING,
    Action.SUCCEED: Phase.SUCCEEDED,
    Action.FAIL: Phase.FAILED,
    Action.SKIP: Phase.SUCCEEDED,
    Action.RESUME: Phase.RUNNING,
    Action.RETRY: Phase.PENDING,
}
# Phases whose events a careless machine might accept one transition early.
JUMPS: Mapping[Phase, tuple[Phase, ...]] = {
    Phase.PENDING: (Phase.RUNNING,),
    Phase.FAILED: (Phase.PENDING,),
}
UNKNOWN_STEP = "no_such_step"
ACTOR = "release-manager"
REASON = "incident 4242: production needs the fix now"


class MachineUnderTest(Protocol):
    """What the rules drive: :class:`~deploystate.machine.RolloutMachine`, or a wrapper of it."""

    def new(self, rollout_id: str) -> Any: ...

    def fire(self, rollout: Any, action: Action | str, step: str | None = None, **data: Any) -> None: ...

    def phases(self, rollout: Any) -> Mapping[str, Phase]: ...

    def status(self, rollout: Any) -> str: ...


@attrs.frozen
class Event:
    """One event as sent to the machine: an action, its step (None for finish/abort) and data."""

    action: Action
    step: str | None = None
    items: tuple[tuple[str, object], ...] = ()

    @property
    def data(self) -> dict[str, object]:
        return dict(self.items)

    def __str__(self) -> str:
        words = [self.action.value] if self.step is None else [self.action.value, self.step]
        words += [f"{key}={value!r}" for key, value in self.items]
        return " ".join(words)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints drawn events with this, instead of how the strategy built them.
        printer.text(str(self))


@attrs.define(eq=False)
class RolloutRecord:
    """The rules' own account of one rollout: every accepted event, and the phases it implies."""

    rollout_id: str
    handle: Any = attrs.field(repr=False)
    phases: dict[str, Phase] = attrs.field(repr=False)
    status: str = ACTIVE
    accepted: list[Event] = attrs.field(factory=list, repr=False)

    def events_on(self, step: str) -> list[Event]:
        return [e for e in self.accepted if e.step == step]

    def expected_view(self) -> tuple[str, dict[str, Phase]]:
        """What the machine must report: its status, and each step's phase while active."""
        return self.status, dict(self.phases) if self.status == ACTIVE else {}

    def record(self, event: Event) -> None:
        """Account for an accepted event: the phase its action leads to, whatever the source."""
        self.accepted.append(event)
        if self.status != ACTIVE:
            return
        if event.action is Action.FINISH:
            self.status = DONE
        elif event.action is Action.ABORT:
            self.status = ABORTED
        elif event.step in self.phases and event.action in DEST:
            self.phases[event.step] = DEST[event.action]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.rollout_id)

    def history(self) -> str:
        lines = [f"    {n}. {e}" for n, e in enumerate(self.accepted, 1)]
        return "\n".join(lines) if lines else "    (none)"


class InvariantViolated(AssertionError):
    """The machine under test broke one of the rules; the message shows how."""

    def __init__(self, invariant: Invariant, record: RolloutRecord, event: Event | None,
                 detail: str) -> None:
        self.invariant = invariant
        self.rollout_id = record.rollout_id
        self.event = event
        sent = f"after event {event}" if event is not None else "with no event sent"
        super().__init__(
            f"broken rule: {invariant.value}\n"
            f"rollout {record.rollout_id!r} {sent}: {detail}\n"
            f"events accepted by rollout {record.rollout_id!r}, in order:\n{record.history()}\n"
            "Fix the machine under test (or its spec); the steps hypothesis prints reproduce this."
        )


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _elapsed_enough(value: object, duration: int) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= duration


def _items(**data: object) -> tuple[tuple[str, object], ...]:
    """Event data without the keys given as None: those are left out, as a careless caller would."""
    return tuple(sorted((key, value) for key, value in data.items() if value is not None))


# Where elapsed_s falls against a bake's duration; resolved once the step is known.
_ELAPSED: Mapping[str, Callable[[int], object]] = {
    "exact": lambda d: d,
    "over": lambda d: d + 0.5,
    "short": lambda d: d - 1,
    "zero": lambda d: 0,
    "null": lambda d: None,
}
# Each key absent, blank or filled.  Strategies are built once: building them per draw costs
# more than the machine's events.
_DATA_SHAPES = st.fixed_dictionaries(
    {},
    optional={
        "by": st.sampled_from([ACTOR, "", "   "]),
        "reason": st.sampled_from([REASON, "", " "]),
        "elapsed_s": st.sampled_from(list(_ELAPSED)),
    },
)
_WALK = st.integers(0, 30)
_ADVANCE = st.integers(1, 8)


def _event(choice: tuple[Action, str | None, int], shape: Mapping[str, object]) -> Event:
    action, step, duration = choice
    data = dict(shape)
    if "elapsed_s" in data:
        data["elapsed_s"] = _ELAPSED[str(data["elapsed_s"])](duration)
    return Event(action, step, tuple(sorted(data.items())))


@functools.lru_cache(maxsize=4096)
def _events(choices: tuple[tuple[Action, str | None, int], ...]) -> st.SearchStrategy[Event]:
    """One of ``choices`` (action, step, the step's bake duration) with any data."""
    return st.builds(_event, st.sampled_from(choices), _DATA_SHAPES)


@attrs.frozen
class _Decide:
    """A move of a walk: decide this running gate (see ``_gate_decisions``)."""

    gate: Step

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"decide {self.gate.name}")


@functools.lru_cache(maxsize=1024)
def _gate_decisions(gate: Step) -> st.SearchStrategy[Event]:
    """How a running gate gets decided: half the time well, so that rollouts get past their
    gates; otherwise anyhow: ``by`` or ``reason`` blank or missing, ``elapsed_s`` short."""

    def succeed(**data: object) -> Event:
        return Event(Action.SUCCEED, gate.name, _items(**data))

    def skip(reason: str | None, by: str | None) -> Event:
        return Event(Action.SKIP, gate.name, _items(reason=reason, by=by))

    actors = st.sampled_from([ACTOR, "", "   ", None])
    if gate.kind is StepKind.PROMOTION:
        return st.just(succeed(by=ACTOR)) | st.builds(lambda by: succeed(by=by), actors)
    duration = gate.duration_s or 0
    elapsed = st.sampled_from([duration, duration + 60.5, duration - 1, 0, None])
    good = st.sampled_from([succeed(elapsed_s=duration), skip(REASON, ACTOR)])
    return good | st.builds(lambda e: succeed(elapsed_s=e), elapsed) | st.builds(
        skip, st.sampled_from([REASON, " ", None]), actors)


class RolloutRules(RuleBasedStateMachine):
    """Random legal and illegal events on several rollouts of one machine, checked after each.

    Use :func:`rollout_rules` to get a runnable subclass for a spec (or a strategy of specs).
    Subclasses may override :meth:`make_machine` to test another machine.
    """

    fixed_spec: ClassVar[Spec | None] = None
    # Rollouts are opened until this many are active; more dilute the events each one gets.
    max_active_rollouts: ClassVar[int] = 2

    rollouts: Bundle[RolloutRecord] = Bundle("rollouts")

    def __init__(self) -> None:
        super().__init__()
        self._spec: Spec | None = None
        self._machine: MachineUnderTest | None = None
        self.records: list[RolloutRecord] = []
        if self.fixed_spec is not None:
            self.use_spec(self.fixed_spec)

    def make_machine(self, spec: Spec) -> MachineUnderTest:
        return RolloutMachine(spec)

    def use_spec(self, spec: Spec) -> None:
        self._spec = spec
        self._machine = self.make_machine(spec)

    @property
    def spec(self) -> Spec:
        if self._spec is None:
            raise RuntimeError("no spec yet: build the rules with rollout_rules(spec)")
        return self._spec

    @property
    def machine(self) -> MachineUnderTest:
        if self._machine is None:
            raise RuntimeError("no machine yet: build the rules with rollout_rules(spec)")
        return self._machine

    def open_rollout(self) -> RolloutRecord:
        """A new rollout on the machine, and the rules' record of it (every step pending)."""
        # The same name hypothesis gives the rollout in the steps it prints.
        rollout_id = f"rollouts_{len(self.records)}"
        record = RolloutRecord(rollout_id, self.machine.new(rollout_id),
                               {step.name: Phase.PENDING for step in self.spec.steps})
        self.records.append(record)
        self.machine_agrees_with_every_record(record, None)
        return record

    # -- rules ------------------------------------------------------------------------------
    # Rules that find nothing to act on do nothing rather than carry a precondition: with
    # hypothesis' swarm testing, preconditions that all fail throw a whole run away.
    @initialize(target=rollouts, moves=_WALK, data=st.data())
    def first_rollout(self, moves: int, data: st.DataObject) -> RolloutRecord:
        """The first rollout, already up to ``moves`` events into a walk towards done.

        Every run then starts somewhere different, whichever rules hypothesis enables for it.
        """
        return self.open_rollout_underway(moves, data)

    @rule(target=rollouts, moves=_WALK, data=st.data())
    def new_rollout(self, moves: int, data: st.DataObject) -> RolloutRecord | MultipleResults[RolloutRecord]:
        """Another rollout on the same machine, beside the others, up to ``moves`` events in."""
        if sum(r.status == ACTIVE for r in self.records) >= self.max_active_rollouts:
            return multiple()
        return self.open_rollout_underway(moves, data)

    @rule(rollout=rollouts, data=st.data())
    def fire_any_event(self, rollout: RolloutRecord, data: st.DataObject) -> None:
        """Any action on any step, on no step or on a step the spec lacks, with any data."""
        steps: list[tuple[str | None, int]] = [(s.name, s.duration_s or 0) for s in self.spec.steps]
        steps += [(None, 0), (UNKNOWN_STEP, 0)]
        choices = tuple((action, step, duration) for action in Action for step, duration in steps)
        self.fire(rollout, data.draw(_events(choices), label="event"))

    @rule(rollout=rollouts, data=st.data())
    def fire_event_near_the_current_phase(self, rollout: RolloutRecord, data: st.DataObject) -> None:
        """An event the step's phase allows, with any data and whether its needs succeeded or not;
        or one that jumps a transition (succeed without start, start after failure without retry).

        Guards decide these: joins, bake durations, who promoted, reasons.
        """
        choices: list[tuple[Action, str | None, int]] = [(Action.FINISH, None, 0), (Action.ABORT, None, 0)]
        for step in self.spec.steps:
            phase = rollout.phases[step.name]
            near = {phase, *JUMPS.get(phase, ())}
            choices += [(action, step.name, step.duration_s or 0) for action, source in SOURCE.items()
                        if source in near and (action is not Action.SKIP or step.kind is StepKind.BAKE)]
        self.fire(rollout, data.draw(_events(tuple(choices)), label="event"))

    @rule(rollout=rollouts, data=st.data())
    def start_a_step(self, rollout: RolloutRecord, data: st.DataObject) -> None:
        """A pending step is started whether or not its needs succeeded (the join decides), or a
        failed one without a retry first."""
        waiting = [s for s, p in rollout.phases.items() if p in (Phase.PENDING, Phase.FAILED)]
        if waiting:
            self.fire(rollout, Event(Action.START, data.draw(st.sampled_from(waiting), label="step")))

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """A few steps of a walk towards done on one rollout (see :meth:`moves`)."""
        movable = [r for r in self.records if self.moves(r)]
        if movable:
            rollout = data.draw(st.sampled_from(movable), label="rollout")
            self.walk(rollout, data.draw(_ADVANCE, label="moves"), data)

    @rule(data=st.data())
    def a_running_step_fails(self, data: st.DataObject) -> None:
        """A downstream pipeline fails; a later walk resumes or retries the step."""
        running = [(r, s) for r in self.records if r.status == ACTIVE
                   for s, p in r.phases.items() if p is Phase.RUNNING]
        if running:
            rollout, step = data.draw(st.sampled_from(running), label="step")
            self.fire(rollout, Event(Action.FAIL, step))

    @rule(rollout=rollouts, reason=st.sampled_from([REASON, " ", None]))
    def abort(self, rollout: RolloutRecord, reason: str | None) -> None:
        """An operator aborts a rollout, giving a reason or not."""
        self.fire(rollout, Event(Action.ABORT, None, _items(reason=reason)))

    # -- walking towards done ---------------------------------------------------------------
    def open_rollout_underway(self, moves: int, data: st.DataObject) -> RolloutRecord:
        record = self.open_rollout()
        self.walk(record, moves, data)
        return record

    def walk(self, record: RolloutRecord, moves: int, data: st.DataObject) -> None:
        for _ in range(moves):
            options = self.moves(record)
            if not options:
                return
            move = data.draw(st.sampled_from(options), label="move")
            if isinstance(move, _Decide):
                self.fire(record, data.draw(_gate_decisions(move.gate), label="decision"))
            else:
                self.fire(record, move)

    def moves(self, record: RolloutRecord) -> list[Event | _Decide]:
        """Where a walk may go next: each legal start, success, resume, retry or finish (with the
        data it needs), and the decision of each running gate, made well or badly."""
        if record.status != ACTIVE:
            return []
        found: list[Event | _Decide] = []
        for step in self.spec.steps:
            phase = record.phases[step.name]
            if phase is Phase.RUNNING and step.kind in GATE_KINDS:
                found.append(_Decide(step))
            elif phase is Phase.PENDING:
                found.append(Event(Action.START, step.name))
            elif phase is Phase.RUNNING:
                found.append(Event(Action.SUCCEED, step.name))
            elif phase is Phase.FAILED:
                found += [Event(Action.RESUME, step.name), Event(Action.RETRY, step.name)]
        found.append(Event(Action.FINISH))
        return [m for m in found if isinstance(m, _Decide) or self.rules_allow(record, m)]

    # -- the oracle -------------------------------------------------------------------------
    def rules_allow(self, record: RolloutRecord, event: Event) -> bool:
        """Whether the rules accept ``event`` now, judged from the recorded history alone."""
        if record.status != ACTIVE:
            return False
        data = event.data
        if event.action not in EVENTS:
            return False  # a fact about a rollout (created, triggered, ...), not an event of its machine
        if event.action is Action.FINISH:
            return event.step is None and all(p is Phase.SUCCEEDED for p in record.phases.values())
        if event.action is Action.ABORT:
            return event.step is None and _text(data.get("reason"))
        if event.step not in record.phases:
            return False
        step = self.spec.step(event.step)
        if record.phases[step.name] is not SOURCE[event.action]:
            return False
        if event.action is Action.START:
            return all(record.phases[need] is Phase.SUCCEEDED for need in step.needs)
        if event.action is Action.SKIP:
            return step.kind is StepKind.BAKE and _text(data.get("reason")) and _text(data.get("by"))
        if event.action is Action.SUCCEED and step.kind is StepKind.BAKE:
            return _elapsed_enough(data.get("elapsed_s"), step.duration_s or 0)
        if event.action is Action.SUCCEED and step.kind is StepKind.PROMOTION:
            return _text(data.get("by"))
        return True

    def fire(self, record: RolloutRecord, sent: Event) -> None:
        """Send one event to the machine and check every rule against what happened."""
        before = {r.rollout_id: self._observe(r) for r in self.records}
        status_before = record.status
        phase_before = record.phases.get(sent.step) if sent.step is not None else None
        try:
            self.machine.fire(record.handle, sent.action, sent.step, **sent.data)
        except EventRefused:
            self.a_refused_event_changes_nothing(record, sent, before)
            self.an_event_the_rules_allow_is_accepted(record, sent)
            return
        record.record(sent)
        self.machine_agrees_with_every_record(record, sent)
        self.nothing_is_accepted_after_done_or_aborted(record, sent, status_before)
        if sent.action is Action.START:
            self.a_step_starts_only_after_its_needs_succeeded(record, sent)
            self.each_start_is_the_first_or_follows_a_retry(record, sent)
            self.a_protected_deployment_starts_only_after_its_gates(record, sent)
        elif sent.action is Action.FINISH:
            self.done_only_when_every_step_succeeded(record, sent)
        elif sent.action is Action.ABORT:
            self.an_abort_records_its_reason(record, sent)
        self.an_accepted_event_follows_a_transition(record, sent, phase_before)

    def _observe(self, record: RolloutRecord) -> tuple[str, dict[str, Phase]]:
        status = self.machine.status(record.handle)
        phases = dict(self.machine.phases(record.handle))
        return status, phases

    # -- the rules, one check each (separate raise sites keep hypothesis' failures apart) ----
    def a_refused_event_changes_nothing(self, record: RolloutRecord, sent: Event,
                                        before: Mapping[str, tuple[str, dict[str, Phase]]]) -> None:
        for other in self.records:
            after = self._observe(other)
            if after != before[other.rollout_id]:
                raise InvariantViolated(
                    Invariant.REFUSAL_CHANGES_NOTHING, record, sent,
                    f"the machine refused it, yet rollout {other.rollout_id!r} changed "
                    f"{_difference(before[other.rollout_id], after)}")

    def an_event_the_rules_allow_is_accepted(self, record: RolloutRecord, sent: Event) -> None:
        if self.rules_allow(record, sent):
            raise InvariantViolated(
                Invariant.LEGAL_EVENTS_ACCEPTED, record, sent,
                f"the machine refused it, but the rules allow it (phases: {_phases_text(record)})")

    def machine_agrees_with_every_record(self, record: RolloutRecord, sent: Event | None) -> None:
        for other in [record, *(r for r in self.records if r is not record)]:
            expected = other.expected_view()
            actual = self._observe(other)
            if actual == expected:
                continue
            difference = _difference(expected, actual)
            if other is record:
                raise InvariantViolated(
                    Invariant.MATCHES_HISTORY, record, sent,
                    f"the machine disagrees with the accepted events: {difference}")
            raise InvariantViolated(
                Invariant.ROLLOUTS_INDEPENDENT, record, sent,
                f"rollout {other.rollout_id!r} changed too: {difference}")

    def nothing_is_accepted_after_done_or_aborted(self, record: RolloutRecord, sent: Event,
                                                  status_before: str) -> None:
        if status_before != ACTIVE:
            raise InvariantViolated(
                Invariant.ENDS_ARE_FINAL, record, sent,
                f"accepted although the rollout was already {status_before}")

    def a_step_starts_only_after_its_needs_succeeded(self, record: RolloutRecord, sent: Event) -> None:
        if sent.step not in record.phases:
            return  # not a step: the transition check reports it
        unmet = [n for n in self.spec.step(sent.step).needs if record.phases[n] is not Phase.SUCCEEDED]
        if unmet:
            raise InvariantViolated(
                Invariant.NEEDS_FIRST, record, sent,
                f"started while {', '.join(f'{n} was {record.phases[n].value}' for n in unmet)}")

    def each_start_is_the_first_or_follows_a_retry(self, record: RolloutRecord, sent: Event) -> None:
        if sent.step is None:
            return
        earlier = record.events_on(sent.step)[:-1]
        if any(e.action is Action.START for e in earlier) and earlier[-1].action is not Action.RETRY:
            raise InvariantViolated(
                Invariant.RETRY_BEFORE_RESTART, record, sent,
                f"started again after {earlier[-1]}, with no retry in between")

    def a_protected_deployment_starts_only_after_its_gates(self, record: RolloutRecord,
                                                           sent: Event) -> None:
        if sent.step not in record.phases or not self.spec.step(sent.step).protected:
            return
        for name in sorted(self.spec.ancestors(sent.step)):
            gate = self.spec.step(name)
            if gate.kind not in (StepKind.BAKE, StepKind.PROMOTION):
                continue
            # Succeeded is final, so the gate's last accepted event is the one that passed it.
            events = record.events_on(name)
            if not events or not _satisfies(gate, events[-1]):
                done = [str(e) for e in events] or ["no event"]
                raise InvariantViolated(
                    Invariant.GATES_BEFORE_PROTECTED, record, sent,
                    f"gate {name} is not satisfied; it had: {'; '.join(done)}")

    def done_only_when_every_step_succeeded(self, record: RolloutRecord, sent: Event) -> None:
        waiting = {s: p for s, p in record.phases.items() if p is not Phase.SUCCEEDED}
        if waiting:
            raise InvariantViolated(
                Invariant.DONE_WHEN_ALL_SUCCEEDED, record, sent,
                f"finished while {', '.join(f'{s} was {p.value}' for s, p in waiting.items())}")

    def an_abort_records_its_reason(self, record: RolloutRecord, sent: Event) -> None:
        if not _text(sent.data.get("reason")):
            raise InvariantViolated(
                Invariant.ABORT_HAS_REASON, record, sent, "aborted without a reason")

    def an_accepted_event_follows_a_transition(self, record: RolloutRecord, sent: Event,
                                               phase_before: Phase | None) -> None:
        if sent.action not in SOURCE and sent.action not in (Action.FINISH, Action.ABORT):
            problem = f"{sent.action.value} is a fact about a rollout, not an event of its machine"
        elif sent.action in (Action.FINISH, Action.ABORT):
            problem = f"{sent.action.value} applies to the whole rollout" if sent.step else ""
        elif sent.step is None or phase_before is None:
            problem = f"{sent.action.value} needs a step of the spec, got {sent.step!r}"
        elif sent.action is Action.SKIP and self.spec.step(sent.step).kind is not StepKind.BAKE:
            problem = f"only a bake can be skipped; {sent.step} is a {self.spec.step(sent.step).kind}"
        elif phase_before is not SOURCE[sent.action]:
            problem = (f"{sent.action.value} leaves {SOURCE[sent.action].value}, "
                       f"but {sent.step} was {phase_before.value}")
        else:
            problem = ""
        if problem:
            raise InvariantViolated(Invariant.ONLY_DEFINED_TRANSITIONS, record, sent, problem)

    @invariant()
    def between_events_nothing_changes(self) -> None:
        for record in self.records:
            expected, actual = record.expected_view(), self._observe(record)
            if actual != expected:
                raise InvariantViolated(
                    Invariant.MATCHES_HISTORY, record, None,
                    f"the machine changed it with no event: {_difference(expected, actual)}")

    def teardown(self) -> None:
        # Statistics (pytest --hypothesis-show-statistics) show how deep the runs went.
        if self._spec is None:
            return
        for status in (DONE, ABORTED):
            if any(r.status == status for r in self.records):
                event(f"a rollout reached {status}")
        protected = {s.name for s in self.spec.steps if s.protected}
        if any(e.action is Action.START and e.step in protected for r in self.records for e in r.accepted):
            event("a protected deployment started")


def _satisfies(gate: Step, accepted: Event) -> bool:
    data = accepted.data
    if gate.kind is StepKind.BAKE:
        if accepted.action is Action.SKIP:
            return _text(data.get("reason")) and _text(data.get("by"))
        return accepted.action is Action.SUCCEED and _elapsed_enough(data.get("elapsed_s"),
                                                                      gate.duration_s or 0)
    return accepted.action is Action.SUCCEED and _text(data.get("by"))


def _phases_text(record: RolloutRecord) -> str:
    if record.status != ACTIVE:
        return record.status
    return ", ".join(f"{s}={p.value}" for s, p in record.phases.items())


def _difference(expected: tuple[str, Mapping[str, Phase]], actual: tuple[str, Mapping[str, Phase]]) -> str:
    if expected[0] != actual[0]:
        return f"status should be {expected[0]}, machine says {actual[0]}"
    wrong = []
    for step in sorted(set(expected[1]) | set(actual[1])):
        want, have = expected[1].get(step), actual[1].get(step)
        if want is not have:
            wrong.append(f"{step} should be {want.value if want else 'absent'}, "
                         f"machine says {have.value if have else 'absent'}")
    return "; ".join(wrong)


def rollout_rules(
    spec: Spec | st.SearchStrategy[Spec],
    machine_factory: Callable[[Spec], MachineUnderTest] = RolloutMachine,
    *,
    name: str | None = None,
) -> type[RolloutRules]:
    """The rules for ``spec`` as a runnable hypothesis state machine.

    ``spec`` is a :class:`~deploystate.spec.Spec`, or a strategy of specs (such as
    :func:`valid_specs`) drawn afresh for every run.  ``machine_factory`` builds the machine
    under test from the spec.  Run it with ``.TestCase`` in a test module, or with
    :func:`hypothesis.stateful.run_state_machine_as_test`::

        TestSeed = rollout_rules(default_spec()).TestCase
    """

    def make_machine(self: RolloutRules, spec: Spec) -> MachineUnderTest:
        return machine_factory(spec)

    namespace: dict[str, Any] = {"make_machine": make_machine}
    if isinstance(spec, Spec):
        namespace["fixed_spec"] = spec
        base = "".join(part.title() for part in spec.name.replace("-", "_").split("_")) or "Spec"
    else:
        strategy = spec

        # Replaces the base class' first_rollout: the spec is drawn before any rollout exists.
        @initialize(target=RolloutRules.rollouts, spec=strategy, moves=_WALK, data=st.data())
        def first_rollout(self: RolloutRules, spec: Spec, moves: int, data: st.DataObject) -> RolloutRecord:
            self.use_spec(spec)
            return self.open_rollout_underway(moves, data)

        namespace["first_rollout"] = first_rollout
        base = "GeneratedSpec"
    machine_name = getattr(machine_factory, "__name__", "Machine")
    if name is None:
        name = f"{base}Rollouts" + ("" if machine_factory is RolloutMachine else f"On{machine_name}")
    namespace["__doc__"] = f"Rollout rules for {base} specs, checked on {machine_name}."
    return type(name, (RolloutRules,), namespace)


ENVIRONMENTS = ("staging", "canary", "production", "staging-canary", "pre", "release", "ops", "dr")
# Package names are the backend's business: any name of the right shape will do for the machine.
PACKAGES = ("image", "package", "web-image", "docs_site")


@st.composite
def _valid_specs(draw: st.DrawFn, min_steps: int, max_steps: int) -> Spec:
    count = draw(st.integers(min_steps, max_steps))
    steps: list[Step] = []
    ancestors: dict[str, frozenset[str]] = {}
    used: set[str] = set()
    for index in range(count):
        kind = draw(st.sampled_from(StepKind))
        earlier = [s.name for s in steps]
        # Subsets as bit masks: unique lists of sampled_from throw many draws away.  At most the
        # three nearest needs, as in real pipelines.
        mask = draw(st.integers(0, 2 ** len(earlier) - 1))
        needs = [name for bit, name in enumerate(earlier) if mask >> bit & 1][-3:]
        fields: dict[str, Any] = {}
        if kind is StepKind.DEPLOYMENT:
            free = [e for e in ENVIRONMENTS if e not in used]
            environment = draw(st.sampled_from(free)) if free else f"env-{index}"
            used.add(environment)
            fields["environment"] = environment
            fields["protected"] = draw(st.booleans())
            above = set(needs).union(*(ancestors[n] for n in needs))
            kinds = {s.name: s.kind for s in steps}
            if fields["protected"] and not any(kinds[a] is StepKind.PROMOTION for a in above):
                promotions = [s.name for s in steps if s.kind is StepKind.PROMOTION]
                if promotions:
                    needs.append(draw(st.sampled_from(promotions)))
                else:
                    # A protected deployment always has a promotion before it: add one.
                    gate = Step(f"promotion_before_{index}", StepKind.PROMOTION, tuple(needs))
                    steps.append(gate)
                    ancestors[gate.name] = frozenset(needs).union(*(ancestors[n] for n in needs))
                    needs = [gate.name]
        elif kind is StepKind.LEGACY_DEPLOYMENT:
            mask = draw(st.integers(1, 2 ** len(ENVIRONMENTS) - 1))
            fields["environments"] = tuple(e for bit, e in enumerate(ENVIRONMENTS) if mask >> bit & 1)[:3]
        elif kind is StepKind.PACKAGE_WAIT:
            fields["package"] = draw(st.sampled_from(PACKAGES))
        elif kind is StepKind.BAKE:
            fields["duration_s"] = draw(st.sampled_from([0, 1800]) | st.integers(0, 86_400))
        step = Step(f"{kind.value}_{index}", kind, tuple(needs), **fields)
        steps.append(step)
        ancestors[step.name] = frozenset(needs).union(*(ancestors[n] for n in needs))
    # The spec sorts its steps itself; shuffling checks that it does.
    order = draw(st.permutations(steps))
    return Spec(name="generated", steps=tuple(order),
                description="a random valid spec from deploystate.testing.valid_specs()")


def valid_specs(*, min_steps: int = 1, max_steps: int = 8) -> st.SearchStrategy[Spec]:
    """Random valid specs: DAGs of every step kind, for testing the machine itself.

    Deployments have unique environments, a protected deployment always has a promotion gate
    before it, bakes last from 0 s to a day.  ``min_steps``/``max_steps`` bound the steps drawn
    (a protected deployment may bring one extra promotion).  Use it with :func:`rollout_rules`, or directly::

        @given(valid_specs())
        def test_compiles(spec):
            RolloutMachine(spec)
    """
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps}, "
                         f"max_steps={max_steps}; a spec has at least one step")
    return _valid_specs(min_steps, max_steps)


# == The gate: several rollouts sharing one store ===================================================
#
# The rules above check one machine's events.  Those below drive whole runners, several rollouts of
# different versions at once over one store, and watch the world they deploy to: every trigger the
# deployer receives is judged as it happens against what the world knows (what runs where, what
# succeeded where, which checks fail, which overrides the rules made), never against the journal.


class GateInvariant(enum.StrEnum):
    """The rules of the gate between rollouts; a value reads as the rule itself."""

    ONE_DEPLOYMENT_PER_ENVIRONMENT = (
        "one active deployment per environment: nothing is triggered where another real deployment "
        "still runs")
    NEVER_OLDER_OVER_NEWER = (
        "never an older version over a newer one: only a rollback the rules asked for redeploys a "
        "version older than the newest that succeeded there, and only one that succeeded there")
    PROTECTED_ONLY_WHEN_CHECKS_PASS = (
        "a protected deployment is never triggered while a production check fails, unless a live "
        "override made for its rollout covers that check (a lock is never covered)")


@attrs.define(eq=False)
class WorldDeployment:
    """One real deployment as the world saw it triggered, and how a rule (or a cancel) ended it."""

    number: int
    key: str
    rollout: str
    version: str
    environments: tuple[str, ...]
    rollback: bool
    at: float
    ended: str | None = None  # "succeeded", "failed" (a rule finished it) or "canceled"

    @property
    def running(self) -> bool:
        return self.ended is None

    def __str__(self) -> str:
        kind = " (rollback)" if self.rollback else ""
        state = "running" if self.ended is None else self.ended
        return f"#{self.number} {self.version}{kind} to {','.join(self.environments)} [{self.key}]: {state}"


@attrs.frozen
class WorldOverride:
    """An override a rule made and the runner accepted: the checks failing then, until when."""

    checks: frozenset[str]
    until: float
    by: str


class GateViolation(AssertionError):
    """A trigger (or the world after a rule) broke a :class:`GateInvariant`; the message shows how."""

    def __init__(self, invariant: GateInvariant, rollout_id: str, environment: str, detail: str,
                 history: Sequence[str]) -> None:
        self.invariant = invariant
        self.rollout_id = rollout_id
        self.environment = environment
        self.detail = detail
        lines = "\n".join(f"    {n}. {line}" for n, line in enumerate(history, 1)) or "    (none)"
        super().__init__(
            f"broken rule: {invariant.value}\n"
            f"rollout {rollout_id!r} in {environment}: {detail}\n"
            f"what the world saw, in order:\n{lines}\n"
            "Fix the gate (or the runner); the steps hypothesis prints reproduce this.")


DEFAULT_VERSIONS = ("13.10.202103011200", "13.10.202103011300", "13.10.202103011400",
                    "13.10.202103011500", "13.10.202103011600")
DEFAULT_CHECKS = ("active_incidents", "deployment_health")
GATE_ACTOR = "amy"
GATE_REASON = "the failing check is unrelated to this change"


class _Silent:
    """A notifier that drops every notice: the rules read the world, not the notices."""

    def notify(self, notice: Any) -> None:
        return None


class GateWorld:
    """What the rules' runners deploy to, and the oracle's account of it.

    One :class:`~deploystate.journal.MemoryStore` and one :class:`~deploystate.doubles.ManualClock`
    shared by every runner; a deployer whose deployments run until a rule finishes them (dry runs,
    in check mode, succeed at once); production checks whose verdicts the rules set, and the
    core's environment lock check.
    """

    def __init__(self, spec: Spec, strategy: Strategy, check_names: Sequence[str],
                 version_key: Callable[[str], tuple[Any, ...]] = natural_key) -> None:
        self.spec = spec
        self.strategy = strategy
        self.version_key = version_key
        self.store = MemoryStore()
        self.clock = ManualClock()
        self.start = self.clock.now()
        self.deployer = _WatchedDeployer(self)
        self.verdicts: dict[str, Verdict] = {name: Verdict.PASSED for name in check_names}
        self.fake_checks = tuple(FakeCheck(name, self._verdict(name)) for name in check_names)
        self.checks: tuple[Check, ...] = (*self.fake_checks, EnvironmentLockCheck(self.store))
        real = strategy.real_steps(spec)
        self.environments = tuple(sorted({e for name in real for e in spec.step(name).targets}))
        protected = [s for s in spec.steps if s.protected]
        chosen = [s for s in protected if s.name in real] or protected
        self.protected = frozenset(e for s in chosen for e in s.targets)
        self.deployments: list[WorldDeployment] = []
        self.outcomes: dict[str, Outcome] = {}  # by key: how a rule finished it
        self.succeeded: dict[str, list[str]] = {env: [] for env in self.environments}
        self.locked: dict[str, bool] = {env: False for env in self.environments}
        self.overrides: dict[str, list[WorldOverride]] = {}
        self.versions: dict[str, str] = {}  # rollout -> version, as the rules created it
        self.rollbacks: dict[str, str] = {}  # rollout -> the environment a rule asked to roll back
        self.advancing: str | None = None
        self.history: list[str] = []
        self.violations: list[GateViolation] = []
        self.dry_runs = 0

    def _verdict(self, name: str) -> Callable[[CheckContext], Verdict]:
        return lambda context: self.verdicts[name]

    def say(self, line: str) -> None:
        self.history.append(f"[t+{int(self.clock.now() - self.start)} s] {line}")

    # -- the deployer's answers --------------------------------------------------------------
    def answer(self, request: TriggerRequest, reads: int) -> Outcome:
        if request.check_mode:
            return Outcome.SUCCEEDED
        return self.outcomes.get(request.key, Outcome.WAITING)

    def running(self, environment: str | None = None) -> list[WorldDeployment]:
        return [d for d in self.deployments
                if d.running and (environment is None or environment in d.environments)]

    def newest(self, environment: str) -> str | None:
        done = self.succeeded.get(environment, [])
        return max(done, key=self.version_key) if done else None

    def failing(self, environment: str, *, rollback: bool) -> frozenset[str]:
        """The checks failing now for a deployment to ``environment``, as the rules set them."""
        found = {c.name for c in self.fake_checks if self.verdicts[c.name] is not Verdict.PASSED
                 and (c.rollback or not rollback)}
        if self.locked.get(environment):
            found.add(ENVIRONMENT_LOCK)
        return frozenset(found)

    def failing_for(self, rollout: str) -> frozenset[str]:
        """The checks failing now for ``rollout``'s gate (its protected environments, or its rollback's)."""
        rollback = self.rollbacks.get(rollout)
        where = (rollback,) if rollback is not None else tuple(sorted(self.protected))
        return frozenset().union(*(self.failing(e, rollback=rollback is not None) for e in where))

    def covered(self, rollout: str) -> frozenset[str]:
        now = self.clock.now()
        return frozenset().union(*(o.checks for o in self.overrides.get(rollout, []) if now < o.until))

    # -- what the deployer sees --------------------------------------------------------------
    def triggered(self, request: TriggerRequest) -> None:
        """Judge a trigger as it happens, then count it as running."""
        if request.check_mode:
            self.dry_runs += 1
            return
        rollout = self.advancing or request.key.rsplit("/", 2)[0]
        made = WorldDeployment(len(self.deployments) + 1, request.key, rollout, request.version,
                               tuple(request.environments), request.rollback, self.clock.now())
        self.say(f"triggered {made} by rollout {rollout}")
        for env in made.environments:
            self._one_at_a_time(made, env)
            self._version_order(made, env)
            if env in self.protected:
                self._checks_hold(made, env)
        self.deployments.append(made)

    def canceled(self, key: str) -> None:
        for made in self.deployments:
            if made.key == key and made.running:
                made.ended = "canceled"
                self.say(f"canceled {made}")

    def _violation(self, invariant: GateInvariant, made: WorldDeployment, env: str,
                   detail: str) -> GateViolation:
        violation = GateViolation(invariant, made.rollout, env, f"triggered {made}: {detail}", self.history)
        self.violations.append(violation)
        return violation

    # The invariants, one raise site each (hypothesis tells failures apart by where they raise).
    def _one_at_a_time(self, made: WorldDeployment, env: str) -> None:
        others = self.running(env)
        if others:
            raise self._violation(GateInvariant.ONE_DEPLOYMENT_PER_ENVIRONMENT, made, env,
                           f"{env} still runs {'; '.join(map(str, others))}")

    def _version_order(self, made: WorldDeployment, env: str) -> None:
        newest = self.newest(env)
        if not made.rollback:
            if newest is not None and self.version_key(made.version) < self.version_key(newest):
                raise self._violation(GateInvariant.NEVER_OLDER_OVER_NEWER, made, env,
                               f"{newest} already succeeded in {env}, and this is no rollback")
            return
        asked = self.rollbacks.get(made.rollout)
        if asked != env or self.versions.get(made.rollout) != made.version:
            raise self._violation(GateInvariant.NEVER_OLDER_OVER_NEWER, made, env,
                           "a rollback no rule asked for (rollout "
                           f"{made.rollout} was asked to roll back {asked or 'nothing'})")
        if made.version not in self.succeeded.get(env, []):
            raise self._violation(GateInvariant.NEVER_OLDER_OVER_NEWER, made, env,
                           f"a rollback to {made.version}, which never succeeded in {env}")

    def _checks_hold(self, made: WorldDeployment, env: str) -> None:
        failing = self.failing(env, rollback=made.rollback)
        if ENVIRONMENT_LOCK in failing:
            raise self._violation(GateInvariant.PROTECTED_ONLY_WHEN_CHECKS_PASS, made, env,
                           f"{env} is locked ({ENVIRONMENT_LOCK} fails, and no override covers a lock)")
        uncovered = failing - self.covered(made.rollout)
        if uncovered:
            live = [f"{sorted(o.checks)} by {o.by} until t+{int(o.until - self.start)} s"
                    for o in self.overrides.get(made.rollout, [])]
            raise self._violation(GateInvariant.PROTECTED_ONLY_WHEN_CHECKS_PASS, made, env,
                           f"{', '.join(sorted(uncovered))} failing, not covered (overrides of rollout "
                           f"{made.rollout}: {'; '.join(live) or 'none'})")

    # -- what the rules did -------------------------------------------------------------------
    def finish(self, made: WorldDeployment, outcome: Outcome) -> None:
        self.outcomes[made.key] = outcome
        made.ended = "succeeded" if outcome is Outcome.SUCCEEDED else "failed"
        if outcome is Outcome.SUCCEEDED:
            for env in made.environments:
                self.succeeded.setdefault(env, []).append(made.version)
        self.say(f"finished {made}")


class _WatchedDeployer(FakeDeployer):
    """The fake deployer with the world watching: each trigger is judged before it is made, each
    cancel of a running deployment ends it; a cancel of one that already ended changes nothing
    (as a real deployer's does), and says how it ended."""

    def __init__(self, world: GateWorld) -> None:
        super().__init__(world.answer, clock=world.clock)
        self.world = world

    def trigger(self, request: TriggerRequest) -> Deployment:
        self.world.triggered(request)
        return super().trigger(request)

    def cancel(self, deployment_id: str) -> Deployment:
        made = self._get(deployment_id)
        if self.world.outcomes.get(made.key) is not None and not made.request.check_mode:
            return self.status(deployment_id)
        self.world.canceled(made.key)
        return super().cancel(deployment_id)


_SECONDS = st.sampled_from([30, 300, 1800, 3600, 4 * 3600, 7 * 3600])
_OVERRIDE_FOR = st.sampled_from([None, 60, 2 * 3600])
_OVERRIDE = st.sampled_from([None, GATE_REASON])
_LONGER = st.sampled_from([0, 1800, 3600])
_GATE_WALK = st.integers(0, 12)
_GATE_MOVES = st.integers(1, 8)


class GateRules(RuleBasedStateMachine):
    """Several rollouts of different versions, each with its own runner, over one store.

    Use :func:`gate_rules` to get a runnable subclass for a spec.  The world (:class:`GateWorld`)
    is the oracle; each trigger is judged as it happens, and the world once more after each rule.
    """

    fixed_spec: ClassVar[Spec | None] = None
    versions: ClassVar[tuple[str, ...]] = DEFAULT_VERSIONS
    check_names: ClassVar[tuple[str, ...]] = DEFAULT_CHECKS
    strategy: ClassVar[Strategy] = Strategy(individual_deployments=True)
    # Aborts may leave their deployments running (``--leave-running``), which still run then.
    leave_running: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        if self.fixed_spec is None:
            raise RuntimeError("no spec: build the rules with gate_rules(spec)")
        self.spec = self.fixed_spec
        self.world = GateWorld(self.spec, self.strategy, self.check_names)
        self.runners: dict[str, Runner] = {}
        self._views: dict[str, RolloutView] = {}
        self.operator = self.make_runner()

    def make_runner(self) -> Runner:
        world = self.world
        return Runner(world.store, fake_backends(deployer=world.deployer, clock=world.clock),
                      config=RunnerConfig(strategy=self.strategy), notifier=_Silent(), checks=world.checks)

    def view(self, rollout: str) -> RolloutView:
        """``rollout`` as its journal stands (for choosing what to do; the oracle never reads it)."""
        store = self.world.store
        known = self._views.get(rollout)
        if known is None:
            known = self.runners[rollout].view(rollout)
        elif store.last_seq(rollout) != known.seq:
            known = known.applied(store.read(rollout, after=known.seq))
        self._views[rollout] = known
        return known

    def _pick(self, data: st.DataObject, *, active: bool = False) -> str | None:
        names = sorted(self.runners)
        if active:
            names = [n for n in names if self.view(n).active]
        return data.draw(st.sampled_from(names), label="rollout") if names else None

    def _do(self, what: str, action: Callable[[], object]) -> bool:
        """Carry out an operator's command as the CLI would: a refusal is an answer, not a failure."""
        try:
            action()
        except DeploystateError as error:
            self.world.say(f"{what}: refused ({str(error).splitlines()[0][:120]})")
            return False
        self.world.say(what)
        return True

    # -- rules -------------------------------------------------------------------------------
    @initialize(data=st.data(), moves=_GATE_WALK)
    def first_rollout(self, data: st.DataObject, moves: int) -> None:
        """Some checks failing from the start, and the first rollout up to ``moves`` moves into a
        walk towards done: every run starts somewhere different."""
        for name in self.check_names:
            if data.draw(st.booleans(), label=f"{name} fails at first"):
                self.world.verdicts[name] = Verdict.FAILED
                self.world.say(f"check {name} failed at first")
        self.create(data, moves)

    @rule(data=st.data(), moves=_GATE_WALK)
    def create(self, data: st.DataObject, moves: int) -> None:
        """A rollout of a version not created yet (older or newer than the others), up to ``moves``
        moves into a walk towards done."""
        fresh = [v for v in self.versions if v not in self.world.versions]
        if not fresh:
            return
        version = data.draw(st.sampled_from(fresh), label="version")
        if self.open_rollout(version):
            self.walk(version, moves, data)

    def open_rollout(self, version: str) -> bool:
        """Create a rollout of ``version`` with a runner of its own; False if that was refused."""
        runner = self.make_runner()
        if not self._do(f"created rollout {version}", lambda: runner.create(version, self.spec)):
            return False
        self.runners[version] = runner
        self.world.versions[version] = version
        return True

    @rule(data=st.data(), moves=_GATE_MOVES)
    def walk_a_rollout(self, data: st.DataObject, moves: int) -> None:
        """A few moves of a walk towards done on one rollout (see :meth:`walk`)."""
        rollout = self._pick(data, active=True)
        if rollout is not None:
            self.walk(rollout, moves, data)

    def walk(self, rollout: str, moves: int, data: st.DataObject) -> None:
        """Moves that take ``rollout`` towards done, each an ordinary rule's action: its running
        deployment succeeds (or the walk ends, leaving it running), a person promotes it (overriding
        failing checks, or not), its bake is skipped or waited out; its runner makes a pass after each."""
        runner = self.runners[rollout]
        for _ in range(moves):
            view = self.view(rollout)
            if not view.active:
                return
            mine = [d for d in self.world.running() if d.rollout == rollout]
            running = {view.spec.step(s).kind for s, state in view.steps.items()
                       if state.phase is Phase.RUNNING}
            if mine:
                if not data.draw(st.booleans(), label="its deployment succeeds"):
                    return  # it goes on running, for the other rollouts to meet
                self.world.finish(mine[0], Outcome.SUCCEEDED)
            elif StepKind.PROMOTION in running:
                failing = bool(self.world.failing_for(rollout))
                self._promote(rollout, data.draw(_OVERRIDE, label="override") if failing else None,
                              data.draw(_OVERRIDE_FOR, label="for_s") if failing else None)
            elif StepKind.BAKE in running:
                if data.draw(st.booleans(), label="skip the bake"):
                    self._do(f"skipped the bake of {rollout}",
                             lambda: runner.skip_bake(rollout, GATE_ACTOR, "urgent fix"))
                else:  # waited out, and maybe longer (an override made at the promotion may expire)
                    longest = max(s.duration_s or 0 for s in view.spec.steps if s.kind is StepKind.BAKE)
                    self.time_passes(longest + data.draw(_LONGER, label="and then"))
            self.advance_once(rollout)

    def advance_once(self, rollout: str) -> None:
        """One ``runner.advance`` of ``rollout``; a refusal is said, as the CLI would."""
        self.world.advancing = rollout
        try:
            self._views[rollout], _ = self.runners[rollout].advance(rollout, self.view(rollout))
        except DeploystateError as error:
            self.world.say(f"advance {rollout}: {str(error).splitlines()[0][:120]}")
        finally:
            self.world.advancing = None

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """One pass of a rollout's runner: it decides and acts until nothing more can be done now."""
        rollout = self._pick(data)
        if rollout is not None:
            self.advance_once(rollout)

    @rule(data=st.data())
    def advance_every_rollout(self, data: st.DataObject) -> None:
        """One pass of each runner, in an order drawn (as if they ran side by side)."""
        for rollout in data.draw(st.permutations(sorted(self.runners)), label="order"):
            self.advance_once(rollout)

    @rule(data=st.data(), outcome=st.sampled_from([Outcome.SUCCEEDED, Outcome.SUCCEEDED, Outcome.FAILED]))
    def finish_a_deployment(self, data: st.DataObject, outcome: Outcome) -> None:
        """A running deployment ends out there, succeeded or failed; its runner learns it when it looks."""
        running = self.world.running()
        if running:
            made = data.draw(st.sampled_from(running), label="deployment")
            self.world.finish(made, outcome)

    @rule(data=st.data())
    def toggle_a_check(self, data: st.DataObject) -> None:
        """A production check starts failing, or passes again."""
        if not self.check_names:
            return
        name = data.draw(st.sampled_from(self.check_names), label="check")
        verdicts = self.world.verdicts
        verdicts[name] = Verdict.FAILED if verdicts[name] is Verdict.PASSED else Verdict.PASSED
        self.world.say(f"check {name} now {verdicts[name].value}")

    @rule(data=st.data(), override=st.sampled_from([None, GATE_REASON]), for_s=_OVERRIDE_FOR)
    def promote(self, data: st.DataObject, override: str | None, for_s: int | None) -> None:
        """A person promotes, overriding the failing checks or not (a refusal is fine)."""
        rollout = self._pick(data, active=True)
        if rollout is not None:
            self._promote(rollout, override, for_s)

    def _promote(self, rollout: str, override: str | None, for_s: int | None) -> None:
        failing = self.world.failing_for(rollout)
        until = self.world.clock.now() + (self.operator.config.override_s if for_s is None else for_s)
        what = f"promoted {rollout}" + (f" overriding for {for_s or 'the default'} s" if override else "")
        done = self._do(what, lambda: self.runners[rollout].promote(
            rollout, GATE_ACTOR, override=override, override_for_s=for_s))
        if done and override is not None and failing - {ENVIRONMENT_LOCK}:
            self._overridden(rollout, failing, until)

    @rule(data=st.data(), for_s=_OVERRIDE_FOR)
    def override(self, data: st.DataObject, for_s: int | None) -> None:
        """A person overrides the checks failing now for a rollout (a refusal is fine)."""
        rollout = self._pick(data, active=True)
        if rollout is None:
            return
        failing = self.world.failing_for(rollout)
        until = self.world.clock.now() + (self.operator.config.override_s if for_s is None else for_s)
        if self._do(f"override for {rollout}", lambda: self.runners[rollout].override(
                rollout, GATE_ACTOR, GATE_REASON, for_s=for_s)):
            self._overridden(rollout, failing, until)

    def _overridden(self, rollout: str, failing: frozenset[str], until: float) -> None:
        checks = failing - {ENVIRONMENT_LOCK}
        self.world.overrides.setdefault(rollout, []).append(WorldOverride(checks, until, GATE_ACTOR))
        since = int(until - self.world.start)
        self.world.say(f"override of {sorted(checks)} for {rollout} until t+{since} s")

    @rule(data=st.data())
    def lock_or_unlock(self, data: st.DataObject) -> None:
        """An environment is locked, or unlocked if it was."""
        if not self.world.environments:
            return
        env = data.draw(st.sampled_from(self.world.environments), label="environment")
        if self.world.locked[env]:
            if self._do(f"unlocked {env}", lambda: self.operator.unlock(env, "sre")):
                self.world.locked[env] = False
        elif self._do(f"locked {env}", lambda: self.operator.lock(env, "sre", "maintenance")):
            self.world.locked[env] = True

    @rule(data=st.data(), moves=_GATE_WALK)
    def roll_back(self, data: st.DataObject, moves: int) -> None:
        """A rollback of an environment to a version that succeeded there (or, now and then, to one
        that did not: refused)."""
        if not self.world.environments:
            return
        env = data.draw(st.sampled_from(self.world.environments), label="environment")
        succeeded = sorted(set(self.world.succeeded[env]), key=natural_key)
        there = bool(succeeded) and data.draw(st.booleans(), label="one that succeeded there")
        pool: Sequence[str] = succeeded if there else self.versions
        version = data.draw(st.sampled_from(pool), label="version")
        made: list[str] = []

        def roll_back() -> None:
            made.append(self.operator.rollback(env, version, GATE_ACTOR, "it breaks sign-in",
                                               rollback_spec(env)).rollout_id)

        if self._do(f"rollback of {env} to {version}", roll_back):
            rollout = made[0]
            self.runners[rollout] = self.make_runner()
            self.world.versions[rollout] = version
            self.world.rollbacks[rollout] = env
            self.world.say(f"rollback rollout {rollout} created")
            self.walk(rollout, moves, data)

    @rule(data=st.data(), leave_running=st.booleans())
    def abort(self, data: st.DataObject, leave_running: bool) -> None:
        """A person aborts a rollout, having its deployments canceled or leaving them running."""
        rollout = self._pick(data, active=True)
        leave_running = leave_running and self.leave_running
        if rollout is not None:
            self._do(f"aborted {rollout}" + (" leaving its deployments running" if leave_running else ""),
                     lambda: self.runners[rollout].abort(rollout, GATE_ACTOR, "wrong package",
                                                         leave_running=leave_running))

    @rule(data=st.data(), cancel_running=st.booleans())
    def retry(self, data: st.DataObject, cancel_running: bool) -> None:
        """A person retries a failed step, canceling its deployment if it still runs, or not."""
        rollout = self._pick(data, active=True)
        if rollout is None:
            return
        view = self.view(rollout)
        failed = [s for s, state in view.steps.items() if state.phase is Phase.FAILED]
        if failed:
            step = data.draw(st.sampled_from(failed), label="step")
            self._do(f"retried {rollout} {step}", lambda: self.runners[rollout].retry(
                rollout, step, GATE_ACTOR, cancel_running=cancel_running))

    @rule(data=st.data())
    def skip_bake(self, data: st.DataObject) -> None:
        """A person skips a running bake."""
        rollout = self._pick(data, active=True)
        if rollout is not None:
            self._do(f"skipped the bake of {rollout}", lambda: self.runners[rollout].skip_bake(
                rollout, GATE_ACTOR, "urgent fix"))

    @rule(seconds=_SECONDS)
    def time_passes(self, seconds: int) -> None:
        """The clock moves on: bakes end, overrides expire, waits time out."""
        self.world.clock.advance(seconds)
        self.world.say(f"{seconds} s passed")

    # -- after each rule ------------------------------------------------------------------------
    @invariant()
    def the_world_agrees(self) -> None:
        """After each rule: no violation was swallowed, every trigger was seen, and no environment
        runs two deployments."""
        world = self.world
        if world.violations:
            raise world.violations[0]  # raised at the trigger, yet caught on the way out
        seen = len(world.deployments) + world.dry_runs
        made = len(world.deployer.triggers())
        if made != seen:
            raise AssertionError(f"the deployer received {made} triggers, the world saw {seen}: "
                                 "something triggered around the watched deployer")
        for env in world.environments:
            running = world.running(env)
            if len(running) > 1:
                raise GateViolation(GateInvariant.ONE_DEPLOYMENT_PER_ENVIRONMENT, running[-1].rollout, env,
                                    f"{env} runs {'; '.join(map(str, running))} at once", world.history)

    def teardown(self) -> None:
        world = getattr(self, "world", None)
        if world is None:
            return
        for made in world.deployments:
            if made.rollback:
                event("a rollback was triggered")
            if set(made.environments) & world.protected:
                event("a protected deployment was triggered")
        if any(world.overrides.values()):
            event("an override was made")


def gate_rules(spec: Spec | None = None, *, versions: Sequence[str] = DEFAULT_VERSIONS,
               checks: Sequence[str] = DEFAULT_CHECKS, strategy: Strategy | None = None,
               leave_running: bool = True, name: str | None = None) -> type[GateRules]:
    """The gate's rules for ``spec`` (default: the seed spec) as a runnable hypothesis state machine.

    ``versions``: the pool rollouts are made of, oldest first by the backend's version order;
    ``checks``: the names of the production checks the rules fail and pass (the core's
    ``environment_lock`` is always there too); ``strategy``: the rollout plan (default: the
    individual deployments are the real path); ``leave_running``: whether aborts may leave their
    deployments running (they then still run in the world).  Run ``.TestCase`` in a test module::

        TestGate = gate_rules().TestCase
    """
    spec = spec or default_spec()
    ordered = sorted(versions, key=natural_key)
    if list(versions) != ordered or len(set(versions)) != len(versions) or not versions:
        raise ValueError(f"versions must be distinct and oldest first, got {list(versions)}")
    namespace: dict[str, Any] = {
        "fixed_spec": spec, "versions": tuple(versions), "check_names": tuple(checks),
        "strategy": strategy or Strategy(individual_deployments=True), "leave_running": leave_running,
        "__doc__": f"Gate rules for spec {spec.name!r}: several rollouts over one store.",
    }
    base = "".join(part.title() for part in spec.name.replace("-", "_").split("_")) or "Spec"
    return type(name or f"{base}Gate", (GateRules,), namespace)

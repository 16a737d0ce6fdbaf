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
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
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
from deploystate.errors import EventRefused
from deploystate.machine import ABORTED, ACTIVE, DONE, Phase, RolloutMachine
from deploystate.spec import GATE_KINDS, Spec, Step, StepKind

__all__ = [
    "Event",
    "Invariant",
    "InvariantViolated",
    "MachineUnderTest",
    "RolloutRecord",
    "RolloutRules",
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

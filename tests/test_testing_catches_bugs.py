"""Each rule in deploystate.testing fails on a machine that breaks it.

Every machine here is the real RolloutMachine with one deliberate bug, made either by
compiling a wrong spec or by wrapping ``fire``.  A rules check that cannot fail would let
its test here fail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pytest
from hypothesis import Phase as Stage
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from deploystate.errors import EventRefused
from deploystate.machine import ACTIVE, Action, Phase, Rollout, RolloutMachine
from deploystate.spec import Spec, StepKind, default_spec
from deploystate.testing import Invariant, InvariantViolated, MachineUnderTest, rollout_rules


def violations(factory: Callable[[Spec], MachineUnderTest]) -> set[Invariant]:
    """The rules that hypothesis reports broken on ``factory``'s machine."""
    rules = rollout_rules(default_spec(), factory)
    # No database: every run has to find the bug from scratch.  No shrinking: finding the bug
    # is what is tested, and shrinking a stateful run costs far more than finding it.  The
    # search stops at the first failure; most bugs fall within 50 runs, a few take a few hundred.
    quick = settings(database=None, phases=[Stage.generate], max_examples=2000)
    with pytest.raises((InvariantViolated, ExceptionGroup)) as caught:
        run_state_machine_as_test(rules, settings=quick)
    found: set[Invariant] = set()
    pending: list[BaseException] = [caught.value]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        elif isinstance(error, InvariantViolated):
            found.add(error.invariant)
        else:
            raise error
    return found


class Wrapped:
    """The real machine behind the interface the rules drive; subclasses break one thing."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.inner = RolloutMachine(spec)
        self.made: list[Rollout] = []

    def new(self, rollout_id: str) -> Rollout:
        rollout = self.inner.new(rollout_id)
        self.made.append(rollout)
        return rollout

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        self.inner.fire(rollout, action, step, **data)

    def phases(self, rollout: Rollout) -> Mapping[str, Phase]:
        return self.inner.phases(rollout)

    def status(self, rollout: Rollout) -> str:
        return self.inner.status(rollout)


def _compiled_from(change: Callable[[Spec], Spec]) -> Callable[[Spec], RolloutMachine]:
    def factory(spec: Spec) -> RolloutMachine:
        return RolloutMachine(change(spec))

    return factory


def _with_step(spec: Spec, name: str, **changes: Any) -> Spec:
    return Spec(spec.name, tuple(attrs.evolve(s, **changes) if s.name == name else s for s in spec.steps))


def test_canary_that_does_not_wait_for_staging_breaks_needs_first() -> None:
    factory = _compiled_from(lambda spec: _with_step(spec, "trigger_cny", needs=()))
    assert Invariant.NEEDS_FIRST in violations(factory)


def test_bake_compiled_without_its_duration_breaks_the_gates() -> None:
    factory = _compiled_from(lambda spec: _with_step(spec, "baking_time", duration_s=0))
    assert Invariant.GATES_BEFORE_PROTECTED in violations(factory)


class PromotionByAnyone(Wrapped):
    """Fills in a default actor, so a promotion is accepted without anyone named."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        promotions = {s.name for s in self.spec.steps if s.kind is StepKind.PROMOTION}
        if action == Action.SUCCEED and step in promotions:
            data["by"] = str(data.get("by") or "").strip() or "unknown"
        super().fire(rollout, action, step, **data)


def test_promotion_without_by_breaks_the_gates() -> None:
    assert Invariant.GATES_BEFORE_PROTECTED in violations(PromotionByAnyone)


class RestartWithoutRetry(Wrapped):
    """Treats ``start`` of a failed step as an implicit retry."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if action == Action.START and step and self.inner.phase(rollout, step) is Phase.FAILED:
            super().fire(rollout, Action.RETRY, step)
        super().fire(rollout, action, step, **data)


def test_restart_without_retry_is_caught() -> None:
    assert Invariant.RETRY_BEFORE_RESTART in violations(RestartWithoutRetry)


class FinishCompletesTheRest(Wrapped):
    """``finish`` pushes every unfinished step through to success first."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if action == Action.FINISH and step is None and self.inner.status(rollout) == ACTIVE:
            for each in self.spec.steps:  # in dependency order
                phase = self.inner.phase(rollout, each.name)
                if phase is Phase.FAILED:
                    self.inner.fire(rollout, Action.RETRY, each.name)
                if phase is not Phase.SUCCEEDED and phase is not Phase.RUNNING:
                    self.inner.fire(rollout, Action.START, each.name)
                if phase is not Phase.SUCCEEDED:
                    self.inner.fire(rollout, Action.SUCCEED, each.name, by="bot", elapsed_s=10**9)
        super().fire(rollout, action, step, **data)


def test_finish_before_every_step_succeeded_is_caught() -> None:
    assert Invariant.DONE_WHEN_ALL_SUCCEEDED in violations(FinishCompletesTheRest)


class IgnoresEventsAfterTheEnd(Wrapped):
    """Returns quietly, as if accepted, for any event on a rollout that has ended."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if self.inner.status(rollout) != ACTIVE:
            return
        super().fire(rollout, action, step, **data)


def test_accepting_events_after_the_end_is_caught() -> None:
    assert Invariant.ENDS_ARE_FINAL in violations(IgnoresEventsAfterTheEnd)


class AbortWithoutReason(Wrapped):
    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if action == Action.ABORT:
            data["reason"] = str(data.get("reason") or "").strip() or "aborted"
        super().fire(rollout, action, step, **data)


def test_abort_without_reason_is_caught() -> None:
    assert Invariant.ABORT_HAS_REASON in violations(AbortWithoutReason)


class RefusedSuccessFailsTheStep(Wrapped):
    """A refused ``succeed`` (a bake too short, a promotion with nobody) marks the step failed."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        try:
            super().fire(rollout, action, step, **data)
        except EventRefused:
            if action == Action.SUCCEED and step and self.inner.phase(rollout, step) is Phase.RUNNING:
                self.inner.fire(rollout, Action.FAIL, step)
            raise


def test_refusal_that_changes_state_is_caught() -> None:
    assert Invariant.REFUSAL_CHANGES_NOTHING in violations(RefusedSuccessFailsTheStep)


class SilentlyIgnoresRefusals(Wrapped):
    """Returns without raising where the machine refuses."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        try:
            super().fire(rollout, action, step, **data)
        except EventRefused:
            return


def test_silent_no_op_instead_of_refusal_is_caught() -> None:
    assert Invariant.MATCHES_HISTORY in violations(SilentlyIgnoresRefusals)


class AbortStopsEveryRollout(Wrapped):
    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        super().fire(rollout, action, step, **data)
        if action == Action.ABORT:
            for other in self.made:
                if self.inner.status(other) == ACTIVE:
                    self.inner.fire(other, Action.ABORT, **data)


def test_an_event_that_changes_another_rollout_is_caught() -> None:
    assert Invariant.ROLLOUTS_INDEPENDENT in violations(AbortStopsEveryRollout)


class SucceedImpliesStart(Wrapped):
    """Accepts ``succeed`` of a pending step by starting it first."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if action == Action.SUCCEED and step and self.inner.phase(rollout, step) is Phase.PENDING:
            super().fire(rollout, Action.START, step)
        super().fire(rollout, action, step, **data)


def test_an_event_from_the_wrong_phase_is_caught() -> None:
    assert Invariant.ONLY_DEFINED_TRANSITIONS in violations(SucceedImpliesStart)


class NeverResumes(Wrapped):
    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if action == Action.RESUME:
            raise EventRefused(f"resume {step}", self.inner.describe(rollout), [], "resume is disabled")
        super().fire(rollout, action, step, **data)


def test_refusing_a_legal_event_is_caught() -> None:
    assert Invariant.LEGAL_EVENTS_ACCEPTED in violations(NeverResumes)


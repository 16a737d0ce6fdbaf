"""Each rule in deploystate.testing fails on a machine that breaks it, and only that rule.

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


def failures(factory: Callable[[Spec], MachineUnderTest]) -> list[InvariantViolated]:
    """What hypothesis reports when the rules run on ``factory``'s machine."""
    rules = rollout_rules(default_spec(), factory)
    # No database: every run has to find the bug from scratch.  No shrinking: finding the bug
    # is what is tested, and shrinking a stateful run costs far more than finding it.  The
    # search stops at the first failure; most bugs fall within 50 runs, a few take a few hundred.
    quick = settings(database=None, phases=[Stage.generate], max_examples=2000)
    with pytest.raises((InvariantViolated, ExceptionGroup)) as caught:
        run_state_machine_as_test(rules, settings=quick)
    found: list[InvariantViolated] = []
    pending: list[BaseException] = [caught.value]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        elif isinstance(error, InvariantViolated):
            found.append(error)
        else:
            raise error
    return found


def violations(factory: Callable[[Spec], MachineUnderTest]) -> set[Invariant]:
    """The rules that hypothesis reports broken on ``factory``'s machine."""
    return {failure.invariant for failure in failures(factory)}


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
    [failure] = failures(factory)
    assert failure.invariant is Invariant.NEEDS_FIRST
    # The message names the rule, the event and what the rollout had accepted before it.
    message = str(failure)
    assert f"broken rule: {Invariant.NEEDS_FIRST.value}" in message
    assert "after event start trigger_cny" in message
    assert "trigger_gstg was" in message
    assert f"events accepted by rollout {failure.rollout_id!r}, in order:" in message


def test_bake_compiled_without_its_duration_breaks_the_gates() -> None:
    factory = _compiled_from(lambda spec: _with_step(spec, "baking_time", duration_s=0))
    assert violations(factory) == {Invariant.GATES_BEFORE_PROTECTED}


class PromotionByAnyone(Wrapped):
    """Fills in a default actor, so a promotion is accepted without anyone named."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        promotions = {s.name for s in self.spec.steps if s.kind is StepKind.PROMOTION}
        if action == Action.SUCCEED and step in promotions:
            data["by"] = str(data.get("by") or "").strip() or "unknown"
        super().fire(rollout, action, step, **data)


def test_promotion_without_by_breaks_the_gates() -> None:
    assert violations(PromotionByAnyone) == {Invariant.GATES_BEFORE_PROTECTED}


class RestartWithoutRetry(Wrapped):
    """Treats ``start`` of a failed step as an implicit retry."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if action == Action.START and step and self.inner.phase(rollout, step) is Phase.FAILED:
            super().fire(rollout, Action.RETRY, step)
        super().fire(rollout, action, step, **data)


def test_restart_without_retry_is_caught() -> None:
    assert violations(RestartWithoutRetry) == {Invariant.RETRY_BEFORE_RESTART}


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
    assert violations(FinishCompletesTheRest) == {Invariant.DONE_WHEN_ALL_SUCCEEDED}


class IgnoresEventsAfterTheEnd(Wrapped):
    """Returns quietly, as if accepted, for any event on a rollout that has ended."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if self.inner.status(rollout) != ACTIVE:
            return
        super().fire(rollout, action, step, **data)


def test_accepting_events_after_the_end_is_caught() -> None:
    assert violations(IgnoresEventsAfterTheEnd) == {Invariant.ENDS_ARE_FINAL}


class AbortWithoutReason(Wrapped):
    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if action == Action.ABORT:
            data["reason"] = str(data.get("reason") or "").strip() or "aborted"
        super().fire(rollout, action, step, **data)


def test_abort_without_reason_is_caught() -> None:
    assert violations(AbortWithoutReason) == {Invariant.ABORT_HAS_REASON}


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
    assert violations(RefusedSuccessFailsTheStep) == {Invariant.REFUSAL_CHANGES_NOTHING}


class SilentlyIgnoresRefusals(Wrapped):
    """Returns without raising where the machine refuses, while the rollout is active."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        try:
            super().fire(rollout, action, step, **data)
        except EventRefused:
            if self.inner.status(rollout) != ACTIVE:
                raise


def test_silent_no_op_instead_of_refusal_is_caught() -> None:
    # An ignored event that should have moved a step shows as a disagreement with the history;
    # one that could never apply (succeed of a succeeded step) as an event outside the transitions.
    found = violations(SilentlyIgnoresRefusals)
    assert found <= {Invariant.MATCHES_HISTORY, Invariant.ONLY_DEFINED_TRANSITIONS}
    assert found


class ResumeRestartsFromScratch(Wrapped):
    """Sends a failed step back to pending on ``resume``, as ``retry`` does."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        super().fire(rollout, Action.RETRY if action == Action.RESUME else action, step, **data)


def test_an_event_with_the_wrong_outcome_is_caught() -> None:
    assert violations(ResumeRestartsFromScratch) == {Invariant.MATCHES_HISTORY}


class AbortStopsEveryRollout(Wrapped):
    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        super().fire(rollout, action, step, **data)
        if action == Action.ABORT:
            for other in self.made:
                if self.inner.status(other) == ACTIVE:
                    self.inner.fire(other, Action.ABORT, **data)


def test_an_event_that_changes_another_rollout_is_caught() -> None:
    assert violations(AbortStopsEveryRollout) == {Invariant.ROLLOUTS_INDEPENDENT}


class AcceptsRepeatedSuccess(Wrapped):
    """Takes a success reported twice (a webhook delivered again) as accepted."""

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if action == Action.SUCCEED and step and self.inner.phase(rollout, step) is Phase.SUCCEEDED:
            return
        super().fire(rollout, action, step, **data)


def test_an_event_from_the_wrong_phase_is_caught() -> None:
    assert violations(AcceptsRepeatedSuccess) == {Invariant.ONLY_DEFINED_TRANSITIONS}


class NeverResumes(Wrapped):
    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None, **data: Any) -> None:
        if action == Action.RESUME:
            raise EventRefused(f"resume {step}", self.inner.describe(rollout), [], "resume is disabled")
        super().fire(rollout, action, step, **data)


def test_refusing_a_legal_event_is_caught() -> None:
    assert violations(NeverResumes) == {Invariant.LEGAL_EVENTS_ACCEPTED}


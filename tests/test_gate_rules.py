"""The gate's rules in deploystate.testing: they pass on the gate as it is, and each invariant is
broken by a deliberately broken guard, and caught.

The broken guards are the real gate with one bug, patched in for the test: the environment claim
(``deploystate.decide.claim``), the checks' verdict right before the trigger
(``deploystate.decide.checks_pass``), the overrides' expiry, the rollback command's own check.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import Phase as Stage
from hypothesis.stateful import run_state_machine_as_test

from deploystate.environments import Answer, Claim, EnvironmentView, Move, VersionKey, claim
from deploystate.ports import Outcome
from deploystate.rollout import Override, RolloutView
from deploystate.runner import Runner
from deploystate.spec import Spec
from deploystate.testing import GateInvariant, GateRules, GateViolation, gate_rules

decide = importlib.import_module("deploystate.decide")  # the module (the package exports its function)

# Modest: the whole file runs in well under a minute.
MODEST = settings(max_examples=150, stateful_step_count=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))

TestSeedGate = MODEST(gate_rules()).TestCase


def caught(rules: type[GateRules] | None = None, *, max_examples: int = 400) -> GateViolation:
    """The first violation hypothesis finds in ``rules`` (no shrinking: finding it is what is tested)."""
    # Aborts that leave deployments running are left out: a broken guard must be what is caught.
    rules = rules or gate_rules(leave_running=False)
    search = settings(MODEST, max_examples=max_examples, phases=[Stage.generate])
    with pytest.raises(GateViolation) as found:
        run_state_machine_as_test(rules, settings=search)
    return found.value


def broken_claim(change: Callable[[EnvironmentView, Claim, VersionKey, Answer], Answer]) -> Any:
    def patched(view: EnvironmentView, want: Claim, version_key: VersionKey) -> Answer:
        return change(view, want, version_key, claim(view, want, version_key))

    return patched


def test_a_claim_that_never_waits_breaks_one_deployment_per_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decide, "claim", broken_claim(
        lambda view, want, key, answer: Answer(Move.CLAIM) if answer.move is Move.WAIT else answer))
    violation = caught()
    assert violation.invariant is GateInvariant.ONE_DEPLOYMENT_PER_ENVIRONMENT
    assert "still runs" in str(violation) and f"broken rule: {violation.invariant.value}" in str(violation)


def test_a_claim_that_ignores_version_order_breaks_older_over_newer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every claim is taken as a rollback's: locks and busy environments still hold it back.
    def as_rollback(view: EnvironmentView, want: Claim, version_key: VersionKey) -> Answer:
        return claim(view, attrs.evolve(want, rollback=True), version_key)

    monkeypatch.setattr(decide, "claim", as_rollback)
    violation = caught()
    assert violation.invariant is GateInvariant.NEVER_OLDER_OVER_NEWER
    assert "already succeeded in" in violation.detail


def test_a_claim_that_always_claims_breaks_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Neither waits nor supersedes (held is still held, or nothing would ever trigger).
    monkeypatch.setattr(decide, "claim", broken_claim(
        lambda view, want, key, answer: answer if answer.move is Move.HELD else Answer(Move.CLAIM)))
    assert caught().invariant in {GateInvariant.ONE_DEPLOYMENT_PER_ENVIRONMENT,
                                  GateInvariant.NEVER_OLDER_OVER_NEWER}


def test_checks_that_always_pass_break_the_protected_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decide, "checks_pass", lambda view, results, now: True)
    violation = caught()
    assert violation.invariant is GateInvariant.PROTECTED_ONLY_WHEN_CHECKS_PASS
    assert "not covered" in violation.detail or "is locked" in violation.detail


def test_an_override_that_never_expires_breaks_the_protected_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    def forever(self: RolloutView, now: float) -> tuple[Override, ...]:
        return tuple(self.overrides)

    monkeypatch.setattr(RolloutView, "live_overrides", forever)
    violation = caught()
    assert violation.invariant is GateInvariant.PROTECTED_ONLY_WHEN_CHECKS_PASS
    assert "not covered" in violation.detail and "until" in violation.detail


def test_a_rollback_to_a_version_that_never_succeeded_there_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def careless(self: Runner, environment: str, version: str, by: str, reason: str,
                 spec: Spec) -> RolloutView:
        number = 1
        while f"{version}-rollback-{environment}-{number}" in set(self.store.rollouts()):
            number += 1
        return self.create(version, spec, rollout_id=f"{version}-rollback-{environment}-{number}", rollback={
            "environment": environment, "by": by, "reason": reason, "from_version": None})

    monkeypatch.setattr(Runner, "rollback", careless)
    violation = caught()
    assert violation.invariant is GateInvariant.NEVER_OLDER_OVER_NEWER
    assert "never succeeded in" in violation.detail


def test_gate_rules_want_an_ordered_pool() -> None:
    with pytest.raises(ValueError, match="oldest first"):
        gate_rules(versions=("13.10.202103011600", "13.10.202103011200"))


# -- what the rules found in the gate itself --------------------------------------------------------
# Short runs of the rules' world, each a gap the rules found in the gate: a GateViolation names the
# invariant and lists what the world saw.  An abort leaving its deployment running gave the environment
# back at once; an abort, or a retry, after a success nobody had seen yet lost that success (all since
# fixed: kept here so they stay fixed).  Still open: an abort leaving a *timed-out* deployment running
# gives its environment back at once.

NEW, OLD = "13.10.202103011600", "13.10.202103011200"


def test_an_abort_that_leaves_its_deployment_running_keeps_its_environment() -> None:
    rules = gate_rules()()
    rules.open_rollout(NEW)
    rules.advance_once(NEW)  # NEW triggers staging; it runs
    rules.runners[NEW].abort(NEW, "amy", "wrong package", leave_running=True)  # it still runs out there
    rules.open_rollout(OLD)
    rules.advance_once(OLD)  # must not trigger staging while NEW's deployment runs there
    assert [d.rollout for d in rules.world.running()] == [NEW]


def test_an_abort_that_leaves_a_timed_out_deployment_running_keeps_its_environment() -> None:
    rules = gate_rules()()
    rules.open_rollout(NEW)
    rules.advance_once(NEW)
    rules.world.clock.advance(8 * 3600)
    rules.advance_once(NEW)  # staging timed out: failed here, still running out there
    rules.runners[NEW].abort(NEW, "amy", "wrong package", leave_running=True)
    rules.open_rollout(OLD)
    rules.advance_once(OLD)  # must not trigger staging while NEW's deployment runs there
    assert [d.rollout for d in rules.world.running()] == [NEW]


def test_an_abort_after_the_deployment_succeeded_out_there_keeps_the_success() -> None:
    rules = gate_rules()()
    rules.open_rollout(NEW)
    rules.advance_once(NEW)
    (deployment,) = rules.world.running()
    rules.world.finish(deployment, Outcome.SUCCEEDED)  # NEW succeeded in staging; its runner has not looked
    rules.runners[NEW].abort(NEW, "amy", "too late")  # the cancel answers that it had already succeeded
    rules.open_rollout(OLD)
    rules.advance_once(OLD)  # must be superseded: NEW succeeded in staging
    assert rules.view(OLD).superseded is not None


def test_a_retry_after_the_timed_out_deployment_succeeded_keeps_the_success() -> None:
    rules = gate_rules()()
    world = rules.world
    rules.open_rollout(NEW)
    rules.advance_once(NEW)
    world.clock.advance(7 * 3600)
    rules.advance_once(NEW)  # staging timed out: failed here, still running out there
    (first,) = world.running()
    world.finish(first, Outcome.SUCCEEDED)  # then it succeeded, before the runner looked again
    rules.runners[NEW].retry(NEW, "trigger_gstg", "amy")  # the retry reads that success, and goes on
    rules.advance_once(NEW)
    (second,) = world.running()
    world.finish(second, Outcome.FAILED)
    rules.advance_once(NEW)
    rules.open_rollout(OLD)
    rules.advance_once(OLD)  # must be superseded: NEW succeeded in staging (its first attempt)
    assert rules.view(OLD).superseded is not None

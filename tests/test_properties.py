"""Property-based tests of the rollout machine, using the rules users get from deploystate.testing.

The stateful rules run under the loaded hypothesis profile (conftest: 500 examples with CI=true).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import find, given, settings

from deploystate.machine import DONE, Action, Phase, RolloutMachine
from deploystate.spec import Spec, Step, StepKind, builtin_spec, default_spec
from deploystate.testing import rollout_rules, valid_specs

TestSeedRollouts = rollout_rules(default_spec()).TestCase
TestReorderedRollouts = rollout_rules(builtin_spec("reordered")).TestCase
TestGeneratedSpecRollouts = rollout_rules(valid_specs()).TestCase


@pytest.mark.parametrize("case", [TestSeedRollouts, TestReorderedRollouts, TestGeneratedSpecRollouts])
def test_the_rules_run_as_many_examples_as_the_profile_asks(case: type) -> None:
    assert case.settings.max_examples == settings.default.max_examples


def test_importing_deploystate_does_not_need_hypothesis() -> None:
    # A fresh interpreter: this one has hypothesis loaded already.
    code = ("import sys, deploystate, deploystate.machine, deploystate.spec; "
            "print(sorted(m for m in ('hypothesis', 'deploystate.testing') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _required_data(step: Step) -> dict[str, object]:
    if step.kind is StepKind.BAKE:
        return {"elapsed_s": step.duration_s}
    if step.kind is StepKind.PROMOTION:
        return {"by": "release-manager"}
    return {}


@given(valid_specs())
def test_every_valid_spec_compiles_and_ready_steps_lead_to_done(spec: Spec) -> None:
    machine = RolloutMachine(spec)
    rollout = machine.new("r1")
    # Each round completes at least one step, so this many rounds is always enough.
    for _ in range(len(spec.steps)):
        for name in machine.ready(rollout):
            machine.fire(rollout, Action.START, name)
            machine.fire(rollout, Action.SUCCEED, name, **_required_data(spec.step(name)))
    assert machine.ready(rollout) == []
    assert set(machine.phases(rollout).values()) == {Phase.SUCCEEDED}
    machine.fire(rollout, Action.FINISH)
    assert machine.status(rollout) == DONE


@pytest.mark.parametrize("kind", list(StepKind))
def test_valid_specs_reach_every_step_kind(kind: StepKind) -> None:
    spec = find(valid_specs(), lambda s: any(step.kind is kind for step in s.steps))
    assert any(step.kind is kind for step in spec.steps)


def test_valid_specs_reach_a_protected_deployment() -> None:
    spec = find(valid_specs(), lambda s: any(step.protected for step in s.steps))
    assert any(step.protected for step in spec.steps)


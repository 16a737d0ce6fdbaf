"""The compiled machine, by example: what each event does to a rollout of the seed's pipeline.

Random sequences of events are the property tests' job (deploystate/testing.py); these are the
concrete cases a reader learns the machine from.  Every refused event is checked for what it
says (the event, the current state, the events allowed now, why) and for changing nothing.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from deploystate.actions import FACTS, ROLLOUT_EVENTS, Action
from deploystate.errors import EventRefused
from deploystate.machine import Phase, Rollout, RolloutMachine
from deploystate.spec import StepKind, builtin_spec, default_spec

PENDING, RUNNING, SUCCEEDED, FAILED = Phase.PENDING, Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED
SEED_STEPS = [s.name for s in default_spec().steps]
# What each gate needs to be allowed to succeed in the seed (30 minute bake, a named promoter).
PASSING: dict[str, dict[str, Any]] = {
    "baking_time": {"elapsed_s": 1800},
    "manual_promotion": {"by": "release-manager"},
}


@pytest.fixture
def machine() -> RolloutMachine:
    return RolloutMachine(default_spec())


@pytest.fixture
def rollout(machine: RolloutMachine) -> Rollout:
    return machine.new("13.10.202103011220")


def complete(machine: RolloutMachine, rollout: Rollout, *steps: str) -> None:
    """Start and succeed each step, passing each gate's guard."""
    for step in steps:
        machine.fire(rollout, Action.START, step)
        machine.fire(rollout, Action.SUCCEED, step, **PASSING.get(step, {}))


def up_to_production(machine: RolloutMachine, rollout: Rollout) -> None:
    complete(machine, rollout, "tag", "wait_cng", "wait_omnibus", "trigger_gstg", "trigger_cny")


def refused(machine: RolloutMachine, rollout: Rollout, action: Action | str, step: str | None = None,
            **data: Any) -> EventRefused:
    """Fire an event that must be refused; check the refusal changed nothing and return it."""
    before = (machine.status(rollout), machine.phases(rollout), machine.describe(rollout))
    with pytest.raises(EventRefused) as caught:
        machine.fire(rollout, action, step, **data)
    assert (machine.status(rollout), machine.phases(rollout), machine.describe(rollout)) == before
    error = caught.value
    assert error.state == machine.describe(rollout)
    assert error.allowed == tuple(machine.allowed(rollout))
    assert f"refused in state {error.state}" in str(error)
    return error


# -- a fresh rollout --------------------------------------------------------------------------
def test_a_new_rollout_is_active_with_every_step_pending(machine: RolloutMachine, rollout: Rollout) -> None:
    assert machine.status(rollout) == "active"
    assert machine.phases(rollout) == dict.fromkeys(SEED_STEPS, PENDING)
    assert machine.phase(rollout, "trigger_gprd") is PENDING
    assert machine.phase(rollout, "no_such_step") is None
    assert machine.describe(rollout).startswith("active(tag=pending, wait_cng=pending")
    assert machine.ready(rollout) == ["tag"]
    assert set(machine.allowed(rollout)) == {"start tag", "abort"}
    assert not machine.can_finish(rollout)


def test_ready_lists_pending_steps_whose_needs_all_succeeded(machine: RolloutMachine,
                                                             rollout: Rollout) -> None:
    machine.fire(rollout, Action.START, "tag")
    assert machine.ready(rollout) == []  # a running step is not ready, and nothing else is yet
    machine.fire(rollout, Action.SUCCEED, "tag")
    assert set(machine.ready(rollout)) == {"wait_cng", "wait_omnibus"}  # the fork after the tag
    complete(machine, rollout, "wait_cng")
    assert machine.ready(rollout) == ["wait_omnibus"]
    complete(machine, rollout, "wait_omnibus")
    assert set(machine.ready(rollout)) == {"trigger_gstg", "trigger_complete_deployment"}
    complete(machine, rollout, "trigger_gstg", "trigger_cny")
    assert set(machine.ready(rollout)) == {"trigger_complete_deployment", "baking_time", "manual_promotion"}


def test_actions_may_be_given_as_text(machine: RolloutMachine, rollout: Rollout) -> None:
    machine.fire(rollout, "start", "tag")
    assert machine.phase(rollout, "tag") is RUNNING


# -- joins ------------------------------------------------------------------------------------
def test_staging_cannot_start_until_both_package_builds_succeeded(machine: RolloutMachine,
                                                                  rollout: Rollout) -> None:
    complete(machine, rollout, "tag", "wait_cng")
    error = refused(machine, rollout, Action.START, "trigger_gstg")
    assert error.event == "start trigger_gstg"
    assert error.why == "trigger_gstg needs wait_omnibus to succeed first"
    assert set(error.allowed) == {"start wait_omnibus", "abort"}
    assert "Allowed now: " in str(error)

    machine.fire(rollout, Action.START, "wait_omnibus")
    assert refused(machine, rollout, Action.START, "trigger_gstg").why == (
        "trigger_gstg needs wait_omnibus to succeed first")  # running is not enough
    machine.fire(rollout, Action.FAIL, "wait_omnibus")
    refused(machine, rollout, Action.START, "trigger_gstg")  # nor is failed
    machine.fire(rollout, Action.RESUME, "wait_omnibus")
    machine.fire(rollout, Action.SUCCEED, "wait_omnibus")
    machine.fire(rollout, Action.START, "trigger_gstg")
    assert machine.phase(rollout, "trigger_gstg") is RUNNING


def test_production_needs_the_bake_and_the_promotion(machine: RolloutMachine) -> None:
    only_bake, only_promotion, both = (machine.new(name) for name in ("bake", "promotion", "both"))
    for rollout in (only_bake, only_promotion, both):
        up_to_production(machine, rollout)
    complete(machine, only_bake, "baking_time")
    complete(machine, only_promotion, "manual_promotion")
    complete(machine, both, "baking_time", "manual_promotion")

    assert refused(machine, only_bake, Action.START, "trigger_gprd").why == (
        "trigger_gprd needs manual_promotion to succeed first")
    assert refused(machine, only_promotion, Action.START, "trigger_gprd").why == (
        "trigger_gprd needs baking_time to succeed first")
    assert "start trigger_gprd" not in machine.allowed(only_bake)
    machine.fire(both, Action.START, "trigger_gprd")
    assert machine.phase(both, "trigger_gprd") is RUNNING


def test_a_join_lists_every_need_still_missing(machine: RolloutMachine, rollout: Rollout) -> None:
    up_to_production(machine, rollout)
    assert refused(machine, rollout, Action.START, "trigger_gprd").why == (
        "trigger_gprd needs baking_time, manual_promotion to succeed first")


# -- failure, resume, retry -------------------------------------------------------------------
def test_a_failed_deployment_resumed_by_its_retried_pipeline_lets_the_rollout_go_on(
        machine: RolloutMachine, rollout: Rollout) -> None:
    complete(machine, rollout, "tag", "wait_cng", "wait_omnibus")
    machine.fire(rollout, Action.START, "trigger_gstg")
    machine.fire(rollout, Action.FAIL, "trigger_gstg")
    assert machine.phase(rollout, "trigger_gstg") is FAILED
    assert "trigger_cny" not in machine.ready(rollout)
    refused(machine, rollout, Action.START, "trigger_cny")

    # Someone retried a job inside the deployer pipeline: failed -> running -> success.
    machine.fire(rollout, Action.RESUME, "trigger_gstg")
    assert machine.phase(rollout, "trigger_gstg") is RUNNING
    machine.fire(rollout, Action.SUCCEED, "trigger_gstg")
    assert "trigger_cny" in machine.ready(rollout)
    machine.fire(rollout, Action.START, "trigger_cny")


def test_a_failed_step_retried_goes_back_to_pending_and_starts_again(machine: RolloutMachine,
                                                                     rollout: Rollout) -> None:
    machine.fire(rollout, Action.START, "tag")
    machine.fire(rollout, Action.FAIL, "tag")
    assert set(machine.allowed(rollout)) == {"resume tag", "retry tag", "abort"}
    machine.fire(rollout, Action.RETRY, "tag")
    assert machine.phase(rollout, "tag") is PENDING
    assert machine.ready(rollout) == ["tag"]
    complete(machine, rollout, "tag")
    assert machine.phase(rollout, "tag") is SUCCEEDED


def test_a_step_moves_only_along_its_own_transitions(machine: RolloutMachine, rollout: Rollout) -> None:
    for action in (Action.SUCCEED, Action.FAIL, Action.RESUME, Action.RETRY):
        assert refused(machine, rollout, action, "tag").why == "tag is pending"
    machine.fire(rollout, Action.START, "tag")
    for action in (Action.START, Action.RESUME, Action.RETRY):
        assert refused(machine, rollout, action, "tag").why == "tag is running"
    machine.fire(rollout, Action.SUCCEED, "tag")
    for action in (Action.START, Action.SUCCEED, Action.FAIL, Action.RESUME, Action.RETRY):
        assert refused(machine, rollout, action, "tag").why == "tag is succeeded"


# -- the gates before production --------------------------------------------------------------
@pytest.fixture
def baking(machine: RolloutMachine, rollout: Rollout) -> Rollout:
    up_to_production(machine, rollout)
    machine.fire(rollout, Action.START, "baking_time")
    machine.fire(rollout, Action.START, "manual_promotion")
    return rollout


@pytest.mark.parametrize("data", [{}, {"elapsed_s": 1799}, {"elapsed_s": 1799.9}, {"elapsed_s": "1800"},
                                  {"elapsed_s": True}, {"elapsed_s": None}],
                         ids=["missing", "one-second-short", "fraction-short", "text", "bool", "none"])
def test_a_bake_does_not_succeed_before_its_time(machine: RolloutMachine, baking: Rollout,
                                                 data: dict[str, Any]) -> None:
    error = refused(machine, baking, Action.SUCCEED, "baking_time", **data)
    assert error.why.startswith(f"the bake lasts 1800s; elapsed_s={data.get('elapsed_s')!r}")
    assert "skip it with a reason instead" in error.why


@pytest.mark.parametrize("elapsed", [1800, 1800.0, 5400])
def test_a_bake_succeeds_once_its_time_has_passed(machine: RolloutMachine, baking: Rollout,
                                                  elapsed: float) -> None:
    machine.fire(baking, Action.SUCCEED, "baking_time", elapsed_s=elapsed)
    assert machine.phase(baking, "baking_time") is SUCCEEDED


def test_a_bake_is_skipped_only_with_a_reason_and_who_decided(machine: RolloutMachine,
                                                              baking: Rollout) -> None:
    why = "skipping a bake needs a reason and who decided (by)"
    assert refused(machine, baking, Action.SKIP, "baking_time").why == why
    assert refused(machine, baking, Action.SKIP, "baking_time", reason="incident 123").why == why
    assert refused(machine, baking, Action.SKIP, "baking_time", by="alice").why == why
    assert refused(machine, baking, Action.SKIP, "baking_time", reason="  ", by="alice").why == why
    machine.fire(baking, Action.SKIP, "baking_time", reason="fix for incident 123", by="alice")
    assert machine.phase(baking, "baking_time") is SUCCEEDED


def test_only_a_running_bake_can_be_skipped(machine: RolloutMachine, rollout: Rollout) -> None:
    assert refused(machine, rollout, Action.SKIP, "trigger_gprd", reason="r", by="b").why == (
        "skip does not apply to a deployment step")
    up_to_production(machine, rollout)
    assert refused(machine, rollout, Action.SKIP, "baking_time", reason="r", by="b").why == (
        "baking_time is pending")


def test_a_promotion_records_who_promoted(machine: RolloutMachine, baking: Rollout) -> None:
    why = "a promotion needs who promoted (by)"
    assert refused(machine, baking, Action.SUCCEED, "manual_promotion").why == why
    assert refused(machine, baking, Action.SUCCEED, "manual_promotion", by="").why == why
    assert refused(machine, baking, Action.SUCCEED, "manual_promotion", by=7).why == why
    machine.fire(baking, Action.SUCCEED, "manual_promotion", by="alice")
    assert machine.phase(baking, "manual_promotion") is SUCCEEDED


# -- abort ------------------------------------------------------------------------------------
# Events that lead to the configurations an operator might abort from.
ABORT_FROM: dict[str, list[tuple[Action, str]]] = {
    "fresh": [],
    "tag running": [(Action.START, "tag")],
    "tag failed": [(Action.START, "tag"), (Action.FAIL, "tag")],
    "one build done, one failed": [
        (Action.START, "tag"), (Action.SUCCEED, "tag"), (Action.START, "wait_cng"),
        (Action.START, "wait_omnibus"), (Action.SUCCEED, "wait_cng"), (Action.FAIL, "wait_omnibus"),
    ],
    "staging and legacy running": [
        *[(a, s) for s in ("tag", "wait_cng", "wait_omnibus") for a in (Action.START, Action.SUCCEED)],
        (Action.START, "trigger_gstg"), (Action.START, "trigger_complete_deployment"),
    ],
}


@pytest.mark.parametrize("events", ABORT_FROM.values(), ids=ABORT_FROM.keys())
def test_abort_needs_a_reason_and_ends_the_rollout_from_anywhere(
        machine: RolloutMachine, rollout: Rollout, events: list[tuple[Action, str]]) -> None:
    for action, step in events:
        machine.fire(rollout, action, step)
    assert "abort" in machine.allowed(rollout)
    assert refused(machine, rollout, Action.ABORT).why == "an abort needs a reason"
    assert refused(machine, rollout, Action.ABORT, reason=" ").why == "an abort needs a reason"
    machine.fire(rollout, Action.ABORT, reason="bad package")
    assert machine.status(rollout) == "aborted"
    assert machine.phases(rollout) == {}


@pytest.mark.parametrize("gates", ["baking", "promoted", "all succeeded"])
def test_abort_is_possible_at_the_gates_and_before_finishing(machine: RolloutMachine, baking: Rollout,
                                                             gates: str) -> None:
    if gates != "baking":
        machine.fire(baking, Action.SUCCEED, "manual_promotion", by="alice")
    if gates == "all succeeded":
        machine.fire(baking, Action.SUCCEED, "baking_time", elapsed_s=1800)
        complete(machine, baking, "trigger_gprd", "trigger_complete_deployment")
        assert machine.can_finish(baking)
    machine.fire(baking, Action.ABORT, reason="change request in progress")
    assert machine.status(baking) == "aborted"


# -- finishing and the end --------------------------------------------------------------------
def test_finish_only_when_every_step_succeeded(machine: RolloutMachine, rollout: Rollout) -> None:
    up_to_production(machine, rollout)
    complete(machine, rollout, "baking_time", "manual_promotion", "trigger_gprd")
    # The legacy all-environments run is part of the rollout too.
    assert not machine.can_finish(rollout)
    assert refused(machine, rollout, Action.FINISH).why == (
        "steps not yet succeeded: trigger_complete_deployment")
    assert "finish" not in machine.allowed(rollout)
    complete(machine, rollout, "trigger_complete_deployment")
    assert machine.can_finish(rollout)
    assert set(machine.allowed(rollout)) == {"finish", "abort"}
    machine.fire(rollout, Action.FINISH)
    assert machine.status(rollout) == "done"
    assert machine.describe(rollout) == "done"
    assert machine.phases(rollout) == {}
    assert machine.ready(rollout) == []


def every_event(machine: RolloutMachine) -> list[tuple[Action, str | None, dict[str, Any]]]:
    good = {"elapsed_s": 10**6, "by": "alice", "reason": "because"}
    events: list[tuple[Action, str | None, dict[str, Any]]] = [
        (action, step, good) for action in Action if action.is_event and action not in ROLLOUT_EVENTS
        for step in SEED_STEPS
    ]
    return [*events, (Action.FINISH, None, {}), (Action.ABORT, None, good)]


@pytest.mark.parametrize("end", ["done", "aborted"])
def test_an_ended_rollout_accepts_nothing(machine: RolloutMachine, rollout: Rollout, end: str) -> None:
    if end == "done":
        complete(machine, rollout, *SEED_STEPS)
        machine.fire(rollout, Action.FINISH)
    else:
        machine.fire(rollout, Action.ABORT, reason="wrong tag")
    assert machine.allowed(rollout) == []
    for action, step, data in every_event(machine):
        error = refused(machine, rollout, action, step, **data)
        assert error.why == f"the rollout is {end}, which is final"
        assert error.allowed == ()
        assert "Allowed now: none (the rollout has ended)" in str(error)


# -- many rollouts, one machine ---------------------------------------------------------------
def test_rollouts_on_one_machine_do_not_affect_each_other(machine: RolloutMachine) -> None:
    first, second, third = (machine.new(f"13.10.20210301122{i}") for i in range(3))
    complete(machine, first, "tag", "wait_cng")
    machine.fire(second, Action.START, "tag")
    machine.fire(second, Action.FAIL, "tag")
    machine.fire(third, Action.ABORT, reason="superseded")

    assert machine.phase(first, "tag") is SUCCEEDED
    assert machine.phase(first, "wait_cng") is SUCCEEDED
    assert machine.phase(second, "tag") is FAILED
    assert machine.phases(second) == {**dict.fromkeys(SEED_STEPS, PENDING), "tag": FAILED}
    assert machine.status(third) == "aborted"

    complete(machine, first, *SEED_STEPS[2:])
    machine.fire(first, Action.FINISH)
    assert machine.status(first) == "done"
    assert machine.phase(second, "tag") is FAILED  # untouched by the other rollout finishing
    assert machine.new("fourth").state != first.state  # a new rollout starts afresh


def test_two_machines_of_the_same_spec_are_independent() -> None:
    one, two = RolloutMachine(default_spec()), RolloutMachine(default_spec())
    a, b = one.new("a"), two.new("a")
    complete(one, a, "tag")
    assert one.phase(a, "tag") is SUCCEEDED
    assert two.phase(b, "tag") is PENDING


def test_a_released_rollout_stays_readable_and_is_no_longer_held(machine: RolloutMachine) -> None:
    kept, released = machine.new("kept"), machine.new("released")
    complete(machine, released, "tag")
    described = machine.describe(released)
    machine.release(released)
    assert machine.describe(released) == described
    assert machine.phase(released, "tag") is SUCCEEDED

    kept_ref, released_ref = weakref.ref(kept), weakref.ref(released)
    del kept, released
    gc.collect()
    # Without release() the machine keeps serving (and holding) a rollout for ever.
    assert kept_ref() is not None
    assert released_ref() is None
    complete(machine, machine.new("after"), "tag")


# -- introspection ----------------------------------------------------------------------------
def test_definition_lists_every_transition_and_guards_joins_and_gates(machine: RolloutMachine) -> None:
    rows = {(t.action, t.step): t for t in machine.definition()}
    spec = machine.spec
    expected: set[tuple[Action, str | None]] = {(action, s.name) for s in spec.steps
                for action in (Action.START, Action.SUCCEED, Action.FAIL, Action.RESUME, Action.RETRY)}
    expected |= {(Action.SKIP, s.name) for s in spec.steps if s.kind is StepKind.BAKE}
    expected |= {(Action.FINISH, None), (Action.ABORT, None)}
    assert set(rows) == expected
    assert len(machine.definition()) == len(expected)  # one transition per event

    gprd = rows[(Action.START, "trigger_gprd")]
    assert (gprd.source, gprd.dest, gprd.guarded) == (
        "active.trigger_gprd.pending", "active.trigger_gprd.running", True)
    assert {s for (a, s), t in rows.items() if a is Action.START and t.guarded} == {
        s.name for s in spec.steps if s.needs}
    assert not rows[(Action.START, "tag")].guarded
    assert rows[(Action.SUCCEED, "baking_time")].guarded
    assert rows[(Action.SUCCEED, "manual_promotion")].guarded
    assert rows[(Action.SKIP, "baking_time")].guarded
    assert not rows[(Action.SUCCEED, "trigger_gstg")].guarded
    retry = rows[(Action.RETRY, "trigger_cny")]
    assert (retry.source, retry.dest) == ("active.trigger_cny.failed", "active.trigger_cny.pending")
    finish, abort = rows[(Action.FINISH, None)], rows[(Action.ABORT, None)]
    assert (finish.source, finish.dest, finish.guarded) == ("active", "done", True)
    assert (abort.source, abort.dest, abort.guarded) == ("active", "aborted", True)
    states = set(machine.states())
    assert all({t.source, t.dest} <= states for t in rows.values())


def test_states_are_one_region_per_step_plus_done_and_aborted(machine: RolloutMachine) -> None:
    states = set(machine.states())
    assert {"active", "done", "aborted", "active.wait_cng", "active.wait_cng.failed"} <= states
    assert {s for s in states if s.count(".") == 1} == {f"active.{s}" for s in SEED_STEPS}


def test_joined_names_the_steps_guarding_a_start(machine: RolloutMachine) -> None:
    assert machine.joined("trigger_gprd") == ("baking_time", "manual_promotion")
    assert machine.joined("trigger_gstg") == ("wait_cng", "wait_omnibus")
    assert machine.joined("tag") == ()


def test_the_reordered_spec_deploys_staging_and_production_together() -> None:
    machine = RolloutMachine(builtin_spec("reordered"))
    rollout = machine.new("reordered")
    complete(machine, rollout, "tag", "wait_cng", "wait_omnibus", "trigger_gstg_cny", "trigger_cny")
    assert "trigger_gstg" not in machine.ready(rollout)  # staging now waits for the gates too
    complete(machine, rollout, "baking_time", "manual_promotion")
    assert set(machine.ready(rollout)) == {"trigger_gstg", "trigger_gprd"}
    machine.fire(rollout, Action.START, "trigger_gprd")
    machine.fire(rollout, Action.START, "trigger_gstg")
    assert machine.phase(rollout, "trigger_gstg") is machine.phase(rollout, "trigger_gprd") is RUNNING


# -- events that make no sense ----------------------------------------------------------------
def test_an_unknown_step_is_refused_with_the_list_of_steps(machine: RolloutMachine, rollout: Rollout) -> None:
    error = refused(machine, rollout, Action.START, "trigger_prod")
    assert error.event == "start trigger_prod"
    assert error.why == f"unknown step 'trigger_prod'; steps: {', '.join(SEED_STEPS)}"


def test_an_unknown_action_is_refused_with_the_list_of_actions(machine: RolloutMachine,
                                                               rollout: Rollout) -> None:
    error = refused(machine, rollout, "deploy", "trigger_gstg")
    assert error.event == "deploy trigger_gstg"
    events = ", ".join(a.value for a in Action if a.is_event)
    assert error.why == f"unknown action 'deploy'; actions: {events}"


@pytest.mark.parametrize("fact", sorted(FACTS))
def test_a_fact_is_no_event_of_the_machine(machine: RolloutMachine, rollout: Rollout, fact: Action) -> None:
    error = refused(machine, rollout, fact, "trigger_gstg")
    assert error.why == f"{fact.value} is a fact about a rollout, not an event of its machine"


def test_rollout_events_take_no_step_and_step_events_need_one(machine: RolloutMachine,
                                                              rollout: Rollout) -> None:
    assert refused(machine, rollout, Action.FINISH, "trigger_gprd").why == (
        "finish applies to the whole rollout, not to a step")
    assert refused(machine, rollout, Action.ABORT, "tag", reason="r").why == (
        "abort applies to the whole rollout, not to a step")
    assert refused(machine, rollout, Action.START).why == "start needs a step"

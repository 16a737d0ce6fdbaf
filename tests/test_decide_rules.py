"""The pure decision, driven through thousands of random interleavings, without HTTP or processes.

A small model of the outside world (pipelines by idempotency key, package builds) answers the
calls a decision asks for, sometimes badly (a transient error, a lost answer after the trigger
happened, a permanent error).  Between a decision and its effect, people write (promote,
skip-bake, retry, abort), the runner crashes (it forgets everything but the journal), time
passes and pipelines change by themselves (finish, fail, get retried by a human).  The rules
are those of the spec: exactly-once triggering, nothing triggered without a durable intent,
time-outs announced when they happen, a step failed by our time-out never resumed by a mere
"still running".
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from deploystate import operator
from deploystate.actions import Action
from deploystate.config import RunnerConfig
from deploystate.decide import Ask, Call, Outside, Seen, decide
from deploystate.environments import EnvironmentView, environment_view
from deploystate.errors import DeploystateError
from deploystate.journal import Record
from deploystate.machine import Phase
from deploystate.ports import Deployment, Outcome, PackageBuild
from deploystate.rollout import RolloutView, rebuild
from deploystate.spec import StepKind, default_spec, spec_to_mapping
from deploystate.strategy import Strategy

VERSION = "13.10.202103011220"
SPEC = default_spec()
CONFIG = RunnerConfig(package_wait_limit_s=3 * 3600, deployment_wait_limit_s=4 * 3600,
                      failed_watch_s=2 * 3600, trigger_doubt_s=60.0)
DEPLOYMENT_STEPS = [s.name for s in SPEC.steps if s.targets]
PACKAGE_STEPS = [s.name for s in SPEC.steps if s.kind is StepKind.PACKAGE_WAIT]
ANSWERS = st.sampled_from(["ok", "ok", "ok", "transient", "lost", "permanent"])


@attrs.define
class Pipeline:
    id: str
    key: str
    outcome: Outcome = Outcome.WAITING
    finished_at: float | None = None


class World:
    """The outside world: pipelines made by triggers, package builds that appear."""

    def __init__(self) -> None:
        self.pipelines: list[Pipeline] = []
        self.builds: dict[str, Outcome] = {}

    def by_key(self, key: str) -> Pipeline | None:
        found = [p for p in self.pipelines if p.key == key]
        return found[0] if found else None

    def answer(self, call: Call, how: str, now: float) -> Seen:
        if how == "transient":
            return Seen(call, error="503 from the outside world", transient=True)
        if how == "permanent":
            return Seen(call, error="404 from the outside world", transient=False)
        if call.ask is Ask.PACKAGE:
            assert call.package is not None
            outcome = self.builds.get(call.package, Outcome.MISSING)
            return Seen(call, build=PackageBuild(call.package, VERSION, outcome.value, outcome))
        if call.ask is Ask.TRIGGER:
            assert call.request is not None
            made = Pipeline(str(len(self.pipelines) + 1), call.request.key)
            self.pipelines.append(made)
            if how == "lost":  # it happened, but the answer never arrived
                return Seen(call, error="connection reset", transient=True)
            return Seen(call, deployment=self._deployment(made))
        if call.ask is Ask.FIND:
            assert call.request is not None
            found = self.by_key(call.request.key)
            return Seen(call, deployment=None if found is None else self._deployment(found))
        made_by_id = [p for p in self.pipelines if p.id == call.deployment_id]
        assert made_by_id, f"status of a deployment nobody made: {call}"
        return Seen(call, deployment=self._deployment(made_by_id[0]))

    @staticmethod
    def _deployment(made: Pipeline) -> Deployment:
        return Deployment(made.id, made.key, made.outcome.value, made.outcome, finished_at=made.finished_at)


class DecisionRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_614_601_200.0
        strategy = Strategy()
        created = Record(VERSION, 1, Action.CREATED.value, self.now, "test", None, {
            "version": VERSION, "spec": spec_to_mapping(SPEC), "settings": strategy.as_dict(),
            "plan": strategy.describe()})
        self.records: list[Record] = [created]
        self.view: RolloutView = rebuild(self.records)
        self.world = World()
        # What the runner holds in memory, lost in a crash:
        self.seen: dict[str, Seen] = {}
        self.queued: list[Call] = []
        self.trigger_calls: list[tuple[str, bool]] = []  # (key, was it durable when called)
        # The environments' journals (durable, shared with other rollouts: here, none).
        self.environments: dict[str, list[Record]] = {}
        self.unclaimed_triggers: list[tuple[str, object]] = []

    # -- the runner, one decision or one call at a time ---------------------------------------
    def _record(self, entries: Any) -> None:
        self.view, records = self.view.with_entries(entries)
        self.records.extend(records)

    def _environment_views(self) -> dict[str, EnvironmentView]:
        names = {env for step in SPEC.steps for env in step.targets}
        return {name: environment_view(name, self.environments.get(name, [])) for name in names}

    @rule()
    def decide_and_record(self) -> None:
        outside = Outside(self.now, dict(self.seen), environments=self._environment_views())
        decision = decide(self.view, outside, CONFIG)
        if decision.entries:
            self._record(decision.entries)
            for entry in decision.entries:
                if entry.step is not None:
                    self.seen.pop(entry.step, None)
        for appended in decision.environments:
            journal = self.environments.setdefault(appended.environment, [])
            assert len(journal) == appended.expected_seq  # one rollout: nobody else writes there
            journal.extend(Record(appended.environment, len(journal) + i + 1, e.action, e.at, e.actor, e.step,
                                  dict(e.data)) for i, e in enumerate(appended.entries))
        self.queued = list(decision.calls)

    @precondition(lambda self: bool(self.queued))
    @rule(how=ANSWERS, which=st.integers(0, 20))
    def make_a_call(self, how: str, which: int) -> None:
        call = self.queued.pop(which % len(self.queued))
        if call.request is not None and call.ask is Ask.TRIGGER:
            durable = any(r.action == Action.START and r.data.get("key") == call.request.key
                          for r in self.records)
            self.trigger_calls.append((call.request.key, durable))
            if not call.request.check_mode:  # a real deployment holds its environments first
                views = self._environment_views()
                holders = {env: views[env].holder for env in call.request.environments}
                if any(h is None or h.key != call.request.key for h in holders.values()):
                    self.unclaimed_triggers.append((call.request.key, holders))
        self.seen[call.step] = self.world.answer(call, how, self.now)

    @rule()
    def crash(self) -> None:
        self.seen.clear()
        self.queued.clear()

    @rule(seconds=st.sampled_from([1, 30, 61, 600, 1800, 3 * 3600, 5 * 3600]))
    def time_passes(self, seconds: int) -> None:
        # The runner sleeps between passes; a pass starts with no answers in hand.
        self.now += seconds
        self.seen.clear()
        self.queued.clear()

    # -- the outside world changes by itself -------------------------------------------------
    @rule(package=st.sampled_from(PACKAGE_STEPS),
          outcome=st.sampled_from([Outcome.SUCCEEDED, Outcome.FAILED]))
    def a_build_ends(self, package: str, outcome: Outcome) -> None:
        self.world.builds[SPEC.step(package).package or ""] = outcome

    @precondition(lambda self: bool(self.world.pipelines))
    @rule(which=st.integers(0, 50), outcome=st.sampled_from([Outcome.SUCCEEDED, Outcome.SUCCEEDED,
                                                             Outcome.FAILED, Outcome.WAITING]))
    def a_pipeline_changes(self, which: int, outcome: Outcome) -> None:
        # WAITING after an end: a human retried a job in the deployer's UI.
        made = self.world.pipelines[which % len(self.world.pipelines)]
        made.outcome = outcome
        made.finished_at = None if outcome is Outcome.WAITING else self.now

    # -- people write, between a decision and its effect -------------------------------------
    def _person(self, choose: Any) -> None:
        try:
            entries = choose(self.view, self.now)
        except DeploystateError:
            return  # refused, and nothing written
        self._record(entries)

    @rule()
    def promote(self) -> None:
        self._person(lambda view, now: operator.promote(view, "release-manager", None, now))

    @rule()
    def skip_bake(self) -> None:
        self._person(lambda view, now: operator.skip_bake(view, "release-manager", "incident", now))

    @rule(step=st.sampled_from([*DEPLOYMENT_STEPS, *PACKAGE_STEPS]))
    def retry(self, step: str) -> None:
        self._person(lambda view, now: operator.retry(view, step, "release-manager", now))

    @precondition(lambda self: len(self.records) > 30)
    @rule()
    def abort(self) -> None:
        self._person(lambda view, now: operator.abort(view, "release-manager", "enough", now))

    # -- what must always hold ---------------------------------------------------------------
    @invariant()
    def each_attempt_is_triggered_at_most_once(self) -> None:
        keys = [p.key for p in self.world.pipelines]
        assert len(keys) == len(set(keys)), f"a key was triggered twice: {keys}"

    @invariant()
    def nothing_is_triggered_before_its_intent_is_durable(self) -> None:
        assert all(durable for _, durable in self.trigger_calls), self.trigger_calls

    @invariant()
    def a_real_deployment_is_triggered_only_while_it_holds_its_environments(self) -> None:
        assert not self.unclaimed_triggers, self.unclaimed_triggers

    @invariant()
    def a_trigger_is_recorded_once_per_key(self) -> None:
        triggered = [r.data.get("key") for r in self.records if r.action == Action.TRIGGERED]
        assert len(triggered) == len(set(triggered)), triggered

    @invariant()
    def the_journal_replays_to_the_same_view(self) -> None:
        replayed = rebuild(self.records)
        assert replayed.state == self.view.state and replayed.steps == self.view.steps
        assert replayed.standing == self.view.standing

    @invariant()
    def a_timed_out_step_is_not_resumed_by_a_mere_running(self) -> None:
        for name in DEPLOYMENT_STEPS:
            timed_out = False
            for record in self.records:
                if record.step != name:
                    continue
                if record.action == Action.FAIL:
                    timed_out = bool(record.data.get("timed_out"))
                elif record.action == Action.RESUME:
                    assert not timed_out or record.data.get("status") == Outcome.SUCCEEDED.value, \
                        f"{name} resumed by {record.data} after our time-out"
                elif record.action in (Action.START, Action.RETRY):
                    timed_out = False

    @invariant()
    def production_waits_for_its_gates(self) -> None:
        gates = [s.name for s in SPEC.steps if s.kind in (StepKind.BAKE, StepKind.PROMOTION)]
        if self.view.steps["trigger_gprd"].attempt:
            assert all(self.view.steps[g].phase is Phase.SUCCEEDED for g in gates)

    @invariant()
    def a_time_out_is_announced_when_it_happens(self) -> None:
        # After a decision with every answer in, nothing is left running past its limit.
        if self.queued or not self.view.active:
            return
        for name in DEPLOYMENT_STEPS:
            state = self.view.steps[name]
            if (state.phase is Phase.RUNNING and state.deployment_id is not None and name in self.seen
                    and self.seen[name].error is None and state.started_at is not None):
                assert self.now - state.started_at <= CONFIG.deployment_wait_limit_s


DecisionRules.TestCase.settings = settings(max_examples=1000, stateful_step_count=100, deadline=None)
TestDecisionRules = DecisionRules.TestCase


def _lost_answer_then_crash(machine: DecisionRules) -> None:
    """A trigger happens, its answer is lost, the runner crashes, and a new one decides again."""
    machine.a_build_ends("wait_cng", Outcome.SUCCEEDED)
    machine.a_build_ends("wait_omnibus", Outcome.SUCCEEDED)
    for _ in range(20):
        if machine.world.pipelines:
            break
        machine.decide_and_record()
        while machine.queued:  # look-ups answer; the first trigger's answer is lost
            machine.make_a_call("lost" if machine.queued[0].ask is Ask.TRIGGER else "ok", 0)
    assert machine.world.pipelines and machine.view.steps["trigger_gstg"].deployment_id is None
    machine.crash()
    machine.time_passes(61)
    for _ in range(4):
        machine.decide_and_record()
        while machine.queued:
            machine.make_a_call("ok", 0)


def test_a_lost_trigger_answer_then_a_crash_triggers_nothing_twice() -> None:
    machine = DecisionRules()
    _lost_answer_then_crash(machine)
    machine.each_attempt_is_triggered_at_most_once()
    assert machine.view.steps["trigger_gstg"].deployment_id is not None  # found again, not doubled


def test_the_rules_catch_a_decision_that_triggers_without_looking_up(monkeypatch: Any) -> None:
    import pytest

    import deploystate.decide as module

    real = module._Decider._trigger

    def as_if_every_key_were_fresh(self: Any, step: Any, state: Any, seen: Any) -> None:
        if (seen is None and self.view.active and state.doubt_since is None) or (
                seen is None and self.view.active and self.now >= state.doubt_since + 60):
            self.calls.append(self._trigger_call(step, state, Ask.TRIGGER))
            return
        real(self, step, state, seen)

    monkeypatch.setattr(module._Decider, "_trigger", as_if_every_key_were_fresh)
    machine = DecisionRules()
    _lost_answer_then_crash(machine)
    with pytest.raises(AssertionError, match="triggered twice"):
        machine.each_attempt_is_triggered_at_most_once()

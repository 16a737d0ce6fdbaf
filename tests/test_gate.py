"""The gate before production, with the shipped doubles: production checks at the promotion and
right before the protected deployment, audited overrides, environment locks, one deployment per
environment across rollouts, version order (superseded), and rollbacks.

Several rollouts share one MemoryStore (their environments' journals are shared through it), as
runners on one journal do.
"""

from __future__ import annotations

import pytest

from deploystate.actions import Action
from deploystate.config import RunnerConfig
from deploystate.decide import Stop
from deploystate.doubles import FakeCheck, FakeDeployer, ManualClock, RecordingNotifier, fake_backends
from deploystate.environments import environment_view
from deploystate.errors import DeploystateError
from deploystate.gates import ChecksRefused, EnvironmentLockCheck
from deploystate.journal import MemoryStore
from deploystate.machine import Phase
from deploystate.ports import CheckContext, CheckResult, Outcome, TriggerRequest, Verdict
from deploystate.runner import Runner
from deploystate.spec import default_spec, rollback_spec
from deploystate.standing import Where
from deploystate.strategy import Strategy

OLD, NEW, NEWER = "13.10.202103011500", "13.10.202103011600", "13.10.202103011700"
SPEC = default_spec()
INDIVIDUAL = Strategy(individual_deployments=True)


class Switch:
    """A check's answer that a test changes as it goes."""

    def __init__(self, verdict: Verdict = Verdict.PASSED) -> None:
        self.verdict = verdict

    def __call__(self, context: CheckContext) -> Verdict:
        return self.verdict


def runner(store: MemoryStore, *, checks: tuple[FakeCheck, ...] = (), deployer: FakeDeployer | None = None,
           clock: ManualClock | None = None, strategy: Strategy = INDIVIDUAL, **config: object) -> Runner:
    backends = fake_backends(deployer=deployer or FakeDeployer(), clock=clock or ManualClock())
    return Runner(store, backends, config=RunnerConfig(strategy=strategy, **config),  # type: ignore[arg-type]
                  notifier=RecordingNotifier(), checks=checks)


def triggered(deployer: FakeDeployer, environment: str) -> list[str]:
    """The triggers of ``environment``'s own deployment (not the legacy dry run beside it)."""
    return [t.key for t in deployer.triggers() if t.environments == (environment,)]


def records(store: MemoryStore, rollout: str, action: Action) -> list[dict[str, object]]:
    return [dict(r.data) for r in store.read(rollout) if r.action == action]


def to_promotion(run: Runner, version: str) -> None:
    run.create(version, SPEC)
    assert run.run(version).stop is Stop.PROMOTION


# -- production checks and overrides ------------------------------------------------------------


def test_a_failing_check_refuses_the_promotion_and_records_why() -> None:
    store = MemoryStore()
    incidents = FakeCheck("active_incidents", lambda c: CheckResult(
        "active_incidents", Verdict.FAILED, "1 active S1 incident", ("https://issues/1 Database down",)))
    run = runner(store, checks=(incidents, FakeCheck("canary_up")))
    to_promotion(run, NEW)
    with pytest.raises(ChecksRefused) as refused:
        run.promote(NEW, "amy")
    assert "active_incidents" in str(refused.value) and "--override-checks" in str(refused.value)
    assert [r.name for r in refused.value.results] == ["active_incidents", "canary_up"]
    view = run.view(NEW)
    assert view.steps["manual_promotion"].phase is Phase.RUNNING  # not promoted
    (checked,) = records(store, NEW, Action.CHECKED)
    assert checked["passed"] is False and checked["for"] == "promotion"
    assert incidents.contexts[0].environment == "gprd"  # the protected environment is what is checked


def test_an_override_names_the_failing_checks_with_who_why_and_until_and_lets_production_go() -> None:
    store, clock, deployer = MemoryStore(), ManualClock(), FakeDeployer()
    failing = Switch(Verdict.FAILED)
    run = runner(store, checks=(FakeCheck("active_incidents", failing), FakeCheck("canary_up")),
                 clock=clock, deployer=deployer)
    to_promotion(run, NEW)
    before = clock.now()
    run.promote(NEW, "amy", override="S1 is unrelated to this change", override_for_s=2 * 3600)
    (override,) = records(store, NEW, Action.OVERRIDDEN)
    assert override["by"] == "amy" and override["reason"] == "S1 is unrelated to this change"
    assert override["checks"] == ["active_incidents"]  # only what failed then
    assert override["until"] == pytest.approx(before + 2 * 3600)
    result = run.run(NEW)  # the bake passes (30 min): the override still covers the failing check
    assert result.stop is Stop.DONE
    assert triggered(deployer, "gprd") == [f"{NEW}/trigger_gprd/1"]
    last = run.view(NEW).checks["trigger_gprd"]
    assert last["passed"] is True and last["overridden"] == ["active_incidents"]


def test_a_check_that_fails_after_the_promotion_holds_production_until_it_passes() -> None:
    store, clock, deployer = MemoryStore(), ManualClock(), FakeDeployer()
    health = Switch()
    run = runner(store, checks=(FakeCheck("deployment_health", health),), clock=clock, deployer=deployer)
    to_promotion(run, NEW)
    run.promote(NEW, "amy")
    health.verdict = Verdict.FAILED
    run.run(NEW, max_wakeups=12)
    view = run.view(NEW)
    assert triggered(deployer, "gprd") == [] and view.steps["trigger_gprd"].phase is Phase.RUNNING
    assert "held" in str(view.steps["trigger_gprd"].last_status)
    held = [r for r in records(store, NEW, Action.CHECKED) if r["for"] == "trigger_gprd"]
    assert len(held) == 1  # said once while nothing changes, not at every look
    health.verdict = Verdict.PASSED
    assert run.run(NEW).stop is Stop.DONE
    assert triggered(deployer, "gprd") == [f"{NEW}/trigger_gprd/1"]


def test_an_override_of_a_held_deployment_lets_it_go_and_an_expired_one_does_not() -> None:
    store, clock, deployer = MemoryStore(), ManualClock(), FakeDeployer()
    run = runner(store, checks=(FakeCheck("change_requests", Switch(Verdict.FAILED)),), clock=clock,
                 deployer=deployer)
    to_promotion(run, NEW)
    run.promote(NEW, "amy", override="C2 change is on another service", override_for_s=60)
    clock.advance(120)  # the one-minute override is over before production's trigger: it is held
    run.run(NEW, max_wakeups=12)
    assert triggered(deployer, "gprd") == []
    with pytest.raises(DeploystateError, match="release manager"):
        runner(store, checks=run.checks, clock=clock, release_managers=frozenset({"amy"})).override(
            NEW, "bob", "not mine to say")
    run.override(NEW, "amy", "checked with the change's owner", for_s=3600)
    assert run.run(NEW).stop is Stop.DONE
    assert triggered(deployer, "gprd") == [f"{NEW}/trigger_gprd/1"]
    assert [o["reason"] for o in records(store, NEW, Action.OVERRIDDEN)] == [
        "C2 change is on another service", "checked with the change's owner"]


def test_a_check_that_raises_or_cannot_tell_fails_closed() -> None:
    def broken(context: CheckContext) -> Verdict:
        raise ConnectionError("connection refused")

    store = MemoryStore()
    run = runner(store, checks=(FakeCheck("deployment_health", broken),
                                FakeCheck("canary_up", lambda c: Verdict.ERROR)))
    to_promotion(run, NEW)
    with pytest.raises(ChecksRefused) as refused:
        run.promote(NEW, "amy")
    verdicts = {r.name: (r.verdict, r.detail) for r in refused.value.results}
    assert verdicts["deployment_health"][0] is Verdict.ERROR
    assert "connection refused" in verdicts["deployment_health"][1]
    assert verdicts["canary_up"][0] is Verdict.ERROR


def test_a_lock_is_never_overridden() -> None:
    store = MemoryStore()
    run = runner(store, checks=(EnvironmentLockCheck(store),))  # type: ignore[arg-type]
    to_promotion(run, NEW)
    run.lock("gprd", "sre", "database maintenance")
    with pytest.raises(ChecksRefused, match="never overridden"):
        run.promote(NEW, "amy", override="I really want to")
    assert records(store, NEW, Action.OVERRIDDEN) == []
    run.unlock("gprd", "sre")
    run.promote(NEW, "amy")
    assert run.view(NEW).steps["manual_promotion"].phase is Phase.SUCCEEDED


# -- environment locks, one deployment per environment, version order --------------------------


def test_a_locked_environment_gets_no_new_deployment_until_unlocked() -> None:
    store, deployer = MemoryStore(), FakeDeployer()
    run = runner(store, deployer=deployer)
    run.lock("gstg", "sre", "incident 123")
    run.create(NEW, SPEC)
    run.run(NEW, max_wakeups=5)
    view = run.view(NEW)
    assert triggered(deployer, "gstg") == []
    assert "locked by sre" in str(view.steps["trigger_gstg"].last_status)
    with pytest.raises(DeploystateError, match="already locked"):
        run.lock("gstg", "someone", "again")
    run.unlock("gstg", "sre")
    assert run.run(NEW).stop is Stop.PROMOTION
    assert triggered(deployer, "gstg") == [f"{NEW}/trigger_gstg/1"]


def test_two_rollouts_never_deploy_one_environment_at_once() -> None:
    store, clock = MemoryStore(), ManualClock()
    slow = FakeDeployer(lambda request, reads: Outcome.SUCCEEDED if reads > 4 else Outcome.WAITING)
    first = runner(store, deployer=slow, clock=clock)
    second = runner(store, deployer=slow, clock=clock)
    first.create(OLD, SPEC)
    second.create(NEW, SPEC)
    first.advance(OLD)  # OLD claims gstg and triggers
    second.advance(NEW)  # NEW finds gstg busy: it queues
    gstg = environment_view("gstg", store.env_read("gstg"))
    assert gstg.holder is not None and gstg.holder.rollout == OLD
    assert [q.rollout for q in gstg.queued] == [NEW]
    assert triggered(slow, "gstg") == [f"{OLD}/trigger_gstg/1"]
    assert "busy" in str(second.view(NEW).steps["trigger_gstg"].last_status)
    for _ in range(10):  # OLD's deployment ends and it goes on to canary; NEW then gets gstg
        first.advance(OLD)
        second.advance(NEW)
        clock.advance(60)
    assert triggered(slow, "gstg") == [f"{OLD}/trigger_gstg/1", f"{NEW}/trigger_gstg/1"]
    assert environment_view("gstg", store.env_read("gstg")).current is not None


def test_an_older_version_is_superseded_where_a_newer_one_already_succeeded() -> None:
    store, deployer = MemoryStore(), FakeDeployer()
    run = runner(store, deployer=deployer)
    to_promotion(run, NEW)  # NEW succeeded in gstg and gprd-cny
    run.create(OLD, SPEC)
    result = run.run(OLD)
    assert result.stop is Stop.SUPERSEDED
    assert result.view.standing.where is Where.SUPERSEDED
    assert f"{NEW} already succeeded in gstg" in result.message
    assert triggered(deployer, "gstg") == [f"{NEW}/trigger_gstg/1"]  # the older was never deployed
    (superseded,) = records(store, OLD, Action.SUPERSEDED)
    assert superseded["by_version"] == NEW and superseded["environment"] == "gstg"
    assert environment_view("gstg", store.env_read("gstg")).holds(OLD) == []  # nothing left held


def test_an_older_version_waiting_behind_a_newer_one_is_superseded_there() -> None:
    store, clock = MemoryStore(), ManualClock()
    slow = FakeDeployer(lambda request, reads: Outcome.SUCCEEDED if reads > 4 else Outcome.WAITING)
    newer, older = runner(store, deployer=slow, clock=clock), runner(store, deployer=slow, clock=clock)
    newer.create(NEW, SPEC)
    older.create(OLD, SPEC)
    newer.advance(NEW)  # NEW deploys gstg
    _, decision = older.advance(OLD)
    assert decision.stop is Stop.SUPERSEDED
    assert f"{NEW} is deploying to gstg" in older.view(OLD).standing.situation


def test_a_newer_version_waiting_behind_an_older_one_is_not_superseded() -> None:
    store, clock = MemoryStore(), ManualClock()
    slow = FakeDeployer(lambda request, reads: Outcome.SUCCEEDED if reads > 4 else Outcome.WAITING)
    older, newer = runner(store, deployer=slow, clock=clock), runner(store, deployer=slow, clock=clock)
    older.create(OLD, SPEC)
    newer.create(NEW, SPEC)
    older.advance(OLD)
    _, decision = newer.advance(NEW)
    assert decision.stop is None and newer.view(NEW).active  # it waits its turn


# -- rollbacks --------------------------------------------------------------------------------


def test_a_rollback_redeploys_an_older_version_on_purpose_with_the_rollback_variable() -> None:
    store, deployer = MemoryStore(), FakeDeployer()
    requests: list[TriggerRequest] = []
    original = deployer.trigger

    def trigger(request: TriggerRequest):
        requests.append(request)
        return original(request)

    deployer.trigger = trigger  # type: ignore[method-assign]
    incidents = FakeCheck("active_incidents", lambda c: Verdict.FAILED)  # rollbacks don't wait on it
    locks = EnvironmentLockCheck(store)
    run = runner(store, deployer=deployer, checks=(incidents, locks), auto_promote="rm")  # type: ignore[arg-type]
    run.checks = ()  # the rollouts themselves run unchecked here; the rollback runs its own
    for version in (OLD, NEW):
        run.create(version, SPEC)
        assert run.run(version).stop is Stop.DONE
    run.checks = (incidents, locks)  # type: ignore[assignment]
    with pytest.raises(DeploystateError, match="never succeeded in gprd"):
        run.rollback("gprd", NEWER, "amy", "bad", rollback_spec("gprd"))
    with pytest.raises(DeploystateError, match="already runs"):
        run.rollback("gprd", NEW, "amy", "bad", rollback_spec("gprd"))
    view = run.rollback("gprd", OLD, "amy", "NEW breaks sign-in", rollback_spec("gprd"))
    assert view.rollout_id == f"{OLD}-rollback-gprd-1" and view.rollback is not None
    assert run.run(view.rollout_id).stop is Stop.DONE
    assert requests[-1].rollback is True and requests[-1].environments == ("gprd",)
    assert not any(r.rollback for r in requests[:-1])
    gprd = environment_view("gprd", store.env_read("gprd"))
    assert gprd.current is not None and gprd.current.version == OLD and gprd.current.rollback
    (checked,) = records(store, view.rollout_id, Action.CHECKED)
    verdicts = {r["name"]: r["verdict"] for r in checked["results"]}  # type: ignore[union-attr]
    assert verdicts == {"active_incidents": "skipped", "environment_lock": "passed"}
    # The rollback does not make the environment older: a rollout of OLD is still superseded there.
    assert gprd.newest is not None and gprd.newest.version == NEW


def test_a_rollback_is_refused_while_a_deployment_runs_there() -> None:
    store, clock = MemoryStore(), ManualClock()
    slow = FakeDeployer(lambda request, reads: Outcome.SUCCEEDED if reads > 3 else Outcome.WAITING)
    run = runner(store, deployer=slow, clock=clock)
    to_promotion(run, OLD)
    other = runner(store, deployer=slow, clock=clock)
    other.create(NEW, SPEC)
    other.advance(NEW)  # NEW deploys gstg now
    with pytest.raises(DeploystateError, match="is running"):
        run.rollback("gstg", OLD, "amy", "why not", rollback_spec("gstg"))


def test_an_abort_gives_its_environments_back_at_once() -> None:
    store, clock = MemoryStore(), ManualClock()
    slow = FakeDeployer(lambda request, reads: Outcome.WAITING)
    run = runner(store, deployer=slow, clock=clock)
    run.create(NEW, SPEC)
    run.advance(NEW)
    assert environment_view("gstg", store.env_read("gstg")).holder is not None
    run.abort(NEW, "amy", "wrong package")
    gstg = environment_view("gstg", store.env_read("gstg"))
    assert gstg.holder is None and gstg.current is None  # released, and nothing succeeded there


def test_one_step_run_alone_ends_superseded_not_failed() -> None:
    store, deployer = MemoryStore(), FakeDeployer()
    run = runner(store, deployer=deployer)
    to_promotion(run, NEW)
    run.create(OLD, SPEC)
    for step in ("tag", "wait_cng", "wait_omnibus"):
        assert run.run_step(OLD, step).stop is Stop.DONE
    result = run.run_step(OLD, "trigger_gstg")  # what a CI job of the older pipeline does
    assert result.stop is Stop.SUPERSEDED and "superseded" in result.message

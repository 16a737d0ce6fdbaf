"""The runner, the report and the config, tested with the shipped in-memory doubles.

No simulator, no HTTP: a FakeDeployer whose handler says what each deployment reports, a
ManualClock that moves when slept on, and a MemoryStore.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploystate import report
from deploystate.actions import Action
from deploystate.config import Config, ConfigError, RunnerConfig, load_config
from deploystate.decide import Stop
from deploystate.doubles import FakeDeployer, FakePackages, ManualClock, RecordingNotifier, fake_backends
from deploystate.errors import DeploystateError
from deploystate.journal import MemoryStore
from deploystate.machine import Phase
from deploystate.ports import BackendError, Outcome, TriggerRequest
from deploystate.rollout import listing
from deploystate.runner import Runner
from deploystate.spec import default_spec
from deploystate.standing import Where
from deploystate.strategy import Strategy
from deploystate.waiting import WaitPolicy

VERSION = "13.10.202103011220"
SPEC = default_spec()


def runner_with(deployer: FakeDeployer | None = None, packages: FakePackages | None = None,
                **config: object) -> tuple[Runner, RecordingNotifier]:
    notices = RecordingNotifier()
    runner = Runner(MemoryStore(), fake_backends(deployer=deployer, packages=packages, clock=ManualClock()),
                    config=RunnerConfig(**config), notifier=notices)  # type: ignore[arg-type]
    runner.create(VERSION, SPEC)
    return runner, notices


def keys(deployer: FakeDeployer) -> list[str]:
    return [t.key for t in deployer.triggers()]


def test_a_whole_rollout_triggers_each_deployment_once_and_ends_done() -> None:
    deployer = FakeDeployer(lambda request, reads: Outcome.SUCCEEDED if reads >= 3 else Outcome.WAITING)
    runner, notices = runner_with(deployer, auto_promote="rm")
    result = runner.run(VERSION)
    assert result.stop is Stop.DONE and result.view.standing.where is Where.DONE
    assert sorted(keys(deployer)) == sorted(f"{VERSION}/{s.name}/1" for s in SPEC.steps if s.targets)
    assert len(notices.notices) == runner.store.last_seq(VERSION)  # one notice per record
    assert runner.store.summaries()[VERSION][1] is not None  # the listing needs no replay


def test_a_failed_deployment_stops_the_rollout_and_a_retry_is_a_new_attempt() -> None:
    failing = {"gstg": 1}

    def deployer(request: TriggerRequest, reads: int) -> Outcome:
        if request.environments == ("gstg",) and request.key.endswith("/1") and failing["gstg"]:
            return Outcome.FAILED
        return Outcome.SUCCEEDED

    fake = FakeDeployer(deployer)
    # Staging's own deployment is the real one here (under the default plan it is a dry run).
    runner, notices = runner_with(fake, auto_promote="rm", failed_watch_s=60.0,
                                  strategy=Strategy(individual_deployments=True))
    stopped = runner.run(VERSION)
    assert stopped.stop is Stop.FAILED
    assert stopped.view.standing.failed == ("trigger_gstg",)
    assert f"deploystate retry {VERSION} STEP" in stopped.message
    assert any("trigger_gstg: FAILED" in m for m in notices.messages)
    runner.retry(VERSION, "gstg", "release-manager")
    done = runner.run(VERSION)
    assert done.stop is Stop.DONE
    assert keys(fake).count(f"{VERSION}/trigger_gstg/2") == 1 and done.view.steps["trigger_gstg"].attempt == 2


def test_a_deployment_that_never_ends_times_out_at_its_limit_and_says_so() -> None:
    fake = FakeDeployer(lambda request, reads: Outcome.WAITING)
    runner, notices = runner_with(fake, deployment_wait_limit_s=3600.0, failed_watch_s=1.0)
    result = runner.run(VERSION)
    state = result.view.steps["trigger_gstg"]
    assert result.stop is Stop.FAILED and state.phase is Phase.FAILED and state.timed_out
    assert state.failed_at is not None and state.started_at is not None
    assert 3600.0 < state.failed_at - state.started_at <= 3600.0 + 600.0  # noticed at the limit, not later
    assert any("timed out: deployer pipeline" in m for m in notices.messages)


def test_package_builds_are_waited_for_until_they_exist() -> None:
    packages = FakePackages(lambda package, version, reads:
                            Outcome.SUCCEEDED if reads > 2 else Outcome.MISSING)
    runner, _ = runner_with(packages=packages, auto_promote="rm")
    assert runner.run(VERSION).stop is Stop.DONE
    assert set(packages.reads.values()) == {3}


def test_the_promotion_gate_waits_for_a_person() -> None:
    runner, _ = runner_with()
    gate = runner.run(VERSION)
    assert gate.stop is Stop.PROMOTION and gate.view.standing.where is Where.WAITING
    assert f"deploystate promote {VERSION} --by YOU" in gate.message
    with pytest.raises(DeploystateError, match="no bake running"):  # the bake already ended
        runner.skip_bake(VERSION, "alice", "incident")
    runner.promote(VERSION, "alice", "checks green")
    done = runner.run(VERSION)
    assert done.stop is Stop.DONE
    assert done.view.steps["manual_promotion"].closed_by == "alice"


def test_a_transient_error_is_announced_and_tried_again() -> None:
    calls = {"n": 0}

    def deployer(request: TriggerRequest, reads: int) -> Outcome:
        calls["n"] += 1
        if calls["n"] == 1:
            raise BackendError("502 Bad Gateway", transient=True)
        return Outcome.SUCCEEDED

    runner, notices = runner_with(FakeDeployer(deployer), auto_promote="rm")
    assert runner.run(VERSION).stop is Stop.DONE
    assert any("502 Bad Gateway (will try again)" in m for m in notices.messages)


def test_one_named_step_is_advanced_alone() -> None:
    fake = FakeDeployer()
    runner, _ = runner_with(fake)
    early = runner.run_step(VERSION, "trigger_gstg")
    assert early.stop is Stop.FAILED and "needs wait_cng, wait_omnibus" in early.message
    for step in ("tag", "wait_cng", "wait_omnibus", "trigger_gstg"):
        assert runner.run_step(VERSION, step).stop is Stop.DONE, step
    view = runner.view(VERSION)
    assert view.steps["trigger_gstg"].phase is Phase.SUCCEEDED
    assert view.steps["trigger_complete_deployment"].phase is Phase.PENDING  # left alone
    assert keys(fake) == [f"{VERSION}/trigger_gstg/1"]
    assert runner.run_step(VERSION, "trigger_cny").stop is Stop.DONE
    assert runner.run_step(VERSION, "manual_promotion").stop is Stop.PROMOTION
    with pytest.raises(DeploystateError):
        runner.run_step(VERSION, "no_such_step")


def test_the_report_reads_the_model() -> None:
    runner, _ = runner_with()
    gate = runner.run(VERSION)
    text = report.status_text(gate.view)
    assert f"rollout {VERSION}: waiting for promotion" in text
    assert "waiting for a release manager" in text and f"deploystate promote {VERSION}" in text
    data = report.summary_data(gate.view, stop=gate.stop, message=gate.message)
    assert data["situation"] == "waiting for promotion" and data["records"] == gate.view.seq
    rows = listing(runner.store)
    assert [r["situation"] for r in rows] == ["waiting for promotion"]
    assert "waiting for promotion" in report.list_text(rows)


def test_the_history_keeps_every_record_in_order() -> None:
    runner, _ = runner_with(auto_promote="rm")
    runner.run(VERSION)
    records = runner.store.read(VERSION)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert records[0].action == Action.CREATED and records[-1].action == Action.FINISH
    assert report.history_text(records).count("\n") == len(records) + 1


def test_config_defaults_are_the_runners_own(tmp_path: Path) -> None:
    assert load_config(env={}).runner == RunnerConfig() == Config().runner
    file = tmp_path / "deploystate.toml"
    file.write_text('[limits]\ndeployment_wait_minutes = 90\n[waiting]\nmin_interval_seconds = 5\n'
                    '[deploystate]\nactor = "bot"\n', encoding="utf-8")
    config = load_config(file, env={})
    assert config.runner.deployment_wait_limit_s == 5400.0 and config.runner.actor == "bot"
    assert config.runner.wait_policy == WaitPolicy(min_interval_s=5.0)
    assert config.runner.package_wait_limit_s == RunnerConfig().package_wait_limit_s
    assert config.runner_config(auto_promote="sim").auto_promote == "sim"


def test_config_refuses_an_unknown_key(tmp_path: Path) -> None:
    file = tmp_path / "deploystate.toml"
    file.write_text("[limits]\nbake_minutes = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key 'bake_minutes'"):
        load_config(file, env={})


def test_backends_are_closed_by_with() -> None:
    closed: list[bool] = []
    with fake_backends(closer=lambda: closed.append(True)) as backends:
        assert backends.deployer is not None and not closed
    assert closed == [True]


def test_the_public_api_names_what_it_exports() -> None:
    import deploystate

    for name in deploystate.__all__:
        assert getattr(deploystate, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        deploystate.nothing_here  # noqa: B018


def test_a_deployment_blocked_on_a_manual_job_is_announced_once_and_waited_for() -> None:
    fake = FakeDeployer(lambda request, reads: Outcome.SUCCEEDED if reads > 4 else Outcome.BLOCKED)
    runner, notices = runner_with(fake, auto_promote="rm")
    assert runner.run(VERSION).stop is Stop.DONE
    blocked = [m for m in notices.messages
               if m.startswith("trigger_gstg: blocked on a manual job in pipeline")]
    assert len(blocked) == 1, notices.messages


def test_a_pipeline_retried_by_hand_after_the_watch_window_is_picked_up_by_the_next_run() -> None:
    retried = {"gstg": False}

    def deployer(request: TriggerRequest, reads: int) -> Outcome:
        if request.environments == ("gstg",) and not retried["gstg"]:
            return Outcome.FAILED
        return Outcome.SUCCEEDED

    fake = FakeDeployer(deployer)
    runner, notices = runner_with(fake, auto_promote="rm", failed_watch_s=60.0,
                                  strategy=Strategy(individual_deployments=True))
    assert runner.run(VERSION).stop is Stop.FAILED
    runner.backends.clock.advance(6 * 3600)  # type: ignore[attr-defined]  # long after the watch
    assert runner.run(VERSION).stop is Stop.FAILED  # still failed out there: looked at once more
    retried["gstg"] = True  # a person retried its job in the deployer's UI; it passed
    result = runner.run(VERSION)
    assert result.stop is Stop.DONE
    assert result.view.steps["trigger_gstg"].attempt == 1 and len(keys(fake)) == 4  # no new attempt
    assert "trigger_gstg: running again (the downstream pipeline was retried)" in notices.messages

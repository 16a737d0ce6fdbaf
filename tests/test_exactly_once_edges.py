"""Exactly-once at the edges of one journal: its backend, a lost journal, retries and aborts of
running deployments, people's writes while a runner sleeps, and guards a cache could hide."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from deploystate_backends.simulated import World

from deploystate import operator
from deploystate.actions import Action
from deploystate.clock import SystemClock
from deploystate.config import RunnerConfig
from deploystate.decide import Stop
from deploystate.doubles import FakeDeployer, ManualClock, RecordingNotifier, fake_backends
from deploystate.errors import DeploystateError, EventRefused
from deploystate.journal import MemoryStore
from deploystate.machine import Phase, RolloutMachine
from deploystate.ports import BackendError, Deployment, Outcome, TriggerRequest
from deploystate.rollout import rebuild
from deploystate.runner import Runner
from deploystate.simulation import world_beside
from deploystate.spec import default_spec
from deploystate.sqlite_store import SQLiteStore

VERSION = "13.10.202103011220"
SPEC = default_spec()
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_STORE", "DEPLOYSTATE_SPEC",
                "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", "DEPLOYSTATE_KILL_AT")


def ds(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    return subprocess.run([sys.executable, "-m", "deploystate", *args], capture_output=True, text=True,
                          timeout=180, check=False, cwd=cwd, env=env)


def records_of(path: Path) -> list[Any]:
    with SQLiteStore(path) as store:
        return [r.as_dict() for r in store.read(VERSION)]


# -- 1. a journal belongs to one backend -----------------------------------------------------------


def test_a_simulation_refuses_a_rollout_another_backend_made(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    with SQLiteStore(journal) as store:
        runner = Runner(store, fake_backends(identity="gitlab https://gitlab.example deployer project 1"))
        runner.create(VERSION, SPEC)
        assert runner.run(VERSION).stop is Stop.PROMOTION  # waiting at the gate, as in the report
    before = records_of(journal)
    simulated = ds("simulate", VERSION, "--store", str(journal), cwd=tmp_path)
    assert simulated.returncode == 2, simulated.stderr
    assert ("belongs to 'gitlab https://gitlab.example deployer project 1', but this command uses "
            "'simulated world journal.sqlite.sim'; nothing was written") in simulated.stderr
    assert records_of(journal) == before


def test_another_backend_refuses_a_simulated_rollout(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    made = ds("simulate", VERSION, "--no-auto-promote", "--store", str(journal), cwd=tmp_path)
    assert made.returncode == 1 and "waiting for promotion" in made.stdout, made.stderr
    before = records_of(journal)
    with SQLiteStore(journal) as store:
        runner = Runner(store, fake_backends(identity="gitlab https://gitlab.example deployer project 1"))
        for act in (lambda: runner.run(VERSION), lambda: runner.promote(VERSION, "alice"),
                    lambda: runner.abort(VERSION, "alice", "no")):
            with pytest.raises(DeploystateError, match=r"belongs to 'simulated world journal\.sqlite\.sim'"):
                act()
    assert records_of(journal) == before


# -- 3. a lost or recreated journal must not redeploy ------------------------------------------------


def test_a_journal_lost_and_started_again_redeploys_nothing(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    for attempt in range(2):
        started = ds("start", VERSION, "--store", str(journal), cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        ran = ds("run", VERSION, "--store", str(journal), cwd=tmp_path)
        assert ran.returncode == 1 and "waiting for promotion" in ran.stdout, ran.stderr
        if attempt == 0:
            journal.unlink()  # lost; the deployer (the simulated world beside it) remembers
    with World.open(world_beside(journal), create=False) as world:
        keys = Counter(t.key for t in world.triggers())
    assert len(keys) == 3 and set(keys.values()) == {1}, keys  # staging, legacy, canary: once each
    with SQLiteStore(journal) as store:
        view = rebuild(store.read(VERSION))
    assert all(view.steps[s].deployment_id for s in ("trigger_gstg", "trigger_cny"))


# -- 4. retry and abort of deployments that still run ------------------------------------------------


def forever(request: TriggerRequest, reads: int) -> Outcome:
    return Outcome.WAITING


def timed_out_runner(**options: Any) -> tuple[Runner, FakeDeployer, RecordingNotifier]:
    fake = FakeDeployer(forever)
    notices = RecordingNotifier()
    runner = Runner(MemoryStore(), fake_backends(deployer=fake, clock=ManualClock(), **options),
                    config=RunnerConfig(deployment_wait_limit_s=3600.0, failed_watch_s=7200.0),
                    notifier=notices)
    runner.create(VERSION, SPEC)
    return runner, fake, notices


def test_a_timed_out_step_still_running_outside_is_not_resumed() -> None:
    runner, _, _ = timed_out_runner()
    result = runner.run(VERSION)  # watched for two hours after the time-out: always still running
    assert result.stop is Stop.FAILED
    actions = [(r.action, r.step) for r in runner.store.read(VERSION)]
    assert (Action.FAIL, "trigger_gstg") in actions and (Action.RESUME, "trigger_gstg") not in actions


def test_retry_of_a_step_whose_pipeline_still_runs_is_refused_unless_it_is_canceled() -> None:
    runner, fake, notices = timed_out_runner()
    runner.run(VERSION)
    before = len(runner.store.read(VERSION))
    with pytest.raises(DeploystateError, match=r"trigger_gstg's last pipeline 1 is still running; a new "
                                               r"attempt now would deploy beside it.*--cancel-running"):
        runner.retry(VERSION, "gstg", "alice")
    assert len(runner.store.read(VERSION)) == before and not fake.triggers()[0].canceled
    after = runner.retry(VERSION, "gstg", "alice", cancel_running=True)
    assert fake.triggers()[0].canceled and after.steps["trigger_gstg"].phase is Phase.PENDING
    tail = [(r.action, r.step, r.data.get("deployment_id")) for r in runner.store.read(VERSION)[before:]]
    assert tail == [(Action.CANCELED, "trigger_gstg", "1"), (Action.RETRY, "trigger_gstg", None)]
    assert "trigger_gstg: deployer pipeline 1 canceled by alice (canceled)" in notices.messages


def test_abort_cancels_the_running_deployments_unless_asked_to_leave_them() -> None:
    runner, fake, _ = timed_out_runner()
    assert runner.run(VERSION, max_wakeups=1).stop is Stop.PAUSED  # staging and legacy running
    runner.abort(VERSION, "alice", "incident 77")
    canceled = [r.data["deployment_id"] for r in runner.store.read(VERSION) if r.action == Action.CANCELED]
    assert sorted(canceled) == ["1", "2"] and all(t.canceled for t in fake.triggers())

    left, fake_left, _ = timed_out_runner()
    left.run(VERSION, max_wakeups=1)
    left.abort(VERSION, "alice", "leave them", leave_running=True)
    assert not any(t.canceled for t in fake_left.triggers())
    assert not [r for r in left.store.read(VERSION) if r.action == Action.CANCELED]


def test_a_cancel_that_fails_is_announced_as_an_error() -> None:
    runner, fake, notices = timed_out_runner()
    runner.run(VERSION, max_wakeups=1)

    def refuse(deployment_id: str) -> Deployment:
        raise BackendError("403 Forbidden", transient=False)

    fake.cancel = refuse  # type: ignore[method-assign]
    runner.abort(VERSION, "alice", "incident")
    errors = [n for n in notices.notices
              if n.severity == "error" and "could not cancel pipeline" in n.message]
    assert len(errors) == 2 and "cancel it in the deployer" in errors[0].message


# -- 5. a sleeping runner notices people's writes ----------------------------------------------------


def test_a_sleeping_runner_notices_a_skipped_bake_at_once(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    clock = SystemClock()
    with SQLiteStore(journal) as store:
        runner = Runner(store, fake_backends(clock=clock), config=RunnerConfig(auto_promote="rm"))
        runner.create(VERSION, SPEC)  # its bake lasts 30 minutes of real time
        results: list[Any] = []
        thread = threading.Thread(target=lambda: results.append(runner.run(VERSION)), daemon=True)
        thread.start()
        try:
            with SQLiteStore(journal) as other:
                person = Runner(other, fake_backends(clock=SystemClock()))
                for _ in range(200):
                    if person.view(VERSION).steps["baking_time"].phase is Phase.RUNNING:
                        break
                    threading.Event().wait(0.05)
                person.skip_bake(VERSION, "alice", "incident over, canary healthy")
            thread.join(30)  # without the journal watch it would sleep for the 30-minute bake
        finally:
            clock.wake()
        assert results and results[0].stop is Stop.DONE


# -- 15. guards a learnt cache could hide ------------------------------------------------------------


GUARDED = [
    ("bake", Action.SUCCEED, "baking_time", {"elapsed_s": 10**6}, {"elapsed_s": 1}),
    ("promotion", Action.SUCCEED, "manual_promotion", {"by": "alice"}, {}),
    ("skip", Action.SKIP, "baking_time", {"by": "alice", "reason": "incident"}, {"by": "alice"}),
    ("abort", Action.ABORT, None, {"reason": "wrong tag"}, {}),
]


@pytest.mark.parametrize(("name", "action", "step", "good", "bad"), GUARDED, ids=[g[0] for g in GUARDED])
def test_every_data_guard_holds_on_a_second_rollout(name: str, action: Action, step: str | None,
                                                    good: dict[str, Any], bad: dict[str, Any]) -> None:
    machine = RolloutMachine(SPEC)
    first, second = machine.new("first"), machine.new("second")
    order = ["tag", "wait_cng", "wait_omnibus", "trigger_gstg", "trigger_complete_deployment",
             "trigger_cny"]
    for rollout in (first, second):
        for name_ in order:
            machine.fire(rollout, Action.START, name_)
            machine.fire(rollout, Action.SUCCEED, name_)
        machine.fire(rollout, Action.START, "baking_time")
        machine.fire(rollout, Action.START, "manual_promotion")
    machine.fire(first, action, step, **good)  # teaches the cache this path
    state = list(second.state)
    with pytest.raises(EventRefused):
        machine.fire(second, action, step, **bad)
    assert second.state == state


def test_an_operator_command_the_machine_refuses_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = Runner(MemoryStore(), fake_backends(), config=RunnerConfig(auto_promote="rm"))
    runner.create(VERSION, SPEC)
    assert runner.run(VERSION).stop is Stop.DONE
    before = runner.store.read(VERSION)
    with pytest.raises(DeploystateError, match="already done"):
        runner.abort(VERSION, "alice", "too late")
    # Even without the operator's own check, the machine refuses it before anything is written.
    monkeypatch.setattr(operator, "abort", lambda view, by, reason, now, leave_running=False: [
        operator.Entry(Action.ABORT.value, now, by, None, {"by": by, "reason": reason})])
    with pytest.raises(DeploystateError, match="refused in state done"):
        runner.abort(VERSION, "alice", "too late")
    assert runner.store.read(VERSION) == before
    assert rebuild(runner.store.read(VERSION)).status == "done"



def test_the_command_line_refuses_a_retry_beside_a_running_pipeline_and_cancels_on_request(
        tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    hung = ds("simulate", VERSION, "--hang", "gstg", "--store", str(journal), cwd=tmp_path)
    assert hung.returncode == 1, hung.stderr  # timed out, its pipeline still running out there
    before = records_of(journal)
    refused = ds("retry", VERSION, "gstg", "--by", "alice", "--store", str(journal), cwd=tmp_path)
    assert refused.returncode == 2 and "is still running; a new attempt now would deploy" in refused.stderr
    assert records_of(journal) == before
    retried = ds("retry", VERSION, "gstg", "--cancel-running", "--by", "alice", "--store", str(journal),
                 cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert "trigger_gstg: deployer pipeline 1 canceled by alice" in retried.stdout
    aborted = ds("abort", VERSION, "--reason", "enough", "--leave-running", "--by", "alice", "--store",
                 str(journal), cwd=tmp_path)
    assert aborted.returncode == 0 and "canceled" not in aborted.stdout, aborted.stdout
    with World.open(world_beside(journal), create=False) as world:
        assert [t.key for t in world.triggers()].count(f"{VERSION}/trigger_gstg/1") == 1

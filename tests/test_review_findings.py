"""Findings of a hostile review of the redesign (54575cc..HEAD): each test fails until its bug is fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploystate import MemoryStore, Runner, RunnerConfig, SQLiteStore, default_spec, rebuild
from deploystate.cli import main
from deploystate.doubles import FakeDeployer, ManualClock, fake_backends
from deploystate.errors import DeploystateError
from deploystate.journal import Entry
from deploystate.ports import BackendError, Deployment, Outcome, TriggerRequest
from deploystate.runner import Stop
from deploystate.simulation import world_beside
from deploystate.strategy import Strategy

VERSION = "13.10.202103011220"


class _AbortDuringTrigger(FakeDeployer):
    """A deployer whose first trigger is accepted while an operator aborts the rollout."""

    operator: Runner | None = None

    def trigger(self, request: TriggerRequest) -> Deployment:
        made = super().trigger(request)
        if len(self.triggers()) == 1 and self.operator is not None:
            self.operator.abort(VERSION, "ops", "incident")
        return made


def test_a_trigger_accepted_while_the_rollout_is_aborted_is_canceled() -> None:
    # The abort ran while the trigger was in flight: it could not cancel a deployment the journal
    # did not know yet.  The runner records 'triggered' after the abort, and then nobody cancels
    # it: the deployment runs on, although the abort (without --leave-running) promised to stop it.
    store = MemoryStore()
    deployer = _AbortDuringTrigger(lambda request, reads: Outcome.WAITING)
    backends = fake_backends(deployer=deployer, clock=ManualClock())
    runner = Runner(store, backends, config=RunnerConfig(auto_promote="rm"))
    deployer.operator = Runner(store, backends, config=RunnerConfig(auto_promote="rm"))
    runner.create(VERSION, default_spec())
    result = runner.run(VERSION)
    assert result.view.status == "aborted"
    [made] = deployer.triggers()
    assert made.canceled, "a deployment triggered as the rollout was aborted is left running"
    assert any(r.action == "canceled" and r.step == made.request.key.split("/")[1]
               for r in store.read(VERSION))


def _as_old_journal(store: MemoryStore, rollout_id: str) -> MemoryStore:
    """A copy of ``store`` whose 'created' record lacks 'belongs_to' and 'deploys', as every
    rollout created before those settings existed (it kept only 'backend', the description)."""
    old = MemoryStore()
    for record in store.read(rollout_id):
        data = {k: v for k, v in record.data.items() if k not in ("belongs_to", "deploys")}
        old.append(rollout_id, record.seq - 1, [Entry(record.action, record.at, record.actor, record.step,
                                                      data)])
    return old


def test_a_rollout_created_before_belongs_to_is_not_driven_by_another_backend() -> None:
    # An old simulated rollout recorded its backend only as a description.  A real backend then
    # drives it without a word (the check passes when 'belongs_to' is missing), and deploys for
    # real what was only ever simulated.
    simulated = fake_backends(description="simulated deployer and package builds on a virtual clock "
                                          "(seed 0, world j.sqlite.sim); nothing is ever deployed",
                              identity="simulated world j.sqlite.sim", deploys=False)
    made = MemoryStore()
    Runner(made, simulated).create(VERSION, default_spec())
    old = _as_old_journal(made, VERSION)
    real_deployer = FakeDeployer()
    real = fake_backends(deployer=real_deployer, description="gitlab https://gitlab.example.com deployer 1",
                         identity="gitlab https://gitlab.example.com deployer project 1")
    with pytest.raises(DeploystateError, match="belongs to"):
        Runner(old, real, config=RunnerConfig(auto_promote="rm")).run(VERSION)
    assert real_deployer.triggers() == []
    assert old.last_seq(VERSION) == 1


def test_a_simulated_rollout_created_before_deploys_is_not_said_to_deploy() -> None:
    # Its 'created' record says 'nothing is ever deployed' in its backend description; the view
    # takes the missing 'deploys' for True, so status and notices call the simulated real path REAL.
    simulated = fake_backends(description="simulated deployer and package builds on a virtual clock "
                                          "(seed 0, world j.sqlite.sim); nothing is ever deployed",
                              deploys=False)
    made = MemoryStore()
    Runner(made, simulated).create(VERSION, default_spec())
    view = rebuild(_as_old_journal(made, VERSION).read(VERSION))
    assert view.deploys is False


def test_a_journal_reached_through_a_symbolic_link_is_run_against_its_own_simulated_world(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The world was looked for beside the link (sub/journal.sqlite.sim), a new empty one, and the
    # identity (the world's file name) matched: the rollout went on in another world, whose
    # pipeline numbers start at 1 again and whose clock is hours behind the journal's.
    monkeypatch.chdir(tmp_path)
    assert main(["start", VERSION, "--store", "journal.sqlite"]) == 0
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "journal.sqlite").symlink_to("../journal.sqlite")
    (tmp_path / "link.sqlite").symlink_to("journal.sqlite")
    monkeypatch.chdir(sub)
    assert main(["run", VERSION, "--store", "journal.sqlite"]) == 1  # waits for promotion
    assert not (sub / "journal.sqlite.sim").exists(), "a second simulated world was made beside the link"
    monkeypatch.chdir(tmp_path)
    assert main(["promote", VERSION, "--by", "rm", "--store", "link.sqlite"]) == 0
    assert main(["run", VERSION, "--store", "link.sqlite"]) == 0
    capsys.readouterr()
    with SQLiteStore(tmp_path / "journal.sqlite") as store:
        ids = [r.data["deployment_id"] for r in store.read(VERSION) if r.action == "triggered"]
    assert len(ids) == len(set(ids)) == 4, ids


def test_world_beside_keeps_a_world_made_beside_a_link_by_an_older_deploystate(tmp_path: Path) -> None:
    (tmp_path / "journal.sqlite").touch()
    (tmp_path / "link.sqlite").symlink_to("journal.sqlite")
    assert world_beside(tmp_path / "link.sqlite") == tmp_path / "journal.sqlite.sim"
    (tmp_path / "link.sqlite.sim").touch()  # the rollout was made through the link: its world is there
    assert world_beside(tmp_path / "link.sqlite") == tmp_path / "link.sqlite.sim"


def test_a_plan_refused_at_start_makes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Refused ("nothing would really deploy", exit 2, "nothing written"), yet the journal, its
    # structured log and a simulated world were made.
    monkeypatch.chdir(tmp_path)
    assert main(["start", VERSION, "--spec", "reordered"]) == 2
    assert "nothing would really deploy" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_runner_triggers_each_step_as_the_rollouts_recorded_plan_says() -> None:
    # The plan is recorded at 'create' (here: individual deployments real, the legacy one a dry
    # run), and the machine, the standing and the notices follow it.  But 'start' records took ref
    # and check mode from the runner's own settings: a runner built with today's settings (the
    # default plan) triggered the legacy all-environments deployment for REAL on master, gprd
    # included, past deploystate's bake and promotion, in a rollout whose plan says it is a dry run.
    store = MemoryStore()
    deployer = FakeDeployer()
    backends = fake_backends(deployer=deployer, clock=ManualClock())
    created_with = RunnerConfig(strategy=Strategy(individual_deployments=True), auto_promote="rm")
    Runner(store, backends, config=created_with).create(VERSION, default_spec())
    Runner(store, backends, config=RunnerConfig(auto_promote="rm")).run(VERSION)
    legacy = [t.request for t in deployer.triggers() if "trigger_complete_deployment" in t.key]
    assert legacy and all(r.check_mode and r.ref == "next-gen" for r in legacy), legacy
    gprd = [t.request for t in deployer.triggers() if "trigger_gprd" in t.key]
    assert gprd and all(not r.check_mode and r.ref == "master" for r in gprd), gprd


class _LostAnswer(FakeDeployer):
    """A deployer that makes the first pipeline but whose answer is lost (a time-out)."""

    def trigger(self, request: TriggerRequest) -> Deployment:
        made = super().trigger(request)
        if len(self.triggers()) == 1:
            raise BackendError("read timed out", transient=True)
        return made


def test_an_abort_during_a_trigger_in_doubt_cancels_the_pipeline_it_made() -> None:
    # The trigger's answer was lost; the runner waits trigger_doubt_s to look its key up.  An abort
    # meanwhile cancels only deployments the journal knows, and after it nobody looks the key up:
    # the pipeline the deployer did make deploys on, unknown to the journal and never canceled.
    store = MemoryStore()
    deployer = _LostAnswer(lambda request, reads: Outcome.WAITING)
    backends = fake_backends(deployer=deployer, clock=ManualClock())
    runner = Runner(store, backends, config=RunnerConfig(auto_promote="rm"))
    runner.create(VERSION, default_spec())
    assert runner.run(VERSION, max_wakeups=0).stop is Stop.PAUSED
    assert any(r.data.get("trigger_in_doubt") for r in store.read(VERSION))
    runner.abort(VERSION, "ops", "incident")
    runner.run(VERSION)
    lost = deployer.triggers()[0]
    assert all(t.canceled for t in deployer.triggers() if t is not lost)  # those the journal knew
    assert lost.canceled, "the pipeline of a trigger in doubt is left deploying after the abort"


def test_a_pipeline_retried_in_the_deployer_is_not_timed_out_for_the_time_before_its_retry() -> None:
    # The legacy deployment's pipeline fails after 5 h; a person retries its job in GitLab half an
    # hour later and it runs for another hour.  The resumed step is still timed from its first
    # start: at 6 h it is failed "timed out: still running after 360 min", announced to the
    # release managers, although its retry has run for 30 minutes.
    clock = ManualClock()
    t0 = clock.now()

    def deployer(request: TriggerRequest, reads: int) -> Outcome:
        if "trigger_complete_deployment" not in request.key:
            return Outcome.SUCCEEDED
        elapsed = clock.now() - t0
        if elapsed < 5 * 3600:
            return Outcome.WAITING
        if elapsed < 5.5 * 3600:
            return Outcome.FAILED
        return Outcome.WAITING if elapsed < 6.5 * 3600 else Outcome.SUCCEEDED

    store = MemoryStore()
    backends = fake_backends(deployer=FakeDeployer(deployer), clock=clock)
    runner = Runner(store, backends, config=RunnerConfig(auto_promote="rm"))
    runner.create(VERSION, default_spec())
    result = runner.run(VERSION)
    records = store.read(VERSION)
    assert any(r.action == "resume" and r.step == "trigger_complete_deployment" for r in records)
    timed_out = [r.data["reason"] for r in records if r.action == "fail" and r.data.get("timed_out")]
    assert timed_out == [], timed_out
    assert result.stop is Stop.DONE


class _ForgetfulDeployer(FakeDeployer):
    """A deployer whose pipelines can be deleted (GitLab answers 404 for them from then on)."""

    deleted: bool = False

    def status(self, deployment_id: str) -> Deployment:
        if self.deleted:
            # A deployer says a deployment does not exist with `gone` (GitLab's 404 does).
            raise BackendError(f"404 Not found: pipeline {deployment_id}", transient=False, gone=True)
        return super().status(deployment_id)


def test_a_failed_step_whose_pipeline_is_gone_can_be_retried() -> None:
    # 'retry' first asks whether the last pipeline still runs; a pipeline that no longer exists
    # (deleted, or the deployer says 404) refuses the retry with "try again", for ever: the only
    # way on is to abort the rollout.  A pipeline that is gone runs nothing.
    def deployer(request: TriggerRequest, reads: int) -> Outcome:
        return Outcome.FAILED if "trigger_complete_deployment" in request.key else Outcome.SUCCEEDED

    store = MemoryStore()
    fake = _ForgetfulDeployer(deployer)
    backends = fake_backends(deployer=fake, clock=ManualClock())
    runner = Runner(store, backends, config=RunnerConfig(auto_promote="rm"))
    runner.create(VERSION, default_spec())
    assert runner.run(VERSION).stop is Stop.FAILED
    fake.deleted = True
    view = runner.retry(VERSION, "trigger_complete_deployment", "rm")
    assert view.steps["trigger_complete_deployment"].phase.value == "pending"


def test_gitlab_says_a_404_is_gone_and_nothing_else_is() -> None:
    from deploystate_backends.gitlab.client import GitLabApiError

    assert GitLabApiError("pipeline 2: not found (404)", transient=False, status=404).gone
    assert not GitLabApiError("forbidden (403)", transient=False, status=403).gone

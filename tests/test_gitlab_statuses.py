"""GitLab's pipeline statuses as a rollout reads them, grouped as GitLab's own ``has_status.rb`` does.

``manual`` and ``scheduled`` mean the pipeline waits for a person (or a time), not that it failed:
the rollout says so once and keeps waiting within the deployment's limit.  ``canceling`` is on its
way to ``canceled``; ``waiting_for_callback`` is waiting.  Checked through the stand-in, whose
pipelines really pass through those statuses (a blocking manual job, a delayed job, jobs that take
time to stop, a job waiting for its callback).
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from deploystate_backends.gitlab.statuses import outcome
from deploystate_backends.gitlab_standin import (
    DEFAULT_PROJECTS,
    DEPLOYER,
    JobSpec,
    Script,
    Standin,
    VirtualClock,
    World,
    seed_package_builds,
)
from deploystate_backends.gitlab_standin.specs import KNOWN_STATUSES
from standin_fixtures import make_client
from test_gitlab_backend import backends_for, request
from test_gitlab_rollouts import SPEC, VERSION, Notices, records_of, runner_for

from deploystate.actions import Action
from deploystate.ports import Notice, Outcome
from deploystate.runner import Stop
from deploystate.strategy import Strategy

# GitLab's has_status.rb: ACTIVE_STATUSES, BLOCKED_STATUS, COMPLETED_STATUSES and friends.
GROUPS = {
    "created": Outcome.WAITING, "waiting_for_resource": Outcome.WAITING, "preparing": Outcome.WAITING,
    "pending": Outcome.WAITING, "running": Outcome.WAITING, "canceling": Outcome.WAITING,
    "waiting_for_callback": Outcome.WAITING,
    "manual": Outcome.BLOCKED, "scheduled": Outcome.BLOCKED,
    "success": Outcome.SUCCEEDED,
    "failed": Outcome.FAILED, "canceled": Outcome.FAILED, "skipped": Outcome.FAILED,
}


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_every_status_gitlab_documents_has_its_meaning() -> None:
    assert set(GROUPS) == KNOWN_STATUSES
    assert {status: outcome(status) for status in GROUPS} == GROUPS
    assert outcome("deploying_on_mars") is Outcome.UNKNOWN  # one nobody knows yet stays unknown


def gated(*jobs: JobSpec) -> World:
    """The default projects, with the deployer's pipeline template given ``jobs`` added before deploy."""
    template = (DEPLOYER.jobs[0], *jobs, *DEPLOYER.jobs[1:])
    projects = [attrs.evolve(p, jobs=template) if p is DEPLOYER else p for p in DEFAULT_PROJECTS]
    return World(projects, clock=VirtualClock())


# Staging's deployer pipeline waits for a person to play "approve" (GitLab: a blocking manual job,
# `when: manual` without allow_failure, under `rules: if: $DEPLOY_ENVIRONMENT == "gstg"`).
APPROVE_GSTG = JobSpec("approve", "approve", when="manual", environments={"gstg"})


def play(standin: Standin, pipeline_id: int, job_name: str) -> None:
    """What a release manager does in GitLab's UI: play the pipeline's waiting job."""
    project = make_client(standin).projects.get(DEPLOYER.path, lazy=True)
    jobs = project.pipelines.get(pipeline_id, lazy=True).jobs.list(get_all=True)
    [waiting] = [j for j in jobs if j.name == job_name and j.status in ("manual", "scheduled")]
    project.jobs.get(waiting.id, lazy=True).play()


def blocked_records(records: list[Any]) -> list[Any]:
    return [r for r in records_of(records, Action.OBSERVED) if "blocked on" in str(r.data.get("message"))]


def test_a_manual_pipeline_is_announced_once_and_moves_on_once_played(standin_factory) -> None:
    standin = standin_factory(gated(APPROVE_GSTG))
    seed_package_builds(standin.world, VERSION)
    played: list[int] = []

    class ReleaseManager(Notices):
        """Reads the notice, takes twenty minutes, then plays the job in GitLab."""

        def notify(self, notice: Notice) -> None:
            super().notify(notice)
            if "blocked on a manual job" in notice.message and notice.step == "trigger_gstg":
                standin.world.advance(20 * 60)
                [pipeline] = [p for p in standin.world.pipelines(DEPLOYER) if p.environment == "gstg"]
                pipeline_id = pipeline.id
                play(standin, pipeline_id, "approve")
                played.append(pipeline_id)

    notices = ReleaseManager()
    runner = runner_for(standin, notifier=notices, auto_promote="release-manager", failed_watch_s=600)
    runner.create(VERSION, SPEC)

    result = runner.run(VERSION)

    assert result.stop is Stop.DONE, result.message
    records = runner.store.read(VERSION)
    [triggered] = records_of(records, Action.TRIGGERED, "trigger_gstg")
    pipeline_id = str(triggered.data["deployment_id"])
    [blocked] = blocked_records(records)
    assert (blocked.step, blocked.data["status"]) == ("trigger_gstg", "manual")
    assert blocked.data["message"] == (f"blocked on a manual job in pipeline {pipeline_id}; a person must "
                                       "play it. Still waiting, within the limit of 360 min")
    assert played == [int(pipeline_id)]
    # One notice, to the people watching: nothing repeated while the pipeline stayed manual.
    assert [(n.step, n.action) for n in notices.seen if "blocked" in n.message] == [
        ("trigger_gstg", Action.OBSERVED.value)]
    assert not records_of(records, Action.FAIL)  # never failed on the way
    pipeline = standin.world.pipeline(int(pipeline_id))
    assert pipeline is not None and pipeline.status == "success"
    assert {j.name: j.status for j in pipeline.latest_jobs()}["approve"] == "success"


def test_a_pipeline_left_manual_past_the_limit_times_out(standin_factory) -> None:
    standin = standin_factory(gated(APPROVE_GSTG))
    seed_package_builds(standin.world, VERSION)
    notices = Notices()
    # Staging's own deployment is the real one here (under the default plan it would be a dry run).
    runner = runner_for(standin, notifier=notices, deployment_wait_limit_s=3600, failed_watch_s=600,
                        strategy=Strategy(individual_deployments=True, check_mode_everywhere=True))
    runner.create(VERSION, SPEC)

    result = runner.run(VERSION)  # nobody plays the job

    assert result.stop is Stop.FAILED
    records = runner.store.read(VERSION)
    [triggered] = records_of(records, Action.TRIGGERED, "trigger_gstg")
    pipeline_id = triggered.data["deployment_id"]
    [blocked] = blocked_records(records)
    [failed] = records_of(records, Action.FAIL, "trigger_gstg")
    assert failed.data["timed_out"] is True and failed.data["status"] == "manual"
    assert failed.data["reason"] == f"timed out: deployer pipeline {pipeline_id} still manual after 60 min"
    assert failed.at - triggered.at >= 3600 > blocked.at - triggered.at  # waited the hour, said so at once
    assert sum("blocked" in n.message for n in notices.seen) == 1
    assert any(n.severity == "error" and "still manual" in n.message for n in notices.seen)
    assert "trigger_cny" not in {r.step for r in records_of(records, Action.START)}


def test_a_delayed_job_is_blocked_until_its_time_then_runs(standin_factory) -> None:
    standin = standin_factory(gated(JobSpec("wait", "wait", when="delayed", start_in_s=1800)))
    seed_package_builds(standin.world, VERSION)
    deployer = backends_for(standin).deployer
    deployment = deployer.trigger(request())
    standin.world.advance(600)  # prepare done: "wait" is scheduled

    assert (deployer.status(deployment.id).status, deployer.status(deployment.id).outcome) == (
        "scheduled", Outcome.BLOCKED)
    standin.world.advance(1800)
    assert deployer.status(deployment.id).outcome is Outcome.WAITING  # its time came: running
    standin.world.advance(5000)
    assert deployer.status(deployment.id).outcome is Outcome.SUCCEEDED


def test_canceling_is_still_waiting_and_ends_as_canceled_which_failed(standin_factory) -> None:
    standin = standin_factory(World(clock=VirtualClock(), canceling_s=300))
    seed_package_builds(standin.world, VERSION)
    deployer = backends_for(standin).deployer
    deployment = deployer.trigger(request())
    standin.world.advance(600)  # deploy is running
    make_client(standin).projects.get(DEPLOYER.path, lazy=True).pipelines.get(int(deployment.id)).cancel()

    canceling = deployer.status(deployment.id)
    assert (canceling.status, canceling.outcome) == ("canceling", Outcome.WAITING)
    standin.world.advance(300)
    canceled = deployer.status(deployment.id)
    assert (canceled.status, canceled.outcome) == ("canceled", Outcome.FAILED)


def test_waiting_for_callback_is_waiting_not_unknown(standin_factory) -> None:
    standin = standin_factory()
    standin.world.script(DEPLOYER.path, "gstg", outcome=Script.stuck("waiting_for_callback"))
    seed_package_builds(standin.world, VERSION)
    deployer = backends_for(standin).deployer
    deployment = deployer.trigger(request())
    standin.world.advance(5000)

    read = deployer.status(deployment.id)
    assert (read.status, read.outcome) == ("waiting_for_callback", Outcome.WAITING)

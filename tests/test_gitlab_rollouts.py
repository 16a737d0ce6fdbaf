"""Whole rollouts with the real GitLab backend against the GitLab stand-in, tag to production.

In-process: the ``Runner`` drives the backend that ``create()`` builds from settings, on the
stand-in's own virtual clock (one clock object, so a 30-minute bake is 30 minutes of the
stand-in's time too).  As processes: ``deploystate start``/``run``/``promote`` with a
deploystate.toml pointing at a stand-in on an accelerated clock they share through
``clock_speed``/``clock_anchor``; ``run`` is killed with SIGKILL at runner checkpoints and
resumed.  Every count of triggers comes from the stand-in's own records.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import gitlab
import pytest
import requests
from deploystate_backends.gitlab import create
from deploystate_backends.gitlab_standin import (
    CNG,
    DEFAULT_PROJECTS,
    DEPLOYER,
    OMNIBUS,
    AcceleratedClock,
    Pipeline,
    Script,
    Standin,
    VirtualClock,
    World,
    seed_package_builds,
)
from standin_fixtures import DEPLOYER_TRIGGER_TOKEN, STANDIN_TOKEN, make_client

from deploystate.actions import Action
from deploystate.crashpoint import KILL_AT
from deploystate.journal import MemoryStore, Record
from deploystate.ports import Notice
from deploystate.runner import Runner, RunnerConfig, Stop
from deploystate.spec import default_spec
from deploystate.sqlite_store import SQLiteStore
from deploystate.strategy import Strategy

VERSION = "13.10.202103011220"
SPEC = default_spec()
DEPLOYMENT_STEPS = {s.name: ",".join(s.targets) for s in SPEC.steps if s.targets}
EVERY_ENVIRONMENT_ONCE = {env: 1 for env in DEPLOYMENT_STEPS.values()}
ENV = {"GITLAB_API_TOKEN": STANDIN_TOKEN, "DEPLOYER_TRIGGER_TOKEN": DEPLOYER_TRIGGER_TOKEN}
BAKE_S = next(s.duration_s for s in SPEC.steps if s.duration_s)


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class Notices:
    """Collects every notice, as a chat channel would."""

    def __init__(self) -> None:
        self.seen: list[Notice] = []

    def notify(self, notice: Notice) -> None:
        self.seen.append(notice)


def runner_for(standin: Standin, env: dict[str, str] = ENV, notifier: Any = None, **config: Any) -> Runner:
    settings = {"url": standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                "omnibus_project": OMNIBUS.path, "timeout_s": 0.3, "backoff_s": 0.01, "max_backoff_s": 0.05}
    backends = attrs.evolve(create(settings, env), clock=standin.world.clock)
    runner_config = RunnerConfig(**{"strategy": Strategy(check_mode_everywhere=True), **config})
    return Runner(MemoryStore(), backends, config=runner_config, notifier=notifier or Notices())


def trigger_pipelines(world: World) -> dict[str, Pipeline]:
    """The deployer's triggered pipelines by idempotency key (the stand-in's own record)."""
    return {p.variable("DEPLOYSTATE_KEY") or "": p
            for p in world.pipelines(DEPLOYER) if p.source == "trigger"}


def records_of(records: list[Record], action: str, step: str | None = None) -> list[Record]:
    return [r for r in records if r.action == action and step in (None, r.step)]


def assert_each_environment_triggered_once(standin: Standin, records: list[Record]) -> None:
    counters = standin.counters()
    assert counters.triggered_pipelines_by_env == EVERY_ENVIRONMENT_ONCE
    assert counters.trigger_requests_by_env == EVERY_ENVIRONMENT_ONCE  # nothing sent twice, even refused
    pipelines = trigger_pipelines(standin.world)
    for step, environments in DEPLOYMENT_STEPS.items():
        [recorded] = records_of(records, Action.TRIGGERED, step)  # one trigger in the journal, too
        pipeline = pipelines[str(recorded.data["key"])]
        assert str(pipeline.id) == recorded.data["deployment_id"]
        assert pipeline.variable("DEPLOY_ENVIRONMENT") == environments


# --- in process, on the stand-in's virtual clock ---------------------------------------------------


def test_a_whole_rollout_in_check_mode_from_tag_to_production(gitlab_standin):
    world = gitlab_standin.world
    seed_package_builds(world, VERSION, after_s=20 * 60)  # nothing to wait for yet: MISSING, waited for
    runner = runner_for(gitlab_standin)
    runner.create(VERSION, SPEC)

    gate = runner.run(VERSION)
    assert gate.stop is Stop.PROMOTION
    runner.promote(VERSION, by="release-manager")
    done = runner.run(VERSION)

    assert done.stop is Stop.DONE
    records = runner.store.read(VERSION)
    assert_each_environment_triggered_once(gitlab_standin, records)
    by_step = {step: trigger_pipelines(world)[str(records_of(records, Action.TRIGGERED, step)[0].data["key"])]
               for step in DEPLOYMENT_STEPS}
    assert {p.variable("CHECKMODE") for p in by_step.values()} == {"true"}
    assert by_step["trigger_complete_deployment"].ref == "master"  # the legacy path is the real one
    assert {by_step[s].ref for s in ("trigger_gstg", "trigger_cny", "trigger_gprd")} == {"next-gen"}
    # One time for both: staging starts after both builds, production after canary plus the bake.
    builds = [p for p in world.pipelines() if p.project_id in (CNG.id, OMNIBUS.id)]
    assert by_step["trigger_gstg"].created_at >= max(p.finished_at or 0 for p in builds)
    canary_done = by_step["trigger_cny"].finished_at
    # The bake counts from canary's own finished_at, which GitLab's API gives to the millisecond.
    assert canary_done is not None and by_step["trigger_gprd"].created_at >= canary_done + BAKE_S - 0.001


FAULT_MIX = (("error", {"status": 502}, 0.05), ("error", {"status": 503}, 0.02),
             ("rate_limit", {"retry_after": 1}, 0.03), ("slow", {"delay_s": 0.5}, 0.03),
             ("drop", {}, 0.04), ("lost_response", {}, 0.03))
API_SECRET = "glpat-api-secret-4711"
TRIGGER_SECRET = "glptt-trigger-secret-0815"


def test_with_faults_on_a_fifth_of_requests_each_environment_is_triggered_exactly_once(standin_factory,
                                                                                        caplog):
    caplog.set_level(logging.DEBUG)  # python-gitlab, requests, urllib3, the stand-in: everything
    projects = [attrs.evolve(p, trigger_tokens=(TRIGGER_SECRET,)) if p is DEPLOYER else p
                for p in DEFAULT_PROJECTS]
    standin = standin_factory(World(projects, clock=VirtualClock()), seed=2021,
                              tokens=frozenset({API_SECRET}))
    assert abs(sum(rate for _, _, rate in FAULT_MIX) - 0.20) < 1e-9
    for kind, options, rate in FAULT_MIX:
        standin.faults.rate(rate, kind, **options)
    standin.faults.next(1, "lost_response", route="trigger")  # the first trigger's answer never arrives
    seed_package_builds(standin.world, VERSION)
    notices = Notices()
    secrets = {"GITLAB_API_TOKEN": API_SECRET, "DEPLOYER_TRIGGER_TOKEN": TRIGGER_SECRET}
    runner = runner_for(standin, env=secrets, notifier=notices, auto_promote="release-manager")
    runner.create(VERSION, SPEC)

    result = runner.run(VERSION)

    assert result.stop is Stop.DONE
    records = runner.store.read(VERSION)
    assert_each_environment_triggered_once(standin, records)
    counters = standin.counters()
    assert counters.faults[("lost_response", "trigger")] >= 1
    assert sum(counters.faults.values()) >= 0.1 * sum(counters.requests.values())
    # The faults were seen and announced (as warnings that say "will try again")...
    warnings = [r for r in records_of(records, Action.OBSERVED)
                if "will try again" in str(r.data.get("message"))]
    assert warnings
    # ...and no token is anywhere: journal, notices, logs.
    everything = "\n".join([json.dumps([r.as_dict() for r in records]), *(n.message for n in notices.seen),
                            caplog.text])
    assert API_SECRET not in everything and TRIGGER_SECRET not in everything


def test_a_failed_deployment_retried_in_gitlab_moves_the_rollout_forward(gitlab_standin):
    world = gitlab_standin.world
    world.script(DEPLOYER.path, "gprd-cny", outcome=Script.fail_then_succeed())
    seed_package_builds(world, VERSION)
    project = make_client(gitlab_standin).projects.get(DEPLOYER.path, lazy=True)
    retried: list[str] = []

    class ReleaseManager(Notices):
        """Reads the failure notice and retries the failed job in GitLab's UI (here: its API)."""

        def notify(self, notice: Notice) -> None:
            super().notify(notice)
            if notice.action == Action.FAIL.value and notice.step == "trigger_cny":
                pipeline_id = str(notice.data["deployment_id"])
                project.pipelines.get(int(pipeline_id)).retry()
                retried.append(pipeline_id)

    runner = runner_for(gitlab_standin, notifier=ReleaseManager(), auto_promote="release-manager")
    runner.create(VERSION, SPEC)

    result = runner.run(VERSION)

    assert result.stop is Stop.DONE and len(retried) == 1
    records = runner.store.read(VERSION)
    assert [r.action for r in records if r.step == "trigger_cny"][-3:] == ["fail", "resume", "succeed"]
    assert_each_environment_triggered_once(gitlab_standin, records)  # a retry is no new pipeline
    canary = world.pipeline(int(retried[0]))
    assert canary is not None and canary.status == "success"
    assert [j.attempt for j in canary.jobs if j.name == "deploy"] == [0, 1]


def test_an_unknown_status_is_announced_once_and_waited_on_until_the_limit(gitlab_standin):
    world = gitlab_standin.world
    world.script(DEPLOYER.path, "gstg", outcome=Script.stuck("deploying_on_mars"))
    seed_package_builds(world, VERSION)
    notices = Notices()
    runner = runner_for(gitlab_standin, notifier=notices, deployment_wait_limit_s=3 * 3600,
                        failed_watch_s=1800)
    runner.create(VERSION, SPEC)

    result = runner.run(VERSION)

    # Only staging's own (dry-run) pipeline is stuck: the real legacy path goes on to done.
    assert result.stop is Stop.DONE and result.view.standing.dry_runs_failed == ("trigger_gstg",)
    records = runner.store.read(VERSION)
    [unknown] = records_of(records, Action.OBSERVED, "trigger_gstg")
    assert "unknown status 'deploying_on_mars'" in str(unknown.data["message"])
    [failed] = records_of(records, Action.FAIL.value, "trigger_gstg")
    assert failed.data.get("timed_out") is True and failed.at - unknown.at >= 3600  # waited, not crashed
    assert any(n.severity == "warning" and "dry run FAILED" in n.message and "timed out" in n.message
               for n in notices.seen)
    assert "trigger_cny" not in {r.step for r in records_of(records, Action.START.value)}


def test_package_builds_that_never_appear_are_waited_for_within_the_limit_then_reported(gitlab_standin):
    notices = Notices()
    runner = runner_for(gitlab_standin, notifier=notices, package_wait_limit_s=3600, failed_watch_s=600)
    runner.create(VERSION, SPEC)

    result = runner.run(VERSION)

    assert result.stop is Stop.FAILED
    records = runner.store.read(VERSION)
    for step in ("wait_cng", "wait_omnibus"):
        [failed] = records_of(records, Action.FAIL.value, step)
        assert failed.data.get("timed_out") is True and "timed out" in str(failed.data["reason"])
    assert gitlab_standin.counters().requests_to("trigger") == 0
    assert sum("timed out" in n.message for n in notices.seen if n.severity == "error") == 2


# --- as processes: deploystate start/run/promote, killed and resumed --------------------------------

SPEED = 6000.0  # a four-hour rollout in a few seconds
RUN_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC",
           "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", KILL_AT)


@pytest.fixture
def fast_standin(standin_factory) -> tuple[Standin, float]:
    """A stand-in whose time runs SPEED times faster, anchored now; package builds already started."""
    anchor = time.time()
    standin = standin_factory(World(clock=AcceleratedClock(SPEED, start=anchor)))
    seed_package_builds(standin.world, VERSION)
    return standin, anchor


def write_config(directory: Path, gitlab: str) -> Path:
    config = directory / "deploystate.toml"
    config.write_text(f"""
[deploystate]
backend = "gitlab"
store = "{directory / 'journal.sqlite'}"
actor = "ci"

[strategy]
check_mode_everywhere = true

[waiting]
min_interval_seconds = 15
max_interval_seconds = 300

{gitlab}
timeout_s = 5
backoff_s = 0.05
""")
    return config


def deploystate(config: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in RUN_ENV}
    env.update(ENV, NO_PROXY="127.0.0.1,localhost")
    if kill_at is not None:
        env[KILL_AT] = kill_at
    return subprocess.run([sys.executable, "-m", "deploystate", *args, "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def rollout(config: Path, kill_at: str | None, *,
            kill_after_promotion: bool) -> list[subprocess.CompletedProcess[str]]:
    """start, run (to the promotion gate), promote, run: one of the runs killed, then run again."""
    done = [deploystate(config, "start", VERSION)]
    done.append(deploystate(config, "run", VERSION, kill_at=None if kill_after_promotion else kill_at))
    if done[-1].returncode == -signal.SIGKILL:
        done.append(deploystate(config, "run", VERSION))
    done.append(deploystate(config, "promote", VERSION, "--by", "release-manager"))
    done.append(deploystate(config, "run", VERSION, kill_at=kill_at if kill_after_promotion else None))
    if done[-1].returncode == -signal.SIGKILL:
        done.append(deploystate(config, "run", VERSION))
    return done


KILLS = {
    "before the first trigger": ("before-trigger:1", False),
    "right after the first trigger": ("after-trigger:1", False),
    "right after the canary trigger": ("after-trigger:3", False),
    "right after the production trigger": ("after-trigger:1", True),
}


@pytest.mark.parametrize("where", KILLS, ids=list(KILLS))
def test_a_killed_run_resumes_without_a_duplicate_trigger(fast_standin, tmp_path, where):
    standin, anchor = fast_standin
    kill_at, after_promotion = KILLS[where]
    config = write_config(tmp_path, f"""[backends.gitlab]
url = "{standin.url}"
deployer_project = "{DEPLOYER.path}"
cng_project = "{CNG.path}"
omnibus_project = "{OMNIBUS.path}"
clock_speed = {SPEED}
clock_anchor = {anchor}""")

    steps = rollout(config, kill_at, kill_after_promotion=after_promotion)

    codes = [p.returncode for p in steps]
    assert -signal.SIGKILL in codes, f"never killed at {kill_at}: {[p.stderr for p in steps]}"
    assert codes[-1] == 0 and codes[0] == 0, steps[-1].stdout + steps[-1].stderr
    store = SQLiteStore(tmp_path / "journal.sqlite")
    try:
        records = store.read(VERSION)
    finally:
        store.close()
    assert records_of(records, Action.FINISH.value)
    assert_each_environment_triggered_once(standin, records)


def test_a_rehearsal_with_deploystate_sim_gitlab_as_the_readme_describes_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in RUN_ENV}
    server = subprocess.Popen([sys.executable, "-m", "deploystate", "sim-gitlab", "--port", "0", "--speed",
                               str(SPEED), "--auto-deploy", VERSION], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        printed = list(_lines_until(server, "Tokens:"))
        snippet = "\n".join(line.strip() for line in printed[printed.index("For deploystate.toml:") + 1:-1])
        config = write_config(tmp_path, snippet)  # the printed settings, as they are

        steps = rollout(config, None, kill_after_promotion=False)

        assert [p.returncode for p in steps] == [0, 1, 0, 0], [p.stderr for p in steps]
        assert "waiting for promotion" in steps[1].stdout
        url = re.search(r'url = "([^"]+)"', snippet)
        assert url is not None
        session = requests.Session()
        session.trust_env = False
        gl = gitlab.Gitlab(url.group(1), private_token=STANDIN_TOKEN, session=session, timeout=5)
        triggers = gl.projects.get(DEPLOYER.path, lazy=True).pipelines.list(source="trigger", get_all=True)
        environments = Counter(v.value for p in triggers for v in p.variables.list(get_all=True)
                               if v.key == "DEPLOY_ENVIRONMENT")
        assert environments == EVERY_ENVIRONMENT_ONCE
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert server.returncode == 0


def _lines_until(process: subprocess.Popen[str], marker: str) -> Iterator[str]:
    assert process.stdout is not None
    for line in process.stdout:
        yield line.rstrip("\n")
        if line.startswith(marker):
            return
    error = process.stderr.read() if process.stderr else ""
    raise AssertionError(f"the stand-in ended before printing {marker!r}: {error}")

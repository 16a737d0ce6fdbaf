"""``deploystate step VERSION STEP``: one step per process, as a CI job per step runs them.

Against the GitLab stand-in (its own count of triggers is the truth) on a clock 6000 times faster
than real time, shared by the stand-in and every process through ``clock_speed``/``clock_anchor``:
steps of one rollout run at once (each holds the rollout only for a pass, never while it sleeps),
a step started before its needs is refused, the promotion step promotes with ``--by``, and a step
killed with SIGKILL right after its trigger and run again (a retried job) finds its deployment
instead of triggering again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from deploystate_backends.gitlab_standin import (
    CNG,
    DEPLOYER,
    OMNIBUS,
    AcceleratedClock,
    Standin,
    World,
    seed_package_builds,
)
from standin_fixtures import DEPLOYER_TRIGGER_TOKEN, STANDIN_TOKEN

from deploystate.actions import Action
from deploystate.crashpoint import KILL_AT
from deploystate.journal import Record
from deploystate.spec import default_spec
from deploystate.sqlite_store import SQLiteStore

VERSION = "13.10.202103011220"
SPEC = default_spec()
SPEED = 6000.0
TOKENS = {"GITLAB_API_TOKEN": STANDIN_TOKEN, "DEPLOYER_TRIGGER_TOKEN": DEPLOYER_TRIGGER_TOKEN}
EVERY_ENVIRONMENT_ONCE = {",".join(s.targets): 1 for s in SPEC.steps if s.targets}
CLEAN = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC",
         "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", KILL_AT, "GITLAB_API_TOKEN", "DEPLOYER_TRIGGER_TOKEN")


@pytest.fixture
def fast_standin(standin_factory) -> tuple[Standin, float]:
    anchor = time.time()
    standin = standin_factory(World(clock=AcceleratedClock(SPEED, start=anchor)))
    seed_package_builds(standin.world, VERSION)
    return standin, anchor


def config_text(standin: Standin, anchor: float, store: str) -> str:
    """deploystate.toml for the stand-in: every deployment a dry run (a rehearsal)."""
    return f"""[deploystate]
backend = "gitlab"
store = "{store}"
actor = "ci"

[strategy]
check_mode_everywhere = true

[waiting]
min_interval_seconds = 15
max_interval_seconds = 300

[backends.gitlab]
url = "{standin.url}"
deployer_project = "{DEPLOYER.path}"
cng_project = "{CNG.path}"
omnibus_project = "{OMNIBUS.path}"
clock_speed = {SPEED}
clock_anchor = {anchor}
timeout_s = 5
backoff_s = 0.05
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(NO_PROXY="127.0.0.1,localhost", **extra)
    return env


def deploystate(directory: Path, *args: str, kill_at: str | None = None) -> subprocess.Popen[str]:
    env = clean_env(**TOKENS, **({KILL_AT: kill_at} if kill_at else {}))
    return subprocess.Popen([sys.executable, "-m", "deploystate", *args], cwd=directory, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out + err


def done(directory: Path, *args: str, kill_at: str | None = None) -> tuple[int, str]:
    return finished(deploystate(directory, *args, kill_at=kill_at))


def records(directory: Path) -> list[Record]:
    store = SQLiteStore(directory / "journal.sqlite")
    try:
        return store.read(VERSION)
    finally:
        store.close()


def triggered_by_environment(standin: Standin) -> Counter[str]:
    return Counter(p.variable("DEPLOY_ENVIRONMENT") or "" for p in standin.world.pipelines(DEPLOYER)
                   if p.source == "trigger")


@pytest.fixture
def project(fast_standin, tmp_path) -> tuple[Standin, Path]:
    standin, anchor = fast_standin
    (tmp_path / "deploystate.toml").write_text(config_text(standin, anchor, str(tmp_path / "journal.sqlite")))
    code, output = done(tmp_path, "start", VERSION)
    assert code == 0, output
    return standin, tmp_path


def waves(spec=SPEC) -> list[list[str]]:
    """The steps by the longest chain of needs before them: each wave may run at once."""
    depth: dict[str, int] = {}
    for step in spec.steps:
        depth[step.name] = 1 + max((depth[n] for n in step.needs), default=-1)
    return [[s for s, d in depth.items() if d == level] for level in range(max(depth.values()) + 1)]


def test_every_step_as_its_own_process_with_the_steps_of_a_wave_at_once_finishes_the_rollout(project):
    standin, directory = project
    early = done(directory, "step", VERSION, "trigger_gprd")
    assert early[0] == 1 and "trigger_gprd cannot start: it needs baking_time, manual_promotion" in early[1]

    for wave in waves():
        running = {name: deploystate(directory, "step", VERSION, name, "--by", "release-manager")
                   for name in wave}
        results = {name: finished(process) for name, process in running.items()}
        assert {name: code for name, (code, _) in results.items()} == dict.fromkeys(wave, 0), results

    journal = records(directory)
    assert [r for r in journal if r.action == Action.FINISH.value]
    [promoted] = [r for r in journal if r.action == Action.SUCCEED.value and r.step == "manual_promotion"]
    assert promoted.actor == "release-manager"
    assert triggered_by_environment(standin) == EVERY_ENVIRONMENT_ONCE
    again = done(directory, "step", VERSION, "trigger_gprd")  # a job run again after success: nothing to do
    assert again[0] == 0 and triggered_by_environment(standin) == EVERY_ENVIRONMENT_ONCE


def test_a_step_killed_right_after_its_trigger_resumes_when_run_again_without_a_second_trigger(project):
    standin, directory = project
    for name in ("tag", "wait_cng", "wait_omnibus"):
        assert done(directory, "step", VERSION, name)[0] == 0

    killed = done(directory, "step", VERSION, "trigger_gstg", kill_at="after-trigger:1")
    assert killed[0] == -signal.SIGKILL, killed[1]
    assert triggered_by_environment(standin) == {"gstg": 1}  # the deployer took it; the journal does not know
    retried = done(directory, "step", VERSION, "trigger_gstg")

    assert retried[0] == 0, retried[1]
    assert triggered_by_environment(standin) == {"gstg": 1}
    journal = records(directory)
    [started] = [r for r in journal if r.action == Action.START.value and r.step == "trigger_gstg"]
    [triggered] = [r for r in journal if r.action == Action.TRIGGERED.value and r.step == "trigger_gstg"]
    assert triggered.data["key"] == started.data["key"]  # found by the key of the one intent


def test_run_still_drives_the_rest_of_a_rollout_begun_with_steps(project):
    standin, directory = project
    for name in ("tag", "wait_cng", "wait_omnibus", "trigger_gstg"):
        assert done(directory, "step", VERSION, name)[0] == 0
    gate = done(directory, "run", VERSION)
    assert gate[0] == 1 and "waiting for promotion" in gate[1]
    promotion = done(directory, "step", VERSION, "manual_promotion")  # no --by: the login name
    assert promotion[0] == 0, promotion[1]
    assert done(directory, "run", VERSION)[0] == 0
    assert triggered_by_environment(standin) == EVERY_ENVIRONMENT_ONCE


def test_bad_input_is_exit_2_and_says_what_to_do(project):
    _standin, directory = project
    unknown = done(directory, "step", VERSION, "trigger_mars")
    assert unknown[0] == 2 and "has no step 'trigger_mars'; steps: tag, wait_cng" in unknown[1]
    empty = done(directory, "step", VERSION, "manual_promotion", "--by", " ")
    assert empty[0] == 2 and "--by is empty" in empty[1]
    absent = done(directory, "step", "13.10.202103011221", "tag")
    assert absent[0] == 2 and "start it first ('deploystate start 13.10.202103011221')" in absent[1]


def test_a_promotion_step_refused_by_the_checks_is_exit_1_and_goes_on_once_they_are_overridden(tmp_path):
    # The simulated backend, whose simulated active_incidents check fails (as with simulate --check-fails).
    (tmp_path / "deploystate.toml").write_text(f"""[deploystate]
backend = "simulated"
store = "{tmp_path / 'journal.sqlite'}"

[backends.simulated]
failing_checks = ["active_incidents"]
""")
    assert done(tmp_path, "start", VERSION)[0] == 0
    for name in ("tag", "wait_cng", "wait_omnibus", "trigger_gstg", "trigger_cny"):
        assert done(tmp_path, "step", VERSION, name)[0] == 0

    refused = done(tmp_path, "step", VERSION, "manual_promotion", "--by", "amy")

    assert refused[0] == 1, refused[1]
    assert "active_incidents   FAILED" in refused[1] and "was not promoted" in refused[1]
    overridden = done(tmp_path, "promote", VERSION, "--by", "amy", "--override-checks", "S1 elsewhere")
    assert overridden[0] == 0, overridden[1]
    retried = done(tmp_path, "step", VERSION, "manual_promotion", "--by", "bob")  # the job retried
    assert retried[0] == 0, retried[1]
    journal = records(tmp_path)
    [promoted] = [r for r in journal if r.action == Action.SUCCEED.value and r.step == "manual_promotion"]
    assert promoted.actor == "amy"  # who overrode and promoted, not who retried the job

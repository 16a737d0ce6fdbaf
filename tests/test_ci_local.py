"""The generated child pipeline run end to end by ``gitlab-ci-local`` (shell executor), against the
GitLab stand-in the test starts (on a clock 6000 times faster than real time, which the jobs share
through ``clock_speed``/``clock_anchor``), in a temporary git repository.

- The README's parent pipeline as it is: ``deploystate start`` and ``ci generate`` in one job, the
  child pipeline triggered from its artifact (``trigger: include: artifact``, ``strategy: depend``),
  every job in ``needs`` order, the manual promotion played (``--manual``), recorded as promoted by
  the git user's login (gitlab-ci-local's ``GITLAB_USER_LOGIN``, as GitLab gives whoever played it).
- The child pipeline alone, job by job as a release manager would see it: a trigger job killed with
  SIGKILL right after its trigger (``DEPLOYSTATE_KILL_AT``, for that run only) and run again, the
  pipeline stopping before the manual promotion, then played: every environment triggered exactly
  once, counted by the stand-in.

Tokens reach the jobs only through gitlab-ci-local's variables file, not the environment.  Under
CI=true a missing gitlab-ci-local, node, rsync or git fails these tests; elsewhere they skip.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from deploystate_backends.gitlab_standin import (
    DEPLOYER,
    AcceleratedClock,
    Standin,
    Timing,
    World,
    seed_package_builds,
)
from test_step_command import (
    EVERY_ENVIRONMENT_ONCE,
    SPEED,
    TOKENS,
    VERSION,
    clean_env,
    config_text,
    records,
    triggered_by_environment,
)

from deploystate.actions import Action

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
TOOLS = ("gitlab-ci-local", "node", "rsync", "git")
README = Path(__file__).resolve().parent.parent / "README.md"
RELEASE_MANAGER = "release-manager"
JOB_EVENT = re.compile(r"^\s*(?:\[\S+\] -> )?(\S+)\s+(starting shell|finished in)")
# The summary's lines (PASS/FAIL, or WARN for a job allowed to fail), e.g. " FAIL  [rollout] -> tag".
RESULT = re.compile(r"^\s*(PASS|FAIL|WARN)\s+(?:\[\S+\] -> )?(\S+)(\s+\S*_script)?\s*$")


@pytest.fixture
def fast_standin(standin_factory) -> tuple[Standin, float]:
    """A stand-in whose time runs SPEED times faster, anchored now; package builds already started."""
    anchor = time.time()
    standin = standin_factory(World(clock=AcceleratedClock(SPEED, start=anchor)))
    seed_package_builds(standin.world, VERSION)
    return standin, anchor


@pytest.fixture(scope="module")
def tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        reason = (f"{', '.join(missing)} not installed (.ci/run installs them: apt-get install rsync; "
                  "npm install -g gitlab-ci-local@4.73.0)")
        if IN_CI:
            pytest.fail(reason + "; under CI this test must run, not skip")
        pytest.skip(reason)


def git(directory: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=directory, check=True, capture_output=True, text=True)


def repository(directory: Path, files: dict[str, str], *, store: str | None = None) -> Path:
    """A git repository of ``files`` (gitlab-ci-local copies only what git tracks), with the tokens
    in gitlab-ci-local's variables file (untracked: it stays on this machine, like CI/CD variables)."""
    directory.mkdir()
    git(directory, "init", "-q", "-b", "main")
    git(directory, "config", "user.email", f"{RELEASE_MANAGER}@example.com")  # GITLAB_USER_LOGIN's source
    git(directory, "config", "user.name", "Release Manager")
    git(directory, "remote", "add", "origin", "https://gitlab.example.com/delivery/rollouts.git")
    for name, text in files.items():
        (directory / name).write_text(text)
    git(directory, "add", *files)
    git(directory, "commit", "-q", "-m", "rollout")
    variables = {**TOKENS, "NO_PROXY": "127.0.0.1", **({"DEPLOYSTATE_STORE": store} if store else {})}
    (directory / ".gitlab-ci-local-variables.yml").write_text(yaml.safe_dump(variables))
    return directory


def gitlab_ci_local(directory: Path, *args: str) -> tuple[int, str]:
    """Run gitlab-ci-local in ``directory``: jobs find this venv's ``deploystate`` on PATH."""
    env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("CI", None)  # gitlab-ci-local sets CI=true in its jobs itself
    done = subprocess.run(["gitlab-ci-local", "--no-color", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    return done.returncode, done.stdout + done.stderr


def results(output: str) -> dict[str, str]:
    return {found.group(2): found.group(1) for line in output.splitlines() if (found := RESULT.match(line))}


def assert_needs_order(output: str, pipeline: dict[str, object]) -> list[str]:
    """Every job started only after each of its needs that ran in this run had finished; the jobs
    in the order they started."""
    started: list[str] = []
    finished: set[str] = set()
    ran = {found.group(1) for line in output.splitlines() if (found := JOB_EVENT.match(line))}
    for line in output.splitlines():
        found = JOB_EVENT.match(line)
        if found is None:
            continue
        job, event = found.groups()
        if event == "finished in":
            finished.add(job)
            continue
        needs = pipeline[job]["needs"]  # type: ignore[index]
        early = [need for need in needs if need in ran and need not in finished]
        assert not early, f"{job} started before {early} finished:\n{output}"
        started.append(job)
    return started


def child_pipeline(directory: Path) -> dict[str, object]:
    made = subprocess.run([sys.executable, "-m", "deploystate", "ci", "generate", VERSION],
                          cwd=directory, env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert made.returncode == 0, made.stderr
    return yaml.safe_load(made.stdout)


def readme_parent_pipeline() -> str:
    text = README.read_text()
    block = re.search(r"<!-- parent pipeline -->\n```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README lost its parent pipeline (a yaml block after <!-- parent pipeline -->)"
    return block.group(1)


def test_the_readmes_parent_pipeline_runs_the_child_pipeline_to_production(tools, fast_standin, tmp_path):
    standin, anchor = fast_standin
    directory = repository(tmp_path / "project", {
        ".gitlab-ci.yml": readme_parent_pipeline(),
        "deploystate.toml": config_text(standin, anchor, str(tmp_path / "journal.sqlite"))})

    code, output = gitlab_ci_local(directory, "--manual", "manual_promotion",
                                   "--variable", f"CI_COMMIT_TAG={VERSION}",
                                   "--ignore-predefined-vars", "CI_COMMIT_TAG")

    assert code == 0, output
    child = child_pipeline(directory)
    steps = [name for name in child if name != "stages"]
    assert results(output) == {**dict.fromkeys(steps, "PASS"), "rollout-generate": "PASS", "rollout": "PASS"}
    started = assert_needs_order(output, {**child, "rollout-generate": {"needs": []},
                                          "rollout": {"needs": ["rollout-generate"]}})
    assert started[0] == "rollout-generate" and set(started) == {"rollout-generate", *steps}
    journal = records(tmp_path)
    assert [r for r in journal if r.action == Action.FINISH.value]
    [promoted] = [r for r in journal if r.action == Action.SUCCEED.value and r.step == "manual_promotion"]
    assert promoted.actor == RELEASE_MANAGER
    assert triggered_by_environment(standin) == EVERY_ENVIRONMENT_ONCE


def history(directory: Path, version: str = VERSION) -> list[SimpleNamespace]:
    """The rollout's records as ``deploystate history --json`` gives them, whichever the store."""
    shown = subprocess.run([sys.executable, "-m", "deploystate", "history", version, "--json"], cwd=directory,
                           env=clean_env(**TOKENS), capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    return [SimpleNamespace(**record) for record in json.loads(shown.stdout)]


@pytest.mark.parametrize("journal", ["sqlite", "postgresql"])
def test_a_trigger_job_killed_and_retried_triggers_once_and_the_promotion_waits_to_be_played(
        tools, fast_standin, tmp_path, request, journal):
    standin, anchor = fast_standin
    # PostgreSQL as CI/CD variables would give it to every job: DEPLOYSTATE_STORE.  A SQLite file (which
    # works here only because every job of gitlab-ci-local runs on this machine) is named in
    # deploystate.toml alone: gitlab-ci-local makes a variable whose value is an existing file's path a
    # File variable, a copy of the file for each job, and each job would then write its own journal.
    store = request.getfixturevalue("pg_url") if journal == "postgresql" else str(tmp_path / "journal.sqlite")
    config = config_text(standin, anchor, store)
    directory = repository(tmp_path / "project", {"deploystate.toml": config},
                           store=store if journal == "postgresql" else None)
    started = subprocess.run([sys.executable, "-m", "deploystate", "start", VERSION], cwd=directory,
                             env=clean_env(**TOKENS, DEPLOYSTATE_STORE=store), capture_output=True, text=True,
                             timeout=60, check=False)
    assert started.returncode == 0, started.stderr
    pipeline = child_pipeline(directory)
    (directory / ".gitlab-ci.yml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    git(directory, "add", ".gitlab-ci.yml")
    git(directory, "commit", "-q", "-m", "the rollout's child pipeline")

    # 1. Up to the real path's deployment (not a dry run: those may fail), whose job is killed right
    #    after the deployer accepted its trigger.
    legacy = "trigger_complete_deployment"
    code, output = gitlab_ci_local(directory, "--needs", legacy,
                                   "--variable", "DEPLOYSTATE_KILL_AT=after-trigger:1")
    assert code != 0 and results(output) == {"tag": "PASS", "wait_cng": "PASS", "wait_omnibus": "PASS",
                                             legacy: "FAIL"}, output
    assert "Killed" in output
    assert_needs_order(output, pipeline)
    assert triggered_by_environment(standin) == {"gstg,gprd-cny,gprd": 1}

    # 2. The job retried alone: it resumes from the journal and finds its pipeline.
    code, output = gitlab_ci_local(directory, legacy)
    assert code == 0 and results(output) == {legacy: "PASS"}, output
    assert triggered_by_environment(standin) == {"gstg,gprd-cny,gprd": 1}

    # 3. Everything the promotion does not gate; the manual job is not played, so production waits.
    code, output = gitlab_ci_local(directory, "--needs", "baking_time", "trigger_complete_deployment")
    assert code == 0, output
    assert "manual_promotion" not in results(output) and "trigger_gprd" not in results(output)
    assert_needs_order(output, pipeline)
    journal = history(directory)
    assert not [r for r in journal if r.step == "trigger_gprd"]

    # 4. The whole pipeline with the promotion played: done jobs pass at once, production deploys.
    code, output = gitlab_ci_local(directory, "--manual", "manual_promotion")
    assert code == 0, output
    assert results(output) == dict.fromkeys((name for name in pipeline if name != "stages"), "PASS")
    assert_needs_order(output, pipeline)
    journal = history(directory)
    assert [r for r in journal if r.action == Action.FINISH.value]
    [promoted] = [r for r in journal if r.action == Action.SUCCEED.value and r.step == "manual_promotion"]
    assert promoted.actor == RELEASE_MANAGER
    for step in ("trigger_gstg", "trigger_complete_deployment", "trigger_cny", "trigger_gprd"):
        assert len([r for r in journal if r.action == Action.TRIGGERED.value and r.step == step]) == 1
    assert triggered_by_environment(standin) == EVERY_ENVIRONMENT_ONCE


PAIR_SPEC = """name = "pair"
[[steps]]
name = "tag"
kind = "tag"
[[steps]]
name = "wait_cng"
kind = "package_wait"
package = "cng"
needs = ["tag"]
[[steps]]
name = "trigger_gstg"
kind = "deployment"
environment = "gstg"
needs = ["wait_cng"]
[[steps]]
name = "trigger_cny"
kind = "deployment"
environment = "gprd-cny"
needs = ["trigger_gstg"]
"""


def test_two_rollouts_child_pipelines_at_once_never_deploy_one_environment_at_once(tools, fast_standin,
                                                                                  tmp_path):
    """What ``resource_group`` does in GitLab (one job of a group at a time, across pipelines),
    which gitlab-ci-local does not implement: two versions' pipelines run side by side here, and
    deploystate's own claims in the shared journal keep each environment to one deployment at a
    time, the older version superseded wherever the newer got first."""
    standin, anchor = fast_standin
    versions = (VERSION, "13.10.202103011320")
    seed_package_builds(standin.world, versions[1])
    # Staging takes five hours (3 s here), so both pipelines' staging jobs surely meet.
    standin.world.script(DEPLOYER.path, "gstg", timing=Timing(running_s=5 * 3600))
    store = str(tmp_path / "journal.sqlite")
    # Per-environment deployments are the real path (so they claim their environments), and a wait
    # limit long enough for a deployment queued behind the other's.
    config = config_text(standin, anchor, store).replace(
        "check_mode_everywhere = true", "check_mode_everywhere = true\nindividual_deployments = true"
    ) + "\n[limits]\ndeployment_wait_minutes = 1440\n"
    projects = []
    for version in versions:
        directory = repository(tmp_path / version, {"deploystate.toml": config, "pair.toml": PAIR_SPEC})
        made = subprocess.run([sys.executable, "-m", "deploystate", "start", version, "--spec", "pair.toml"],
                              cwd=directory, env=clean_env(**TOKENS), capture_output=True, text=True,
                              timeout=60, check=False)
        assert made.returncode == 0, made.stderr
        made = subprocess.run([sys.executable, "-m", "deploystate", "ci", "generate", version, "--spec",
                               "pair.toml", "--output", ".gitlab-ci.yml"], cwd=directory, env=clean_env(),
                              capture_output=True, text=True, timeout=60, check=False)
        assert made.returncode == 0, made.stderr
        child = yaml.safe_load((directory / ".gitlab-ci.yml").read_text())
        assert child["trigger_gstg"]["resource_group"] == "gstg"
        git(directory, "add", ".gitlab-ci.yml")
        git(directory, "commit", "-q", "-m", "child pipeline")
        projects.append(directory)

    env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("CI", None)
    running = [subprocess.Popen(["gitlab-ci-local", "--no-color"], cwd=directory, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for directory in projects]
    outputs = [process.communicate(timeout=600)[0] for process in running]

    for process, output in zip(running, outputs, strict=True):
        assert process.returncode == 0, output
        assert set(results(output).values()) == {"PASS"}, output
    deployments = [p for p in standin.world.pipelines(DEPLOYER) if p.source == "trigger"]
    for environment in ("gstg", "gprd-cny"):
        there = sorted((p for p in deployments if p.variable("DEPLOY_ENVIRONMENT") == environment),
                       key=lambda p: p.created_at)
        assert there, f"nothing deployed {environment}"
        for first, then in itertools.pairwise(there):
            assert first.finished_at is not None and first.finished_at <= then.created_at, \
                f"two deployments of {environment} at once: {first.id} and {then.id}"
        # Never an older version after a newer one.
        order = [next(v for v in versions if (p.variable("DEPLOY_VERSION") or "").startswith(v))
                 for p in there]
        assert order == sorted(order), order
    newer = history(projects[1], versions[1])
    assert [r for r in newer if r.action == Action.FINISH.value]  # the newer version always finishes
    older = history(projects[0], versions[0])
    # They met at staging: one waited for the other's deployment there to end ("gstg is busy: ..."), or
    # the older was superseded because the newer got there first (then only the newer deploys).
    met = [r for r in older + newer if r.action == "superseded"
           or (r.action == "observed" and "is busy" in str(r.data.get("message")))]
    assert met, [(r.action, r.step) for r in older + newer]
    # The older one finished too, or was superseded where the newer got first (its jobs then pass).
    assert [r for r in older if r.action in (Action.FINISH.value, "superseded")], [r.action for r in older]

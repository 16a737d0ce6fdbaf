"""Saying what is real: the plan checked against the spec, dry-run failures that do not fail the
rollout, which gates protect production, and who may promote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploystate.actions import Action
from deploystate.config import ConfigError, RunnerConfig, load_config
from deploystate.decide import Stop
from deploystate.doubles import FakeDeployer, RecordingNotifier, fake_backends
from deploystate.errors import DeploystateError
from deploystate.journal import MemoryStore
from deploystate.machine import Phase
from deploystate.ports import Outcome, TriggerRequest
from deploystate.runner import Runner
from deploystate.spec import builtin_spec, default_spec
from deploystate.strategy import Strategy

VERSION = "13.10.202103011220"
SPEC = default_spec()
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_STORE", "DEPLOYSTATE_SPEC",
                "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", "DEPLOYSTATE_KILL_AT")


def ds(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    return subprocess.run([sys.executable, "-m", "deploystate", *args], capture_output=True, text=True,
                          timeout=180, check=False, cwd=cwd, env={**clean, **env})


def runner_with(handler: Any = None, **config: Any) -> tuple[Runner, RecordingNotifier]:
    notices = RecordingNotifier()
    deployer = FakeDeployer(handler) if handler is not None else FakeDeployer()
    runner = Runner(MemoryStore(), fake_backends(deployer=deployer), config=RunnerConfig(**config),
                    notifier=notices)
    runner.create(VERSION, SPEC)
    return runner, notices


# -- 1. the plan, checked against the spec -----------------------------------------------------------


def test_the_plan_names_each_real_step_and_each_dry_run() -> None:
    legacy = Strategy().describe(SPEC)
    assert legacy.startswith("real: trigger_complete_deployment (gstg,gprd-cny,gprd) on master; dry runs "
                             "(check mode on next-gen): trigger_gstg (gstg), trigger_cny (gprd-cny), "
                             "trigger_gprd (gprd).")
    individual = Strategy(individual_deployments=True).describe(SPEC)
    assert individual.startswith("real: trigger_gstg (gstg), trigger_cny (gprd-cny), trigger_gprd (gprd) on "
                                 "master; dry runs (check mode on next-gen): trigger_complete_deployment")
    assert Strategy(check_mode_everywhere=True).describe(SPEC).startswith(
        "everything in check mode, nothing is deployed:")


def test_a_plan_under_which_nothing_is_real_is_refused_unless_asked_for(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.sqlite")
    refused = ds("start", VERSION, "--spec", "reordered", "--store", journal, cwd=tmp_path)
    assert refused.returncode == 2
    assert ("spec 'reordered' has no legacy_deployment step, so with individual_deployments = false nothing "
            "would really deploy") in refused.stderr
    assert not Path(journal).exists() or "13.10" not in ds("status", "--store", journal, cwd=tmp_path).stdout
    (tmp_path / "deploystate.toml").write_text("[strategy]\ncheck_mode_everywhere = true\n", encoding="utf-8")
    asked = ds("start", VERSION, "--spec", "reordered", "--store", journal, cwd=tmp_path)
    assert asked.returncode == 0, asked.stderr
    real = ds("start", "13.10.202103011221", "--spec", "reordered", "--store", journal, cwd=tmp_path,
              INDIVIDUAL_DEPLOYMENTS="true")
    assert real.returncode == 0, real.stderr
    with pytest.raises(DeploystateError, match="no per-environment deployment step"):
        Strategy(individual_deployments=True).check(
            builtin_spec("seed").__class__.from_mapping({"name": "legacy-only", "steps": [
                {"name": "tag", "kind": "tag"},
                {"name": "all", "kind": "legacy_deployment", "environments": ["a", "b"], "needs": ["tag"]}]}))


def test_start_status_and_json_say_which_steps_are_real(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.sqlite")
    started = ds("start", VERSION, "--store", journal, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    status = ds("status", VERSION, "--store", journal, cwd=tmp_path)
    assert "real path, simulated: trigger_complete_deployment (gstg,gprd-cny,gprd) on master" in status.stdout
    data = ds("status", VERSION, "--store", journal, "--json", cwd=tmp_path)
    assert '"real_steps": [\n    "trigger_complete_deployment"\n  ]' in data.stdout
    dry_runs = '"dry_run_steps": [\n    "trigger_gstg",\n    "trigger_cny",\n    "trigger_gprd"\n  ]'
    assert dry_runs in data.stdout


# -- 2. a simulation never says REAL ------------------------------------------------------------------


def test_a_simulated_backend_says_the_real_path_is_simulated(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.sqlite")
    assert ds("start", VERSION, "--store", journal, cwd=tmp_path).returncode == 0
    ran = ds("run", VERSION, "--store", journal, cwd=tmp_path)
    assert "trigger_complete_deployment: starting attempt 1 (gstg,gprd-cny,gprd at master, the real path, " \
           "simulated)" in ran.stdout, ran.stdout
    assert "REAL" not in ran.stdout
    status = ds("status", VERSION, "--store", journal, cwd=tmp_path).stdout
    assert "@master, the real path, simulated" in status and "REAL" not in status


# -- 3. a failed dry run is a warning ------------------------------------------------------------------


def canary_dry_run_fails(request: TriggerRequest, reads: int) -> Outcome:
    return Outcome.FAILED if request.environments == ("gprd-cny",) else Outcome.SUCCEEDED


def test_a_failed_dry_run_is_a_warning_and_the_rollout_is_the_real_paths() -> None:
    runner, notices = runner_with(canary_dry_run_fails, auto_promote="rm")
    result = runner.run(VERSION)
    assert result.stop is Stop.DONE and result.view.status == "done"
    assert result.view.standing.situation == "done; dry run failed at trigger_cny"
    assert result.message == f"rollout {VERSION} is done; dry run failed at trigger_cny"
    # Only the dry runs after it are held: production's own dry run (and its gates) never start.
    assert result.view.steps["trigger_gprd"].phase is Phase.PENDING
    assert result.view.steps["trigger_complete_deployment"].phase is Phase.SUCCEEDED
    failure = [n for n in notices.notices if n.action == Action.FAIL]
    assert [(n.step, n.severity) for n in failure] == [("trigger_cny", "warning")]
    assert "trigger_cny: dry run FAILED (pipeline 3)" in failure[0].message


def test_strict_shadow_makes_a_failed_dry_run_fail_the_rollout() -> None:
    runner, _ = runner_with(canary_dry_run_fails, auto_promote="rm", failed_watch_s=60.0,
                            strategy=Strategy(strict_shadow=True))
    result = runner.run(VERSION)
    assert result.stop is Stop.FAILED and result.view.standing.failed == ("trigger_cny",)


# -- 4. production never starts before its gates ---------------------------------------------------


@pytest.mark.parametrize("individual", [False, True], ids=["legacy real", "individual real"])
def test_production_starts_only_after_its_bake_and_promotion(individual: bool) -> None:
    runner, _ = runner_with(auto_promote="rm", strategy=Strategy(individual_deployments=individual))
    assert runner.run(VERSION).stop is Stop.DONE
    records = runner.store.read(VERSION)
    start = next(r.seq for r in records if r.action == Action.START and r.step == "trigger_gprd")
    gates = [r.seq for r in records if r.action == Action.SUCCEED and r.step in ("baking_time",
                                                                                  "manual_promotion")]
    assert len(gates) == 2 and max(gates) < start


def test_the_plan_says_which_gates_protect_production() -> None:
    assert ("gprd is really deployed by trigger_complete_deployment, whose bake and promotion live in the "
            "deployer's own pipeline; deploystate's baking_time and manual_promotion gate only the dry run "
            "trigger_gprd") in Strategy().describe(SPEC)
    assert ("deploystate's baking_time and manual_promotion gate trigger_gprd (gprd)"
            in Strategy(individual_deployments=True).describe(SPEC))


# -- 6. who may promote ------------------------------------------------------------------------------


def test_only_release_managers_may_promote_or_skip_the_bake() -> None:
    runner, _ = runner_with(release_managers=frozenset({"alice"}))
    assert runner.run(VERSION).stop is Stop.PROMOTION
    before = runner.store.read(VERSION)
    for act in (lambda: runner.promote(VERSION, "mallory"),
                lambda: runner.skip_bake(VERSION, "mallory", "x")):
        with pytest.raises(DeploystateError, match="'mallory' is not a release manager"):
            act()
    assert runner.store.read(VERSION) == before
    runner.promote(VERSION, "alice", "checks green")
    assert runner.run(VERSION).stop is Stop.DONE


def test_release_managers_come_from_the_settings_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "rm.txt").write_text("# this month\nalice\nbob  # backup\n\n", encoding="utf-8")
    config = tmp_path / "deploystate.toml"
    config.write_text('[deploystate]\nrelease_managers = ["carol"]\nrelease_managers_file = "rm.txt"\n',
                      encoding="utf-8")
    assert load_config(config, env={}).runner.release_managers == {"alice", "bob", "carol"}
    assert load_config(env={}).runner.release_managers is None  # without a list: anyone, as before
    config.write_text("[deploystate]\nrelease_managers = []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="names nobody"):
        load_config(config, env={})


def test_the_command_line_refuses_a_promotion_by_someone_not_on_the_list(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.sqlite")
    (tmp_path / "deploystate.toml").write_text('[deploystate]\nrelease_managers = ["alice"]\n',
                                               encoding="utf-8")
    assert ds("start", VERSION, "--store", journal, cwd=tmp_path).returncode == 0
    assert ds("run", VERSION, "--store", journal, cwd=tmp_path).returncode == 1
    refused = ds("promote", VERSION, "--by", "mallory", "--store", journal, cwd=tmp_path)
    assert refused.returncode == 2 and "'mallory' is not a release manager" in refused.stderr
    assert ds("promote", VERSION, "--by", "alice", "--store", journal, cwd=tmp_path).returncode == 0

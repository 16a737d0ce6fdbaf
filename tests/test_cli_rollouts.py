"""The rollout commands: simulate, start, run, status, promote, retry, abort, history.

Main paths run the real command line as a subprocess against real SQLite files and a simulated
world file; error cases run ``main()`` in-process and check that the journal file's bytes did
not change.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deploystate_backends.simulated import World

from deploystate import registry
from deploystate.cli import main
from deploystate.config import load_config
from deploystate.crashpoint import KILL_AT
from deploystate.journal import MemoryStore
from deploystate.machine import Phase
from deploystate.notices import FanOut
from deploystate.rollout import rebuild
from deploystate.runner import Runner
from deploystate.spec import default_spec

VERSION = "13.10.202103011220"
OTHER = "13.10.202103011221"
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC",
                "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", KILL_AT)
ENVIRONMENTS = {"gstg", "gprd-cny", "gprd"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    env.update(extra)
    return env


def ds(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploystate", *args], capture_output=True, text=True,
                          timeout=180, check=False, cwd=cwd, env=clean_env(**env))


def one_json(stdout: str) -> Any:
    return json.loads(stdout)  # fails on anything but exactly one JSON document


def assert_each_environment_triggered_once_per_step(summary: dict[str, Any]) -> None:
    environments = summary["environments"]
    assert set(environments) == ENVIRONMENTS
    for environment, entry in environments.items():
        assert entry["steps"], environment
        for step, counts in entry["steps"].items():
            assert counts == {"journal": 1, "deployer": 1}, (environment, step, counts)


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # In-process runs read the environment and ./deploystate.toml: give them neither.
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


# -- main paths, as a subprocess -------------------------------------------------------------


def test_simulate_reaches_done_with_every_environment_triggered_once(tmp_path: Path) -> None:
    done = ds("simulate", VERSION, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = one_json(done.stdout)
    assert summary["status"] == "done" and summary["stop"] == "done" and summary["exit_code"] == 0
    assert {s["phase"] for s in summary["steps"]} == {"succeeded"}
    assert all(s["attempts"] == 1 for s in summary["steps"])
    deployments = [s for s in summary["steps"] if s["environments"]]
    assert {s["name"] for s in deployments} == {"trigger_gstg", "trigger_cny", "trigger_gprd",
                                                "trigger_complete_deployment"}
    assert all(s["duration_s"] > 0 and s["deployer_triggers"] == 1 for s in deployments)
    assert all(s["check_mode"] is True for s in deployments)  # a simulation is check mode throughout
    assert_each_environment_triggered_once_per_step(summary)
    # Live progress went to stderr, so stdout stayed one document.
    assert "trigger_gprd: succeeded" in done.stderr
    assert not list(tmp_path.iterdir())  # without --store nothing is written


def test_simulate_failing_production_exits_1_and_names_it(tmp_path: Path) -> None:
    failed = ds("simulate", VERSION, "--fail", "gprd", cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    out = failed.stdout
    # The real path (the legacy deployment, which deploys gprd too) failed: an error; the
    # per-environment gprd deployment is a dry run here, its failure a warning.
    assert "X trigger_complete_deployment: FAILED" in out  # the live progress lines
    assert "! trigger_gprd: dry run FAILED" in out
    timeline = out[out.index("Timeline of"):]
    assert "Result: FAILED" in timeline
    assert "failed:   trigger_complete_deployment (gstg,gprd-cny,gprd): deployer pipeline" in timeline
    assert "dry run:  trigger_gprd (gprd): deployer pipeline" in timeline
    assert "trigger_gstg " in timeline and "succeeded" in timeline


def test_retry_fixes_reaches_done_without_a_second_trigger(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "journal.sqlite"
    done = ds("simulate", VERSION, "--retry-fixes", "gstg", "--store", str(store), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = one_json(done.stdout)
    assert summary["status"] == "done"
    assert_each_environment_triggered_once_per_step(summary)
    history = ds("history", VERSION, "--store", str(store), "--json", cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    records = one_json(history.stdout)  # one JSON array
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["action"] == "created" and records[-1]["action"] == "finish"
    gstg = [r["action"] for r in records if r["step"] == "trigger_gstg"]
    # It failed, a human retried the job in the deployer, and the same pipeline went on.
    assert gstg == ["start", "triggered", "fail", "resume", "succeed"]
    assert all({"at", "at_utc", "actor", "action", "step", "data"} <= set(r) for r in records)


def sleeps_until_the_bake_runs() -> int:
    """How many times the runner sleeps before the first sleep inside the bake (default settings).

    Found by running the same rollout in-process with a real runner on the same simulated world:
    the simulation is deterministic, so the subprocess below reaches the same checkpoints.
    """
    store = MemoryStore()
    backends = registry.create("simulated", {})
    config = load_config(env={}).runner_config()
    sleeps: list[bool] = []

    def checkpoint(name: str) -> None:
        if name == "before-sleep":
            sleeps.append(rebuild(store.read(VERSION)).phases["baking_time"] is Phase.RUNNING)

    runner = Runner(store, backends, config=config, notifier=FanOut([]), checkpoint=checkpoint)
    runner.create(VERSION, default_spec())
    runner.run(VERSION)
    return sleeps.index(True) + 1


def read(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(argv) == 0
    return one_json(capsys.readouterr().out)


def test_start_run_killed_in_bake_skip_bake_promote_run_to_done(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "journal.sqlite")
    started = ds("start", VERSION, "--store", store, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert f"deploystate run {VERSION}" in started.stdout

    killed = ds("run", VERSION, "--store", store, cwd=tmp_path,
                **{KILL_AT: f"before-sleep:{sleeps_until_the_bake_runs()}"})
    assert killed.returncode == -signal.SIGKILL
    detail = read(["status", VERSION, "--store", store, "--json"], capsys)
    assert {s["name"]: s["phase"] for s in detail["steps"]}["baking_time"] == "running"
    assert f"deploystate skip-bake {VERSION} --by YOU --reason TEXT" in "\n".join(detail["next"])

    skipped = ds("skip-bake", VERSION, "--by", "dana", "--reason", "incident 1234", "--store", store,
                 cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    waiting = ds("run", VERSION, "--store", store, cwd=tmp_path)
    assert waiting.returncode == 1, waiting.stderr
    assert "waiting for promotion" in waiting.stdout
    assert f"deploystate promote {VERSION} --by YOU" in waiting.stdout
    detail = read(["status", VERSION, "--store", store, "--json"], capsys)
    phases = {s["name"]: s["phase"] for s in detail["steps"]}
    assert detail["situation"] == "waiting for promotion"
    assert phases["manual_promotion"] == "running" and phases["trigger_gprd"] == "pending"

    promoted = ds("promote", VERSION, "--by", "alice", "--reason", "checks green", "--store", store,
                  cwd=tmp_path)
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted by alice" in promoted.stdout
    finished = ds("run", VERSION, "--store", store, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert f"rollout {VERSION} is done" in finished.stdout

    listing = read(["status", "--store", store, "--json"], capsys)
    assert [(r["rollout"], r["status"]) for r in listing] == [(VERSION, "done")]
    records = read(["history", VERSION, "--store", store, "--json"], capsys)
    gates = [(r["step"], r["action"], r["actor"], r["data"]) for r in records
             if r["actor"] != "deploystate" and r["action"] != "checked"]
    assert gates == [("baking_time", "skip", "dana", {"by": "dana", "reason": "incident 1234"}),
                     ("manual_promotion", "succeed", "alice",
                      {"by": "alice", "reason": "checks green", "checks": "passed"})]
    checked = [r for r in records if r["action"] == "checked"]
    assert [(r["actor"], r["data"]["for"], r["data"]["passed"]) for r in checked] == [
        ("alice", "promotion", True)]  # the promotion's checks, recorded as who promoted
    with World.open(Path(store + ".sim"), create=False) as world:
        for environment in ENVIRONMENTS:
            assert world.trigger_count(environment, alone=True) == 1, environment


def test_retry_after_a_failure_then_abort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "journal.sqlite")
    failed = ds("simulate", VERSION, "--fail", "gstg", "--store", store, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert f"deploystate retry {VERSION} trigger_complete_deployment --store {store}" in failed.stdout
    assert "! trigger_gstg: dry run FAILED" in failed.stdout  # a dry run: a warning, not the result

    retried = ds("retry", VERSION, "gstg", "--by", "bob", "--store", store, cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    again = ds("run", VERSION, "--store", store, cwd=tmp_path)
    assert again.returncode == 1  # gstg always fails in this world: the new attempt fails too
    assert "trigger_gstg: starting attempt 2" in again.stdout

    aborted = ds("abort", VERSION, "--reason", "gstg is broken", "--by", "carol", "--store", store,
                 cwd=tmp_path)
    assert aborted.returncode == 0, aborted.stderr
    after = ds("run", VERSION, "--store", store, cwd=tmp_path)
    assert after.returncode == 1 and "aborted: gstg is broken" in after.stdout

    records = read(["history", VERSION, "--store", store, "--json"], capsys)
    assert [(r["actor"], r["step"]) for r in records if r["action"] == "retry"] == [("bob", "trigger_gstg")]
    assert [(r["actor"], r["data"]["reason"]) for r in records if r["action"] == "abort"] == [
        ("carol", "gstg is broken")]
    detail = read(["status", VERSION, "--store", store, "--json"], capsys)
    gstg = next(s for s in detail["steps"] if s["name"] == "trigger_gstg")
    assert detail["status"] == "aborted" and gstg["attempts"] == 2 and gstg["triggers"] == 2
    with World.open(Path(store + ".sim"), create=False) as world:
        keys = [t.key for t in world.triggers() if t.environments == ("gstg",)]
    assert keys == [f"{VERSION}/trigger_gstg/1", f"{VERSION}/trigger_gstg/2"]


def test_killed_run_resumes_with_the_same_command(tmp_path: Path) -> None:
    store = str(tmp_path / "journal.sqlite")
    command = ("simulate", VERSION, "--store", store, "--json")
    killed = ds(*command, cwd=tmp_path, **{KILL_AT: "after-trigger:2"})
    assert killed.returncode == -signal.SIGKILL
    resumed = ds(*command, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming rollout" in resumed.stderr
    assert_each_environment_triggered_once_per_step(one_json(resumed.stdout))


# -- in-process: details of the output -------------------------------------------------------


@pytest.fixture(scope="module")
def failed_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal (and its simulated world) holding VERSION, stopped with gstg failed."""
    folder = tmp_path_factory.mktemp("failed")
    store = folder / "journal.sqlite"
    result = subprocess.run([sys.executable, "-m", "deploystate", "simulate", VERSION, "--fail", "gstg",
                             "--store", str(store)], capture_output=True, text=True, timeout=180,
                            check=False, cwd=folder, env=clean_env())
    assert result.returncode == 1, result.stderr
    return store


@pytest.fixture
def store(failed_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "journal.sqlite"
    shutil.copyfile(failed_store, copy)
    shutil.copyfile(failed_store.with_name(failed_store.name + ".sim"), tmp_path / "journal.sqlite.sim")
    return copy


def test_status_shows_the_failure_and_what_to_do(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", VERSION, "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"rollout {VERSION}: failed: trigger_complete_deployment; dry run failed at "
                          "trigger_gstg\n")
    assert "FAILED: deployer pipeline" in out
    assert f"deploystate retry {VERSION} trigger_complete_deployment" in out

    assert main(["status", VERSION, "--store", str(store), "--diagram"]) == 0
    diagram = capsys.readouterr().out
    assert diagram.lstrip().startswith("%%") and "stateDiagram-v2" in diagram
    assert "trigger_gstg : [failed]" in diagram and "trigger_cny : [pending]" in diagram

    assert main(["status", "--store", str(store)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rollout", "state", "created", "last", "change"]
    assert table[1].startswith(f"{VERSION}  failed: trigger_complete_deployment; dry run failed at "
                               "trigger_gstg")


def test_history_text_has_one_line_per_record(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", VERSION, "--store", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    with sqlite3.connect(store) as db:
        count = db.execute("SELECT count(*) FROM records").fetchone()[0]
    assert len(lines) == count + 1
    assert lines[1].split()[:6] == ["1", "2021-03-01", "12:20:00", "UTC", "deploystate", "created"]
    assert any(" fail " in line and "trigger_gstg" in line for line in lines)


def test_simulate_individual_deployments_swaps_the_real_path(capsys: pytest.CaptureFixture[str]) -> None:
    summary = read(["simulate", VERSION, "--individual-deployments", "--seed", "3", "--json"], capsys)
    assert summary["settings"]["individual_deployments"] is True
    refs = {s["name"]: s["ref"] for s in summary["steps"] if s["environments"]}
    assert refs == {"trigger_gstg": "master", "trigger_cny": "master", "trigger_gprd": "master",
                    "trigger_complete_deployment": "next-gen"}
    assert "seed 3" in summary["backend"]


def test_simulate_resumes_with_the_journals_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "journal.sqlite")
    first = read(["simulate", VERSION, "--store", store, "--json"], capsys)
    again = read(["simulate", VERSION, "--store", store, "--spec", "reordered", "--json"], capsys)
    assert first["spec"] == again["spec"] == "seed" and again["records"] == first["records"]


# -- in-process: errors are one line, exit 2, and change nothing ------------------------------


def assert_refused(argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str,
                   unchanged: Path | None = None) -> None:
    before = unchanged.read_bytes() if unchanged is not None else None
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("deploystate: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert captured.out == ""
    if unchanged is not None:
        assert unchanged.read_bytes() == before


@pytest.mark.parametrize("version", ["13.10", "13.10.20210301122", "v13.10.202103011220",
                                     "13.10.202113011220"])
def test_bad_versions_are_refused_before_anything_is_written(
        version: str, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Commands that open a backend have it check the version (the simulated one's rule).
    for command in (["start", version], ["run", version], ["promote", version, "--by", "x"],
                    ["abort", version, "--reason", "x"], ["retry", version, "gstg", "--by", "x"]):
        assert_refused([*command, "--store", str(store)], capsys, repr(version), "e.g. 13.10.",
                       unchanged=store)
    # Those that only read open none: the journal says it has no such rollout.
    for command in (["history", version], ["status", version]):
        assert_refused([*command, "--store", str(store)], capsys, f"no rollout {version} in the journal",
                       unchanged=store)
    fresh = tmp_path / "fresh.sqlite"
    assert_refused(["simulate", version, "--store", str(fresh)], capsys, repr(version), "e.g. 13.10.")
    assert not fresh.exists() and not Path(str(fresh) + ".sim").exists()


def test_unknown_rollout(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["run", OTHER], ["status", OTHER], ["history", OTHER], ["abort", OTHER, "--reason", "x"],
                    ["promote", OTHER, "--by", "x"], ["retry", OTHER, "gstg", "--by", "x"]):
        assert_refused([*command, "--store", str(store)], capsys, f"no rollout {OTHER}", unchanged=store)


def test_missing_journal_is_not_created_by_commands_that_only_read_or_act(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.sqlite"
    for command in (["status"], ["run", VERSION], ["promote", VERSION, "--by", "x"]):
        assert_refused([*command, "--store", str(missing)], capsys, f"no journal at {missing}")
    assert not missing.exists()


def test_unknown_environment_or_step_and_wrong_moment(store: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(["retry", VERSION, "gprd-xyz", "--by", "x", "--store", str(store)], capsys,
                   "no step or environment 'gprd-xyz'", unchanged=store)
    assert_refused(["retry", VERSION, "trigger_cny", "--by", "x", "--store", str(store)], capsys,
                   "trigger_cny is pending, not failed", unchanged=store)
    assert_refused(["promote", VERSION, "--by", "x", "--store", str(store)], capsys,
                   "not waiting for promotion", unchanged=store)
    assert_refused(["simulate", OTHER, "--fail", "gprd-xyz", "--store", str(store)], capsys,
                   "--fail gprd-xyz", "environments: gprd, gprd-cny, gstg", unchanged=store)
    assert_refused(["start", VERSION, "--store", str(store)], capsys, "already exists", unchanged=store)


def test_corrupted_store_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"this is not a journal\n" * 100)
    for command in (["status"], ["status", VERSION], ["run", VERSION], ["start", VERSION],
                    ["simulate", VERSION], ["history", VERSION]):
        assert_refused([*command, "--store", str(damaged)], capsys, str(damaged), "not a deploystate journal",
                       unchanged=damaged)
    assert not Path(str(damaged) + ".sim").exists()


@pytest.mark.parametrize("page", [1, 2])
def test_damaged_journal_pages(page: int, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(store.read_bytes())
    start = page * 4096  # a page after the header page; the file still looks like SQLite
    data[start:start + 200] = b"\xff" * 200
    store.write_bytes(bytes(data))
    for command in (["status"], ["run", VERSION], ["start", OTHER]):
        assert_refused([*command, "--store", str(store)], capsys, str(store), "it was not changed",
                       unchanged=store)


def test_foreign_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users (name) VALUES ('ada')")
    db.close()
    for command in (["start", VERSION], ["simulate", VERSION], ["status"]):
        assert_refused([*command, "--store", str(foreign)], capsys, "another program", unchanged=foreign)


def test_bad_config_file(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "deploystate.toml").write_text("[deploystate\nbackend = 'simulated'\n")
    assert_refused(["run", VERSION, "--store", str(store)], capsys, "deploystate.toml", "not valid TOML",
                   unchanged=store)
    (tmp_path / "deploystate.toml").write_text("[limits]\ndeployment_wait_minutes = -5\n")
    assert_refused(["start", OTHER, "--store", str(store)], capsys,
                   "deployment_wait_minutes must be between 1 and 10080 minutes (7 days), got -5",
                   unchanged=store)
    (tmp_path / "deploystate.toml").write_text("[deploystate]\nbackend = 'nosuch'\n")
    assert_refused(["start", OTHER, "--store", str(store)], capsys, "no backend named 'nosuch'",
                   unchanged=store)
    assert_refused(["status", "--config", str(tmp_path / "missing.toml"), "--store", str(store)], capsys,
                   "missing.toml does not exist", unchanged=store)


def test_bad_environment_settings(store: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("INDIVIDUAL_DEPLOYMENTS", "maybe")
    assert_refused(["run", VERSION, "--store", str(store)], capsys, "INDIVIDUAL_DEPLOYMENTS='maybe'",
                   unchanged=store)
    assert_refused(["simulate", VERSION], capsys, "INDIVIDUAL_DEPLOYMENTS")
    monkeypatch.delenv("INDIVIDUAL_DEPLOYMENTS")
    for value in ("before-trigger", "nowhere:1", "before-trigger:0", "before-trigger:x"):
        monkeypatch.setenv(KILL_AT, value)
        assert_refused(["run", VERSION, "--store", str(store)], capsys, KILL_AT, "before-trigger",
                       unchanged=store)



# -- check-store: the full check, which opening a journal does not make ------------------------


def test_check_store_finds_nothing_in_a_sound_journal_and_writes_nothing(
        store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = store.read_bytes()
    assert main(["check-store", "--store", str(store)]) == 0
    assert capsys.readouterr().out == f"journal {store}: no problems found\n"
    assert store.read_bytes() == before


def test_check_store_lists_what_opening_does_not_see(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(store) as db:
        db.execute("DELETE FROM records WHERE rollout_id = ? AND seq = 3", (VERSION,))
    db.close()
    assert main(["status", VERSION, "--store", str(store)]) == 2  # the gap is only met in use
    capsys.readouterr()
    assert main(["check-store", "--store", str(store)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"journal {store}: ") and lines[0].endswith(" found")
    assert any(f"rollout {VERSION}: record 3 is missing" in line for line in lines[1:]), lines


def test_check_store_replays_every_rollout(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Sound as a file (numbering, JSON, tables), but the machine refuses it: finished at record 2.
    with sqlite3.connect(store) as db:
        db.execute("UPDATE records SET action = 'finish', step = NULL WHERE rollout_id = ? AND seq = 2",
                   (VERSION,))
    db.close()
    assert main(["check-store", "--store", str(store)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"journal {store}: 1 problem found"
    assert lines[1].startswith(f"  rollout {VERSION} does not replay: ")


def test_check_store_refuses_what_is_no_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.sqlite"
    assert_refused(["check-store", "--store", str(missing)], capsys, f"no journal at {missing}")
    assert not missing.exists()
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"this is not a journal\n" * 100)
    assert_refused(["check-store", "--store", str(damaged)], capsys, "not a deploystate journal",
                   unchanged=damaged)

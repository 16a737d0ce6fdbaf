"""A real ``deploystate simulate`` process killed with SIGKILL, then resumed by the same command.

Each test runs the command line as a subprocess with ``DEPLOYSTATE_KILL_AT=CHECKPOINT:N`` (see
``deploystate.crashpoint``): the process kills itself the Nth time the runner reaches that
checkpoint, leaving its SQLite journal and its simulated world file exactly as a power cut would.
Running the same command again must finish the rollout, and then:

- the simulated deployer's OWN record (its world file, read through its API) holds exactly one
  trigger per (step, environment), under the key the journal wrote;
- the journal replays, its records are numbered 1..n with ``created`` first, and it holds the
  same events at the same virtual times as an uninterrupted run of the same scenario: nothing
  lost, nothing written twice;
- the bake has a single start, and its success comes ``duration`` after that start on the
  virtual clock, even when the process died in the middle of it.

Where to kill is read from an uninterrupted in-process run of the same scenario (the simulation
is deterministic, so the subprocess reaches the same checkpoints in the same order); the tests
name points by what is happening there (a trigger, the bake, a poll), not by hard-coded counts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from deploystate_backends.simulated import World

from deploystate import gates, registry
from deploystate.actions import Action
from deploystate.config import load_config
from deploystate.crashpoint import KILL_AT
from deploystate.journal import MemoryStore, Record
from deploystate.machine import Phase
from deploystate.notices import FanOut
from deploystate.rollout import rebuild
from deploystate.runner import CHECKPOINTS, Runner
from deploystate.simulation import SIMULATED, settings_for_simulate, world_beside
from deploystate.spec import StepKind, default_spec
from deploystate.sqlite_store import SQLiteStore

VERSION = "13.10.202103011220"
SPEC = default_spec()
BAKE = next(s for s in SPEC.steps if s.kind is StepKind.BAKE)
DEPLOYMENTS = [s for s in SPEC.steps if s.targets]
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC",
                "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", KILL_AT)
KILLED = -signal.SIGKILL


# -- the uninterrupted run: where the checkpoints are, and what the journal must hold ----------


@attrs.frozen
class Point:
    """One checkpoint reached by an uninterrupted run, and the rollout as it stood there."""

    name: str
    n: int  # the Nth time this checkpoint was reached: DEPLOYSTATE_KILL_AT=name:n
    now: float
    phases: dict[str, Phase]
    untriggered: frozenset[str]  # deployment steps started (intent written) but not yet triggered

    @property
    def kill_at(self) -> str:
        return f"{self.name}:{self.n}"


@attrs.frozen
class Reference:
    points: list[Point]
    records: list[Record]

    def first(self, name: str, where: Callable[[Point], bool] = lambda p: True) -> Point:
        return next(p for p in self.points if p.name == name and where(p))

    def count(self, name: str) -> int:
        return sum(1 for p in self.points if p.name == name)


def reference_run(*, fail: Sequence[str] = (), retry_fixes: Sequence[str] = ()) -> Reference:
    """What ``simulate VERSION [--fail ENV] [--retry-fixes ENV]`` does, in-process and without kills."""
    config = load_config(env={})
    settings = settings_for_simulate(config.settings_for(SIMULATED), spec=SPEC, store=None, seed=None,
                                     fail=fail, retry_fixes=retry_fixes, hang=())
    backends = registry.create(SIMULATED, settings)
    runner_config = attrs.evolve(config.runner_config(auto_promote="simulation"),
                                 strategy=attrs.evolve(config.strategy, check_mode_everywhere=True))
    store = MemoryStore()
    points: list[Point] = []
    reached: Counter[str] = Counter()

    def checkpoint(name: str) -> None:
        reached[name] += 1
        view = rebuild(store.read(VERSION))
        untriggered = frozenset(s.name for s in DEPLOYMENTS if view.phases[s.name] is Phase.RUNNING
                                and view.steps[s.name].deployment_id is None)
        points.append(Point(name, reached[name], backends.clock.now(), view.phases, untriggered))

    # The production checks simulate runs with (the simulated backend's, and environment_lock).
    checks = gates.configured(config.check_settings, backends, store)
    runner = Runner(store, backends, config=runner_config, notifier=FanOut([]), checkpoint=checkpoint,
                    checks=checks)
    runner.create(VERSION, SPEC)
    runner.run(VERSION)
    return Reference(points, store.read(VERSION))


@pytest.fixture(scope="module")
def plain() -> Reference:
    reference = reference_run()
    assert reference.records[-1].action == Action.FINISH.value  # the scenario itself reaches done
    assert set(CHECKPOINTS) <= {p.name for p in reference.points}
    return reference


# -- running the real command ------------------------------------------------------------------


def deploystate(*args: str, cwd: Path, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    if kill_at is not None:
        env[KILL_AT] = kill_at
    return subprocess.run([sys.executable, "-m", "deploystate", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd, env=env)


@attrs.define
class Rollout:
    """One journal (and the world file beside it), driven by the same ``simulate`` command."""

    folder: Path
    flags: tuple[str, ...] = ()
    kills: int = 0

    @property
    def store(self) -> Path:
        return self.folder / "journal.sqlite"

    @property
    def command(self) -> tuple[str, ...]:
        return ("simulate", VERSION, "--store", str(self.store), "--json", *self.flags)

    def kill(self, at: str) -> None:
        """Run the command and require that it was killed at ``at``."""
        result = deploystate(*self.command, cwd=self.folder, kill_at=at)
        assert result.returncode == KILLED, (at, result.returncode, result.stderr[-2000:])
        self.kills += 1

    def maybe_kill(self, at: str) -> bool:
        """Run the command killing it at ``at`` if it gets there; True if it finished instead."""
        result = deploystate(*self.command, cwd=self.folder, kill_at=at)
        assert result.returncode in (KILLED, 0), (at, result.returncode, result.stderr[-2000:])
        self.kills += result.returncode == KILLED
        return result.returncode == 0

    def finish(self) -> dict[str, Any]:
        result = deploystate(*self.command, cwd=self.folder)
        assert result.returncode == 0, result.stderr[-3000:]
        if self.kills:
            assert "resuming rollout" in result.stderr
        summary: dict[str, Any] = json.loads(result.stdout)
        return summary

    def records(self) -> list[Record]:
        store = SQLiteStore(self.store)
        try:
            return store.read(VERSION)
        finally:
            store.close()

    def world(self) -> World:
        return World.open(world_beside(self.store), create=False)


def triggered_keys(records: Sequence[Record]) -> set[str]:
    return {str(r.data["key"]) for r in records if r.action == Action.TRIGGERED}


def intents(records: Sequence[Record]) -> dict[str, str]:
    """Idempotency key -> step, for every deployment attempt the journal started."""
    return {str(r.data["key"]): str(r.step) for r in records
            if r.action == Action.START.value and "key" in r.data}


def events(records: Sequence[Record]) -> Counter[tuple[str, str | None, float]]:
    return Counter((r.action, r.step, round(r.at, 3)) for r in records)


# -- what every resumed rollout must satisfy -----------------------------------------------------


def assert_recovered(rollout: Rollout, summary: dict[str, Any], reference: Reference) -> None:
    assert summary["status"] == "done" and summary["exit_code"] == 0, summary["message"]
    records = rollout.records()

    # The deployer's own record: one trigger per attempt the journal started, under its key.
    with rollout.world() as world:
        triggers = world.triggers()
    started = intents(records)
    assert Counter(t.key for t in triggers) == Counter(started.keys()), "triggered twice, or never"
    by_step = {step.name: step for step in DEPLOYMENTS}
    pairs = Counter((started[t.key], environment) for t in triggers for environment in t.environments)
    expected = Counter((name, environment) for key, name in started.items()
                       for environment in by_step[name].targets)
    assert pairs == expected
    for environment, entry in summary["environments"].items():
        for step, counts in entry["steps"].items():
            assert counts["deployer"] == counts["journal"] == pairs[(step, environment)], environment

    # The journal: contiguous, created first, replayable, the same events as without kills.
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert records[0].action == "created"
    assert [r.action for r in records].count("created") == 1
    assert rebuild(records).status == "done"
    assert triggered_keys(records) == set(started), "a trigger the deployer accepted is missing"
    assert events(records) == events(reference.records)

    # The bake: started once, and over exactly its duration after that start.
    bake = [r for r in records if r.step == BAKE.name]
    assert [r.action for r in bake] == [Action.START.value, Action.SUCCEED.value]
    start, succeed = bake
    assert BAKE.duration_s is not None
    assert succeed.data["elapsed_s"] == pytest.approx(succeed.at - start.at)
    assert succeed.at - start.at == pytest.approx(BAKE.duration_s, abs=1.0)


# -- every checkpoint, at several points of the rollout --------------------------------------------


def spread(reference: Reference, name: str) -> list[int]:
    count = reference.count(name)
    return sorted({1, (count + 1) // 2, count})


@pytest.mark.parametrize("name", ["recorded", "before-call", "before-sleep"])
def test_killed_at_a_checkpoint_early_midway_and_late_then_resumed(
        name: str, plain: Reference, tmp_path: Path) -> None:
    for n in spread(plain, name):
        rollout = Rollout(tmp_path / f"{name}-{n}")
        rollout.folder.mkdir()
        rollout.kill(f"{name}:{n}")
        assert_recovered(rollout, rollout.finish(), plain)


@pytest.mark.parametrize("name", ["before-trigger", "after-trigger"])
def test_killed_at_every_trigger_between_intent_and_journal(name: str, plain: Reference,
                                                            tmp_path: Path) -> None:
    """Kill at each deployment's trigger in turn; each resumed run is killed at the next one.

    A resumed run first settles the attempt the killed one left open (its 1st time at the
    checkpoint), so killing it the 2nd time lands on the next deployment.
    """
    rollout = Rollout(tmp_path)
    at = f"{name}:1"
    for _ in range(len(DEPLOYMENTS) + 1):
        if rollout.maybe_kill(at):
            break
        # Killed with an intent durable in the journal and no trigger recorded there; the deployer
        # either never heard of it (before-trigger) or accepted it (after-trigger).
        records = rollout.records()
        open_keys = set(intents(records)) - triggered_keys(records)
        with rollout.world() as world:
            accepted = {t.key for t in world.triggers()}
        assert open_keys and len(open_keys & accepted) == (name == "after-trigger"), (open_keys, accepted)
        at = f"{name}:2"
    assert rollout.kills == len(DEPLOYMENTS) == plain.count(name)
    assert_recovered(rollout, rollout.finish(), plain)


# -- the bake ------------------------------------------------------------------------------------


def baking(point: Point) -> bool:
    return point.phases[BAKE.name] is Phase.RUNNING


def test_killed_twice_in_the_bake_resumes_with_the_time_that_remains(plain: Reference,
                                                                    tmp_path: Path) -> None:
    rollout = Rollout(tmp_path)
    rollout.kill(plain.first("before-sleep", baking).kill_at)
    started = next(r.at for r in rollout.records() if r.step == BAKE.name)
    # The process stays dead for a while: time goes on for the world (the virtual clock lives in
    # its file), so the bake has less left to run when the rollout resumes.
    with rollout.world() as world:
        assert world.clock.now() == started
        world.clock.advance(700)
    rollout.kill("before-sleep:1")  # resumed, waits for the rest of the bake, and dies again
    with rollout.world() as world:
        assert world.clock.now() == started + 700
        world.clock.advance(500)
    summary = rollout.finish()
    # Restarting the bake on either resume would end it 700 or 1200 seconds late.
    assert_recovered(rollout, summary, plain)


def test_killed_after_the_bake_ran_out_but_before_the_journal_knew(plain: Reference,
                                                                  tmp_path: Path) -> None:
    point = plain.first("before-record", lambda p: baking(p) and p.now >= next(
        q.now for q in plain.points if baking(q)) + (BAKE.duration_s or 0))
    rollout = Rollout(tmp_path)
    rollout.kill(point.kill_at)
    assert [r.action for r in rollout.records() if r.step == BAKE.name] == [Action.START.value]
    assert_recovered(rollout, rollout.finish(), plain)


# -- random kill points ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_killed_at_random_points_in_a_row(seed: int, plain: Reference, tmp_path: Path) -> None:
    """Three kills in a row at random checkpoints; a resumed run may finish before its kill point."""
    rng = random.Random(seed)
    rollout = Rollout(tmp_path)
    rollout.kill(rng.choice(plain.points).kill_at)
    for _ in range(2):
        if rollout.maybe_kill(rng.choice(plain.points).kill_at):
            break
    assert_recovered(rollout, rollout.finish(), plain)


# -- failures, retries in the deployer, and operator retries ----------------------------------------


def test_killed_while_a_failed_deployment_waits_for_a_human_retry(tmp_path: Path) -> None:
    reference = reference_run(retry_fixes=["gstg"])
    gstg = "trigger_gstg"
    rollout = Rollout(tmp_path, flags=("--retry-fixes", "gstg"))
    rollout.kill(reference.first("before-call", lambda p: p.phases[gstg] is Phase.FAILED).kill_at)
    assert [r.action for r in rollout.records() if r.step == gstg][-1] == Action.FAIL.value
    rollout.kill("before-sleep:1")
    summary = rollout.finish()
    assert_recovered(rollout, summary, reference)
    # The human's retry happened inside the same pipeline: resumed, never triggered again.
    assert [r.action for r in rollout.records() if r.step == gstg] == [
        "start", "triggered", "fail", "resume", "succeed"]


def test_operator_retry_of_a_failed_step_killed_around_the_new_trigger(tmp_path: Path) -> None:
    store = str(tmp_path / "journal.sqlite")
    failed = deploystate("simulate", VERSION, "--fail", "gstg", "--store", store, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr[-2000:]
    retried = deploystate("retry", VERSION, "gstg", "--by", "bob", "--store", store, cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    rollout = Rollout(tmp_path)
    second = f"{VERSION}/trigger_gstg/2"
    for at, known_to_deployer in (("before-trigger:1", False), ("after-trigger:1", True)):
        run = deploystate("run", VERSION, "--store", store, cwd=tmp_path, kill_at=at)
        assert run.returncode == KILLED, (at, run.stderr[-2000:])
        records = rollout.records()
        assert second in intents(records) and second not in triggered_keys(records)
        with rollout.world() as world:
            assert (world.find(second) is not None) is known_to_deployer
    again = deploystate("run", VERSION, "--store", store, cwd=tmp_path)
    assert again.returncode == 1, again.stderr[-2000:]  # gstg always fails in this world
    records = rollout.records()
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert rebuild(records).phases["trigger_gstg"] is Phase.FAILED
    assert [r.action for r in records if r.step == "trigger_gstg"] == [
        "start", "triggered", "fail", "retry", "start", "triggered", "fail"]
    with rollout.world() as world:
        keys = [t.key for t in world.triggers() if t.environments == ("gstg",)]
    assert keys == [f"{VERSION}/trigger_gstg/1", second]

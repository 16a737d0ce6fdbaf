"""Runners on a PostgreSQL journal, as CI jobs on several hosts would be: each a process with its own
connections, the simulated deployer's world in a file they all reach ([backends.simulated] world).

- The command line chooses the store by URL (``--store``, ``DEPLOYSTATE_STORE``, ``store =``).
- A runner killed with SIGKILL while it holds a rollout (at the worst moments: the deployer has
  accepted a trigger that the journal does not know of yet) loses its lock with its connection;
  the next runner takes the rollout over and finishes it, and every deployment was triggered once
  (counted by the simulated deployer's own record).
- Four runner processes on twenty rollouts in one database: for each rollout one of them at a time
  advances it (the others get RolloutBusy), all end done, each deployment triggered once.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
from deploystate_backends.postgres import PostgresStore
from deploystate_backends.simulated import World

from deploystate import registry
from deploystate.actions import Action
from deploystate.config import RunnerConfig
from deploystate.journal import Record, RolloutBusy
from deploystate.notices import FanOut
from deploystate.rollout import rebuild
from deploystate.runner import Runner, Stop
from deploystate.spec import Spec, default_spec

VERSION = "13.10.202103011220"
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC",
                "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", "DEPLOYSTATE_KILL_AT")
WAIT_S = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}, **extra}


@pytest.fixture
def folder(tmp_path: Path, pg_url: str) -> Path:
    """A working folder whose deploystate.toml points at a fresh PostgreSQL journal and names the
    simulated world's file."""
    (tmp_path / "deploystate.toml").write_text(
        f'[deploystate]\nbackend = "simulated"\nstore = "{pg_url}"\n\n'
        f'[backends.simulated]\nworld = "{tmp_path / "world.sim"}"\n', encoding="utf-8")
    return tmp_path


def deploystate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploystate", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd, env=clean_env(**env))


def journal(url: str, rollout: str = VERSION) -> list[Record]:
    with PostgresStore(url) as store:
        return store.read(rollout)


def deployer_keys(world: Path) -> Counter[str]:
    """Every idempotency key the simulated deployer was triggered with, from its own record."""
    if not world.exists():
        return Counter()
    with World.open(world, create=False) as opened:
        return Counter(t.key for t in opened.triggers())


def triggered(records: list[Record]) -> Counter[str]:
    return Counter(str(r.data["key"]) for r in records if r.action == Action.TRIGGERED)


def intents(records: list[Record]) -> set[str]:
    return {str(r.data["key"]) for r in records if r.action == Action.START.value and "key" in r.data}


def assert_once_each(url: str, world: Path, rollout: str = VERSION) -> None:
    records = journal(url, rollout)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    keys = deployer_keys(world)
    assert keys and set(keys.values()) == {1}, f"triggered twice: {keys}"
    assert triggered(records) == keys, "the journal and the deployer disagree about what was triggered"
    assert set(keys) <= intents(records)


# -- the command line ---------------------------------------------------------------------------------

def test_the_command_line_runs_a_rollout_on_a_postgresql_journal(folder: Path, pg_url: str) -> None:
    started = deploystate("start", VERSION, cwd=folder)
    assert started.returncode == 0, started.stderr
    assert f"journal: {pg_url}" in started.stdout
    ran = deploystate("run", VERSION, cwd=folder)
    assert ran.returncode == 1 and "waiting for promotion" in ran.stdout, ran.stdout + ran.stderr
    promoted = deploystate("promote", VERSION, "--by", "alice", "--reason", "green", cwd=folder)
    assert promoted.returncode == 0, promoted.stderr
    done = deploystate("run", VERSION, cwd=folder)
    assert done.returncode == 0 and f"rollout {VERSION} is done" in done.stdout, done.stderr
    # --store and DEPLOYSTATE_STORE name the same journal as the file does.
    status = deploystate("status", "--store", pg_url, cwd=folder.parent)
    assert status.returncode == 0 and VERSION in status.stdout and "done" in status.stdout, status.stderr
    history = deploystate("history", VERSION, cwd=folder.parent, DEPLOYSTATE_STORE=pg_url)
    assert history.returncode == 0 and "created" in history.stdout, history.stderr
    checked = deploystate("check-store", cwd=folder)
    assert checked.returncode == 0 and "no problems found" in checked.stdout, checked.stdout + checked.stderr
    assert_once_each(pg_url, folder / "world.sim")
    assert not list(folder.glob("*.log"))  # a URL has no "beside" for a structured log


def test_a_url_store_with_the_simulated_backend_needs_a_named_world(tmp_path: Path, pg_url: str) -> None:
    started = deploystate("start", VERSION, "--store", pg_url, cwd=tmp_path)
    assert started.returncode == 2
    assert "[backends.simulated] world = PATH" in started.stderr and len(started.stderr.splitlines()) == 1
    simulated = deploystate("simulate", VERSION, "--store", pg_url, cwd=tmp_path)
    assert simulated.returncode == 2 and "simulate keeps its journal in a SQLite file" in simulated.stderr


def test_a_journal_url_nobody_serves_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    status = deploystate("status", "--store", "postgresql://nobody@127.0.0.1:9/journal?connect_timeout=3",
                         cwd=tmp_path)
    assert status.returncode == 2
    assert status.stderr.startswith("deploystate: error: cannot reach PostgreSQL at 127.0.0.1:9/journal (")
    assert status.stderr.rstrip().endswith("start it or fix store; nothing was written")
    assert len(status.stderr.splitlines()) == 1


# -- kill -9 of a runner holding the rollout ------------------------------------------------------------

def run_until_taken(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``deploystate run``, again while refused as busy: the server ends a killed runner's session
    (and its lock) when it reads the connection's end, a moment after the kill."""
    deadline = time.monotonic() + 15
    while True:
        ran = deploystate("run", VERSION, cwd=folder, **env)
        if ran.returncode != 2 or "is being run by another process" not in ran.stderr:
            return ran
        assert time.monotonic() < deadline, "the killed runner's lock was never released"
        time.sleep(0.1)


@pytest.mark.parametrize("kill_at", ["after-trigger", "before-trigger"])
def test_runners_killed_while_triggering_another_takes_over_each_key_triggered_once(
        folder: Path, pg_url: str, kill_at: str) -> None:
    """Each runner dies (SIGKILL, the rollout held) at the first deployment it triggers itself; the
    next one takes the rollout over.  A runner passes the checkpoint first for each intent a killed
    one left open (before its look-up by key; after it, if the deployer has it): those are counted
    out of where it is killed."""
    assert deploystate("start", VERSION, cwd=folder).returncode == 0
    world = folder / "world.sim"
    kills = 0
    for _ in range(20):
        records = journal(pg_url)
        open_intents = intents(records) - set(triggered(records))
        passes = len(open_intents & set(deployer_keys(world)) if kill_at == "after-trigger" else open_intents)
        ran = run_until_taken(folder, DEPLOYSTATE_KILL_AT=f"{kill_at}:{passes + 1}")
        if ran.returncode == -signal.SIGKILL:
            kills += 1
            continue
        if ran.returncode == 1 and "waiting for promotion" in ran.stdout:
            assert deploystate("promote", VERSION, "--by", "alice", cwd=folder).returncode == 0
            continue
        assert ran.returncode == 0 and "is done" in ran.stdout, ran.stdout + ran.stderr
        break
    else:
        pytest.fail("the rollout never finished")
    assert kills >= 3, kills  # killed while triggering most of the four deployments
    assert_once_each(pg_url, folder / "world.sim")
    assert rebuild(journal(pg_url)).status == "done"


FREEZING_RUNNER = """
import os, signal, sys
from deploystate import registry
from deploystate.config import load_config
from deploystate.notices import FanOut
from deploystate.runner import Runner
from deploystate_backends.postgres import PostgresStore

url, world, version, stop_at = sys.argv[1:5]
reached = {}

def checkpoint(name):
    reached[name] = reached.get(name, 0) + 1
    if f"{name}:{reached[name]}" == stop_at:
        os.kill(os.getpid(), signal.SIGSTOP)

config = load_config(env={}).runner_config(auto_promote="release-manager")
backends = registry.create("simulated", {"world": world})
Runner(PostgresStore(url), backends, config=config, notifier=FanOut([]), checkpoint=checkpoint).run(version)
"""


def test_a_frozen_holder_excludes_others_until_killed_then_another_finishes(folder: Path,
                                                                            pg_url: str) -> None:
    assert deploystate("start", VERSION, cwd=folder).returncode == 0
    world = folder / "world.sim"
    holder = subprocess.Popen([sys.executable, "-c", FREEZING_RUNNER, pg_url, str(world), VERSION,
                               "after-trigger:1"], cwd=folder, env=clean_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:  # until it has stopped itself there, holding the rollout
            pid, status = os.waitpid(holder.pid, os.WNOHANG | os.WUNTRACED)
            if pid and os.WIFSTOPPED(status):
                break
            assert not pid, f"the runner ended first: {holder.stderr.read() if holder.stderr else ''}"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (accepted,) = deployer_keys(world)
        assert not triggered(journal(pg_url))  # the deployer has it, the journal does not know yet
        before = journal(pg_url)
        second = deploystate("run", VERSION, cwd=folder)
        assert second.returncode == 2 and "is being run by another process" in second.stderr, second.stderr
        assert journal(pg_url) == before and deployer_keys(world) == Counter([accepted])
        holder.kill()
        holder.wait(timeout=WAIT_S)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    taken = run_until_taken(folder)
    assert taken.returncode == 1 and "waiting for promotion" in taken.stdout, taken.stdout + taken.stderr
    assert deploystate("promote", VERSION, "--by", "alice", cwd=folder).returncode == 0
    assert run_until_taken(folder).returncode == 0
    assert_once_each(pg_url, world)
    assert deployer_keys(world)[accepted] == 1  # found by its key, never triggered again


# -- four runners, twenty rollouts ------------------------------------------------------------------------

ROLLOUTS = [f"13.10.2021030{day}{hour:02d}00" for day in (1, 2) for hour in range(8, 18)]
RUNNERS = 4


def _world(folder: str, version: str) -> str:
    return str(Path(folder) / f"{version}.sim")


def _own_environments(spec: Spec, suffix: str) -> Spec:
    """``spec`` deploying to environments of its own (``gprd-<suffix>``...): rollouts of different
    services, so that none supersedes another (the gate's version order) and each must end done."""
    def own(environment: str) -> str:
        return f"{environment}-{suffix}"

    return attrs.evolve(spec, steps=tuple(
        attrs.evolve(step, environment=None if step.environment is None else own(step.environment),
                     environments=tuple(own(e) for e in step.environments)) for step in spec.steps))


def _runner_process(url: str, folder: str, name: str, results: Any) -> None:
    """Advances every rollout it can get, a wake-up or two at a time, until all are done.

    Reports, for each run it got, (rollout, when its first and last checkpoint were reached
    (CLOCK_MONOTONIC, one clock for every process of the machine)), and how often it was refused."""
    try:
        results.put(_advance_all(url, folder, name))
    except BaseException as error:  # said to the test at once, not after its time-out
        results.put((name, [], 0, [f"{type(error).__name__}: {error}"]))
        raise


Report = tuple[str, list[tuple[str, float, float]], int, list[str]]


def _advance_all(url: str, folder: str, name: str) -> Report:
    rng = random.Random(name)
    held: list[tuple[str, float, float]] = []
    busy = 0
    store = PostgresStore(url)
    backends = {v: registry.create("simulated", {"world": _world(folder, v)}) for v in ROLLOUTS}
    moments: list[float] = []
    runners = {v: Runner(store, backends[v], config=RunnerConfig(auto_promote="bench"), notifier=FanOut([]),
                         checkpoint=lambda _name: moments.append(time.monotonic())) for v in ROLLOUTS}
    left = list(ROLLOUTS)
    deadline = time.monotonic() + 240
    try:
        while left and time.monotonic() < deadline:
            version = rng.choice(left)
            moments.clear()
            try:
                result = runners[version].run(version, max_wakeups=2)
            except RolloutBusy:
                busy += 1
                continue
            if moments:
                held.append((version, moments[0], moments[-1]))
            if result.stop is Stop.DONE:
                left.remove(version)
            else:
                assert result.stop is Stop.PAUSED, (version, result.stop, result.message)
    finally:
        for opened in backends.values():
            opened.close()
        store.close()
    return name, held, busy, left


def test_four_runners_on_twenty_rollouts_one_at_a_time_each_triggered_once(tmp_path: Path,
                                                                           pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        for index, version in enumerate(ROLLOUTS):
            spec = _own_environments(default_spec(), f"s{index}")
            with registry.create("simulated", {"world": _world(str(tmp_path), version)}) as backends:
                Runner(store, backends, config=RunnerConfig(), notifier=FanOut([])).create(version, spec)
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    names = [f"runner-{i}" for i in range(RUNNERS)]
    processes = [spawn.Process(target=_runner_process, args=(pg_url, str(tmp_path), name, results))
                 for name in names]
    for process in processes:
        process.start()
    reports = [results.get(timeout=240) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert all(not left for _, _, _, left in reports), [(n, left) for n, _, _, left in reports if left]
    assert sum(busy for _, _, busy, _ in reports) > 0, "no runner was ever refused: nothing was contended"
    by_rollout: dict[str, list[tuple[float, float, str]]] = {}
    for name, held, _, _ in reports:
        for version, first, last in held:
            by_rollout.setdefault(version, []).append((first, last, name))
    handed_over = 0
    for version, spans in by_rollout.items():
        spans.sort()
        for (_, end, who), (start, _, next_who) in itertools.pairwise(spans):
            assert end < start, f"{version}: {who} and {next_who} advanced it at the same time"
            handed_over += who != next_who
    assert handed_over > len(ROLLOUTS), "runners hardly took turns; the test proves little"
    with PostgresStore(pg_url) as store:
        assert store.check() == []
        for version in ROLLOUTS:
            assert rebuild(store.read(version)).status == "done"
            assert_once_each(pg_url, Path(_world(str(tmp_path), version)), version)

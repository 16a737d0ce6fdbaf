"""A CI job's own cost: what ``deploystate step VERSION STEP`` adds to GitLab's own job start.

Run from the repository root::

    python benchmarks/bench_step.py                       # 10 start-ups, one rollout's steps (~30 s)
    python benchmarks/bench_step.py --rounds 3            # a smoke run
    python benchmarks/bench_step.py --store postgresql://USER@HOST:PORT/DB   # the journal in PostgreSQL
                                                          # (an empty database: rollouts are kept)

Two numbers, against the GitLab stand-in on loopback (started here, in this process):

(a) start-up: from spawning ``deploystate step V wait_cng`` (a fresh Python process, as a CI job
    starts one) to the stand-in receiving its first API request (the package build's status), and
    to the process's exit; and ``deploystate step V tag``, a step that calls nothing outside, from
    spawn to exit (the floor: interpreter, imports, config, journal, one pass);
(b) journal round trips per step: every step of the seed spec advanced in this process as a job
    would (``step_cli.advance_step``, on the stand-in's virtual clock so waits cost no time), with
    the store wrapped to count each call (each is one round trip to a database server: append,
    read, last_seq, hold...), and for SQLite the SQL statements those calls ran (sqlite3's trace
    callback).  Per step: passes (calls outside), store calls, store calls per pass.

Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
from deploystate_backends.gitlab import create
from deploystate_backends.gitlab_standin import (
    CNG,
    DEPLOYER,
    OMNIBUS,
    AcceleratedClock,
    FaultPlan,
    Standin,
    VirtualClock,
    World,
    seed_package_builds,
)

from deploystate.runner import Runner, RunnerConfig
from deploystate.spec import StepKind, default_spec
from deploystate.step_cli import advance_step
from deploystate.strategy import Strategy

VERSION = "13.10.202103011220"
TOKENS = {"GITLAB_API_TOKEN": "standin-token", "DEPLOYER_TRIGGER_TOKEN": "deployer-trigger-token"}
SPEED = 6000.0


class FirstRequest:
    """Wraps the stand-in's request counter to note when each request arrived."""

    def __init__(self, standin: Standin) -> None:
        self.times: list[float] = []
        counters = standin.world.counters
        original = counters.request
        lock = threading.Lock()

        def request(method: str, route: str) -> None:
            with lock:
                self.times.append(time.time())
            original(method, route)

        counters.request = request  # type: ignore[method-assign]

    def first_after(self, moment: float) -> float | None:
        return next((t for t in self.times if t >= moment), None)


def config_text(standin: Standin, anchor: float, store: str) -> str:
    return f"""[deploystate]
backend = "gitlab"
store = "{store}"
actor = "ci"
[strategy]
check_mode_everywhere = true
[backends.gitlab]
url = "{standin.url}"
deployer_project = "{DEPLOYER.path}"
cng_project = "{CNG.path}"
omnibus_project = "{OMNIBUS.path}"
clock_speed = {SPEED}
clock_anchor = {anchor}
timeout_s = 5
"""


def deploystate(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTATE_")}
    env.update(TOKENS, NO_PROXY="127.0.0.1,localhost")
    return subprocess.run([sys.executable, "-m", "deploystate", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def start_up(rounds: int, store_url: str | None) -> None:
    first_call: list[float] = []
    wait_exit: list[float] = []
    tag_exit: list[float] = []
    for number in range(rounds):
        anchor = time.time()
        world = World(clock=AcceleratedClock(SPEED, start=anchor))
        with Standin(world, faults=FaultPlan(seed=1)) as standin, tempfile.TemporaryDirectory() as folder:
            requests = FirstRequest(standin)
            directory = Path(folder)
            store = f"{store_url.rstrip('/')}" if store_url else str(directory / "journal.sqlite")
            version = VERSION if store_url is None else _fresh_version(number)
            seed_package_builds(standin.world, version)
            (directory / "deploystate.toml").write_text(config_text(standin, anchor, store))
            for command in (("start", version), ):
                made = deploystate(directory, *command)
                if made.returncode != 0:
                    raise SystemExit(f"deploystate {' '.join(command)} failed: {made.stderr}")
            begun = time.time()
            tagged = deploystate(directory, "step", version, "tag")
            tag_exit.append(time.time() - begun)
            if tagged.returncode != 0:
                raise SystemExit(f"deploystate step tag failed: {tagged.stderr}")
            begun = time.time()
            waited = deploystate(directory, "step", version, "wait_cng")
            ended = time.time()
            if waited.returncode != 0:
                raise SystemExit(f"deploystate step wait_cng failed: {waited.stderr}")
            first = requests.first_after(begun)
            if first is not None:
                first_call.append(first - begun)
            wait_exit.append(ended - begun)
    print(f"(a) start-up of one CI job's deploystate step, {rounds} rounds (median, min-max):")
    print(f"    step wait_cng: spawn -> first API call   {_ms(first_call)}")
    print(f"    step wait_cng: spawn -> exit             {_ms(wait_exit)}")
    print(f"    step tag (no API call): spawn -> exit    {_ms(tag_exit)}")
    python = [_timed([sys.executable, "-c", "pass"]) for _ in range(rounds)]
    helped = [_timed([sys.executable, "-m", "deploystate", "--help"]) for _ in range(rounds)]
    print(f"    for scale: python -c pass                {_ms(python)}")
    print(f"               deploystate --help            {_ms(helped)}")


def _timed(argv: list[str]) -> float:
    begun = time.time()
    subprocess.run(argv, capture_output=True, check=False, timeout=60)
    return time.time() - begun


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"{statistics.median(values) * 1000:7.0f} ms  ({min(values) * 1000:.0f}-"
            f"{max(values) * 1000:.0f} ms)")


def _fresh_version(offset: int) -> str:
    """A version no earlier run put into a shared store (its tag time: now, plus ``offset`` minutes),
    newer than those before it, so version order supersedes none of them."""
    moment = time.gmtime(time.time() + 60 * offset)
    return f"13.10.{time.strftime('%Y%m%d%H%M', moment)}"


class CountingStore:
    """A store whose every call is counted (one call, one round trip to a database server)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()
        self.seconds = 0.0  # spent inside the calls

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            begun = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - begun

        return counted


def round_trips(store_url: str | None, rounds: int) -> None:
    spec = default_spec()
    with Standin(World(clock=VirtualClock()), faults=FaultPlan(seed=1)) as standin, \
            tempfile.TemporaryDirectory() as folder:
        raw, statements = _open_store(store_url, Path(folder))
        store = CountingStore(raw)
        settings = {"url": standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                    "omnibus_project": OMNIBUS.path, "timeout_s": 5}
        backends = attrs.evolve(create(settings, TOKENS), clock=standin.world.clock)
        runner = Runner(store, backends, config=RunnerConfig(strategy=Strategy(check_mode_everywhere=True)),
                        notifier=_Silent())
        version = VERSION if store_url is None else _fresh_version(rounds)
        seed_package_builds(standin.world, version)
        runner.create(version, spec)
        print(f"\n(b) journal round trips per step ({'SQLite' if store_url is None else 'PostgreSQL'} store; "
              "the seed spec, each step as its own job would run it):")
        print(f"    {'step':<28} {'API calls':>9} {'store calls':>11} {'per call':>8} {'in store':>8} "
              f"{'SQL statements':>14}   calls by kind")
        for step in spec.steps:
            store.calls.clear()
            store.seconds = 0.0
            statements.clear()
            calls_before = runner.api_calls
            result = advance_step(runner, version, step.name)
            if step.kind is StepKind.PROMOTION:
                runner.promote(version, "release-manager")
                result = advance_step(runner, version, step.name)
            passes = max(1, runner.api_calls - calls_before)
            total = sum(store.calls.values())
            sql = str(len(statements)) if store_url is None else "-"
            kinds = ", ".join(f"{name} {count}" for name, count in store.calls.most_common())
            print(f"    {step.name:<28} {runner.api_calls - calls_before:>9} {total:>11} "
                  f"{total / passes:>8.1f} {store.seconds * 1000:>6.0f}ms {sql:>14}   {kinds}  "
                  f"[{result.stop.value}]")
        raw.close()


class _Silent:
    def notify(self, notice: Any) -> None:
        pass


def _open_store(store_url: str | None, folder: Path) -> tuple[Any, list[str]]:
    statements: list[str] = []
    if store_url is None:
        from deploystate.sqlite_store import SQLiteStore

        store = SQLiteStore(folder / "journal.sqlite")
        store._db.set_trace_callback(statements.append)
        return store, statements
    from deploystate.stores import open_url  # type: ignore[import-not-found, unused-ignore]

    return open_url(store_url, create=True), statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="start-ups to time (default 10)")
    parser.add_argument("--store", default=None, help="a store URL (postgresql://...); default a SQLite file")
    args = parser.parse_args()
    start_up(args.rounds, args.store)
    round_trips(args.store, args.rounds)


if __name__ == "__main__":
    main()

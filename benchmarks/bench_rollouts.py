"""What whole rollouts cost: one simulated rollout, `status` of 1,000 rollouts, rebuilding from 100 events.

Run from the repository root::

    python benchmarks/bench_rollouts.py             # everything (about a minute, most of it set-up)
    python benchmarks/bench_rollouts.py --quick     # fewer repetitions and 100 rollouts, a smoke run
    python benchmarks/bench_rollouts.py --only c --profile   # one part, then cProfile of it

(a) CPU time (``time.process_time``) of one full simulated rollout of the default spec on the
    virtual clock, as ``deploystate simulate`` runs it (simulated backend found through the
    entry-point registry, runner, create, run to done) with the in-memory store and a notifier
    that prints nothing.  Cold is the first rollout in a fresh process (a child process per
    sample); warm is the median of many later ones.  The same with a SQLite store (a new file
    per rollout) for information: its fsyncs show in wall time, not in CPU time.
(b) 1,000 rollouts in one SQLite store (mostly done, some failed, some waiting for promotion),
    then ``status`` of all of them: in-process through ``deploystate.cli.main`` (the code path
    of the command, output to a buffer) and as the real command in a child process.
(c) ``replay.rebuild`` of a 100-record journal: a rollout whose staging deployment keeps
    failing and is retried by an operator again and again (start, triggered, fail, retry...).

The script prints numbers, the targets beside them, and where a target is missed the parts
that cost most; it asserts nothing about them.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from deploystate import gates, registry
from deploystate.cli import main as cli_main
from deploystate.config import load_config
from deploystate.journal import Entry, MemoryStore, Record
from deploystate.machine import RolloutMachine
from deploystate.notices import FanOut
from deploystate.ports import Store
from deploystate.rollout import Machines, rebuild
from deploystate.runner import Runner, RunnerConfig, Stop
from deploystate.simulation import SIMULATED, settings_for_simulate
from deploystate.spec import default_spec
from deploystate.sqlite_store import SQLiteStore

VERSION = "13.10.202103011220"
ROLLOUT_CPU_TARGET_S = 0.005
STATUS_TARGET_S = 1.0
REBUILD_TARGET_S = 0.005
JOURNAL_RECORDS = 100
SPEC = default_spec()


# -- helpers -----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def verdict(value: float, target: float) -> str:
    return "meets target" if value <= target else f"MISSES target ({value / target:.1f}x)"


def cpu_samples(call: Callable[[], object], repetitions: int) -> list[float]:
    samples = []
    for _ in range(repetitions):
        started = time.process_time()
        call()
        samples.append(time.process_time() - started)
    return samples


def spread(samples: Sequence[float]) -> str:
    ordered = sorted(samples)
    p10 = ordered[len(ordered) // 10]
    p90 = ordered[min(len(ordered) - 1, (len(ordered) * 9) // 10)]
    return (f"median {ms(statistics.median(ordered))}  (p10 {p10 * 1000:.2f}, p90 {p90 * 1000:.2f}, "
            f"n={len(ordered)})")


def row(label: str, samples: Sequence[float]) -> None:
    print(f"  {label:<52} {spread(samples)}")


def profile(call: Callable[[], object], repetitions: int, lines: int = 25) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repetitions):
        call()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    print("    own time by component: " + ", ".join(
        f"{name} {share:.0%}" for name, share in components(stats).most_common(8)))
    stats.strip_dirs().sort_stats("cumulative").print_stats(lines)
    print(out.getvalue())


# Built-ins (sqlite3 calls, dict methods...) and these standard modules are charged to whoever
# called them, so that the time spent in, say, SQLite shows under the component that asked.
_CHARGED_TO_CALLER = ("enum.py", "json", "typing.py", "contextlib.py", "functools.py", "re", "pathlib.py",
                      "abc.py")


def components(stats: pstats.Stats) -> Counter[str]:
    """Share of own time per component (our files, or a library), builtins charged to their callers."""
    rows: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    shares: Counter[str] = Counter()

    def owner(func: tuple[str, int, str], depth: int = 0) -> list[tuple[str, float]]:
        filename = func[0]
        name = _component(filename)
        if depth < 4 and (filename == "~" or name.split("/")[0] in _CHARGED_TO_CALLER):
            callers = rows[func][4] if func in rows else {}
            total = sum(c[2] for c in callers.values()) or 1.0
            found: list[tuple[str, float]] = []
            for caller, c in callers.items():
                found += [(n, w * c[2] / total) for n, w in owner(caller, depth + 1)]
            return found or [(name, 1.0)]
        return [(name, 1.0)]

    for func, row in rows.items():
        for name, weight in owner(func):
            shares[name] += row[2] * weight
    total = sum(shares.values()) or 1.0
    return Counter({name: share / total for name, share in shares.items()})


def _component(filename: str) -> str:
    if filename == "~":
        return "~"
    parts = Path(filename).parts
    for package in ("deploystate_backends", "deploystate", "transitions", "importlib", "sqlite3", "attr",
                    "json", "re"):
        if package in parts:
            return "/".join(parts[parts.index(package):])
    return Path(filename).name


# -- (a) one simulated rollout ------------------------------------------------------------------


def simulate_config(auto_promote: str | None = "simulation") -> RunnerConfig:
    """What ``deploystate simulate`` gives its runner: check mode everywhere, automatic promotion."""
    config = load_config(env={})
    return attrs.evolve(config.runner_config(auto_promote=auto_promote),
                        strategy=attrs.evolve(config.strategy, check_mode_everywhere=True))


def simulate_once(store: Store, version: str = VERSION, *, fail: Sequence[str] = (),
                  auto_promote: str | None = "simulation", gated: bool = False) -> Stop:
    """One rollout the way ``deploystate simulate`` runs it, minus the printing (``gated``: with the
    production checks simulate configures, as the command has them since the gate came)."""
    settings = settings_for_simulate({}, spec=SPEC, store=None, seed=None, fail=fail, retry_fixes=(),
                                     hang=())
    backends = registry.create(SIMULATED, settings)
    try:
        checks = gates.configured({}, backends, store) if gated else ()
        runner = Runner(store, backends, config=simulate_config(auto_promote), notifier=FanOut([]),
                        checks=checks)
        runner.create(version, SPEC)
        return runner.run(version).stop
    finally:
        backends.close()


def cold_probe() -> None:
    """Child-process mode: the first and second rollout of a fresh process (after imports)."""
    lookup = cpu_samples(lambda: registry.factory(SIMULATED), 1)[0]  # imports the backend package
    first = cpu_samples(lambda: simulate_once(MemoryStore()), 1)[0]
    second = cpu_samples(lambda: simulate_once(MemoryStore()), 1)[0]
    compile_again = cpu_samples(lambda: RolloutMachine(SPEC), 1)[0]
    print(json.dumps({"lookup": lookup, "first": first, "second": second, "compile": compile_again}))


def part_a(repetitions: int, cold_samples: int, do_profile: bool) -> None:
    print("(a) one full simulated rollout of the default spec, virtual clock, no progress output")
    if simulate_once(MemoryStore()) is not Stop.DONE:
        raise SystemExit("the simulated rollout did not reach done; nothing to measure")

    probes = []
    for _ in range(cold_samples):
        out = subprocess.run([sys.executable, __file__, "--cold-probe"], capture_output=True, text=True,
                             check=True)
        probes.append(json.loads(out.stdout))
    row("cold: a new process finds and imports the backend", [p["lookup"] for p in probes])
    row("      then runs its first rollout", [p["first"] for p in probes])
    row("      its second rollout", [p["second"] for p in probes])
    row("      compiling the spec's machine again", [p["compile"] for p in probes])

    for _ in range(5):  # warm-up: machine compiled, timelines and code paths hot
        simulate_once(MemoryStore())
    memory = cpu_samples(lambda: simulate_once(MemoryStore()), repetitions)
    row("warm: in-memory store", memory)
    # Side by side, in the same process and run: what the gate (environment claims are always on;
    # the six production checks, run at the promotion and before production) adds to a rollout.
    gated = cpu_samples(lambda: simulate_once(MemoryStore(), gated=True), repetitions)
    row("warm: in-memory store, with the production checks", gated)
    print(f"    the checks' share: {statistics.median(gated) / statistics.median(memory):.2f} x")
    warm = statistics.median(memory)
    print(f"    target <= {ROLLOUT_CPU_TARGET_S * 1000:.0f} ms of CPU (warm, in memory): "
          f"{verdict(warm, ROLLOUT_CPU_TARGET_S)}")

    lookup = cpu_samples(lambda: registry.factory(SIMULATED), repetitions)
    row("  of which finding the backend by entry point", lookup)
    factory = registry.factory(SIMULATED)
    opened = cpu_samples(lambda: factory({}).close(), repetitions)
    row("  of which opening the simulated world (in memory)", opened)

    with tempfile.TemporaryDirectory() as folder:
        counter = iter(range(10**9))
        walls: list[float] = []

        def on_sqlite() -> None:
            store = SQLiteStore(Path(folder) / f"journal-{next(counter)}.sqlite")
            started = time.perf_counter()
            try:
                simulate_once(store)
            finally:
                store.close()
            walls.append(time.perf_counter() - started)

        sqlite = cpu_samples(on_sqlite, max(10, repetitions // 5))
    row("warm: SQLite store (a new file each time)", sqlite)
    row("      its wall time (fsyncs included)", walls)
    if do_profile or warm > ROLLOUT_CPU_TARGET_S:
        print("  cProfile of 30 warm in-memory rollouts (cumulative):")
        profile(lambda: simulate_once(MemoryStore()), 30)


# -- (b) status of 1,000 rollouts ---------------------------------------------------------------


def versions(count: int) -> Iterator[str]:
    moment = dt.datetime(2021, 3, 1, 12, 20)
    for _ in range(count):
        yield f"13.10.{moment:%Y%m%d%H%M}"
        moment += dt.timedelta(minutes=37)


def fill_store(path: Path, count: int) -> Counter[str]:
    """``count`` rollouts, each simulated in memory, then appended to ``path`` in one append each."""
    outcomes: Counter[str] = Counter()
    store = SQLiteStore(path)
    try:
        for index, version in enumerate(versions(count)):
            memory = MemoryStore()
            if index % 10 == 3:
                stop = simulate_once(memory, version, fail=["gprd"])
            elif index % 10 == 7:
                stop = simulate_once(memory, version, auto_promote=None)
            else:
                stop = simulate_once(memory, version)
            outcomes[stop.value] += 1
            records = memory.read(version)
            store.append(version, 0, [Entry(r.action, r.at, r.actor, r.step, r.data) for r in records])
    finally:
        store.close()
    return outcomes


def status_in_process(path: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["status", "--store", str(path)])
    if code != 0:
        raise SystemExit(f"status failed with exit code {code}")
    return out.getvalue()


def command() -> list[str]:
    script = Path(sys.executable).with_name("deploystate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "deploystate"]


def run_child(argv: Sequence[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process, without outside settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTATE_")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True, cwd=cwd, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def part_b(count: int, repetitions: int, do_profile: bool) -> None:
    print(f"(b) {count:,} rollouts in one SQLite store, then `status` of all of them")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "journal.sqlite"
        started = time.perf_counter()
        outcomes = fill_store(path, count)
        records = sum(len(r) for r in SQLiteStore(path).read_all().values())
        print(f"  set-up: {records:,} records ({dict(outcomes)}) in {time.perf_counter() - started:.1f} s; "
              f"file {path.stat().st_size / 1e6:.1f} MB")
        lines = status_in_process(path).count("\n")

        walls, cpus = [], []
        for _ in range(repetitions):
            wall_started, cpu_started = time.perf_counter(), time.process_time()
            status_in_process(path)
            walls.append(time.perf_counter() - wall_started)
            cpus.append(time.process_time() - cpu_started)
        print(f"  in-process: deploystate.cli.main(['status', '--store', PATH]), {lines} lines of output")
        row("  wall", walls)
        row("  CPU", cpus)

        argv = [*command(), "status", "--store", str(path)]
        children = [run_child(argv, path.parent) for _ in range(repetitions)]
        baseline = [run_child([*command(), "--version"], path.parent) for _ in range(repetitions)]
        print(f"  as a command: {shlex.join(argv)}")
        row("  wall", [w for w, _ in children])
        row("  CPU (user + system)", [c for _, c in children])
        row("  `deploystate --version` (start-up, imports): wall", [w for w, _ in baseline])
        wall = statistics.median(w for w, _ in children)
        print(f"    target under {STATUS_TARGET_S:.0f} s: {verdict(wall, STATUS_TARGET_S)} (command, wall)")
        if do_profile or wall > STATUS_TARGET_S:
            print("  cProfile of one in-process status (cumulative):")
            profile(lambda: status_in_process(path), 1)


# -- (c) rebuilding from 100 events -------------------------------------------------------------


def retried_journal(length: int) -> list[Record]:
    """A rollout whose staging deployment fails every time and is retried until ``length`` records."""
    store = MemoryStore()
    settings = settings_for_simulate({}, spec=SPEC, store=None, seed=None, fail=["gstg"], retry_fixes=(),
                                     hang=())
    backends = registry.create(SIMULATED, settings)
    try:
        runner = Runner(store, backends, config=simulate_config(), notifier=FanOut([]))
        runner.create(VERSION, SPEC)
        runner.run(VERSION)
        while len(store.read(VERSION)) < length:
            runner.retry(VERSION, "gstg", "release-manager")
            runner.run(VERSION)
    finally:
        backends.close()
    return store.read(VERSION)[:length]


def part_c(repetitions: int, do_profile: bool) -> None:
    records = retried_journal(JOURNAL_RECORDS)
    actions = Counter(r.action for r in records)
    print(f"(c) replay.rebuild of a {len(records)}-record journal "
          f"({', '.join(f'{n} {a}' for a, n in actions.most_common())})")
    view = rebuild(records)
    print(f"  rebuilt: {view.status}, trigger_gstg attempt {view.steps['trigger_gstg'].attempt}, "
          f"{view.phases['trigger_gstg'].value}")
    warm = cpu_samples(lambda: rebuild(records), repetitions)
    row("warm (the process-wide compiled machine)", warm)
    median = statistics.median(warm)
    print(f"    target <= {REBUILD_TARGET_S * 1000:.0f} ms: {verdict(median, REBUILD_TARGET_S)}")
    cold = cpu_samples(lambda: rebuild(records, Machines()), max(5, repetitions // 100))
    row("cold (a fresh machine: compiled, nothing learnt)", cold)
    if do_profile or median > REBUILD_TARGET_S:
        print("  cProfile of 200 warm rebuilds (cumulative):")
        profile(lambda: rebuild(records), 200)


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repetitions and 100 rollouts (smoke run)")
    parser.add_argument("--only", choices=["a", "b", "c"], action="append", help="run only these parts")
    parser.add_argument("--rollouts", type=int, default=1000, help="rollouts in the store of (b)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each part run")
    parser.add_argument("--cold-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_probe:
        cold_probe()
        return
    parts = args.only or ["a", "b", "c"]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs, "
          f"load average {load}\n")
    if "a" in parts:
        part_a(repetitions=20 if args.quick else 200, cold_samples=2 if args.quick else 7,
               do_profile=args.profile)
        print()
    if "b" in parts:
        part_b(count=100 if args.quick else args.rollouts, repetitions=2 if args.quick else 5,
               do_profile=args.profile)
        print()
    if "c" in parts:
        part_c(repetitions=200 if args.quick else 2000, do_profile=args.profile)


if __name__ == "__main__":
    main()

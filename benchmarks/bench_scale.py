"""What a big journal costs: a new rollout, and `status`, in a store of 10,000 rollouts against 1.

Run from the repository root::

    python benchmarks/bench_scale.py                  # 10,000 rollouts (a minute or two, mostly set-up)
    python benchmarks/bench_scale.py --rollouts 1000 --samples 5 --runs 3   # a smoke run
    python benchmarks/bench_scale.py --stores sqlite,postgres   # both, side by side

PostgreSQL (``--stores postgres``): a throwaway server started in a temporary folder as the tests
start theirs (``tests/pg_fixtures.py``: initdb, pg_ctl, a unix socket, fsync off), or the server
of ``--postgres URL`` / ``DEPLOYSTATE_BENCH_PG_URL`` (a role that may create databases: the
journals are databases made and dropped here, the small one copied with ``CREATE DATABASE ...
TEMPLATE``).  Its (R) figure is this process's CPU plus that of the server processes serving the
store (``/proc/PID/schedstat``; wall time if the server runs elsewhere): the client's CPU alone
leaves out the server's work, which is where a big table would cost.  It also prints the
journal's round trips to the server per rollout and per step (``PostgresStore.round_trips``).

Set-up: one real simulated rollout (the default spec, to done) goes into the small store, a
SQLite journal that then holds 1 rollout.  Its records, as journal ``Entry`` objects, and the
summary the store holds for it (``store.summaries()``; None if the runner wrote none) are copied
into the big store under 10,000 other auto-deploy tags, one append each.  In the copies every
string naming the version (its ``created`` record, idempotency keys, ...) names the copy's.

(R) CPU time (``time.process_time``) of one whole simulated rollout appended into the big store
    against the small one, as the product runs one: the simulated backend from the registry, a
    ``Runner`` (``auto_promote``), ``create`` then ``run`` to done.  Each sample is a pair, one
    rollout into each store, in alternating order; the figure is the ratio of the medians.  Each
    measured rollout stays in its store (the small one ends with a few more than 1).  Then the
    same again with the store's methods timed, to show the store's own share.
(S) Wall time of the whole process ``deploystate status --store FILE`` (the listing of every
    rollout) on each journal: interleaved runs, medians, their ratio; CPU and peak RSS of the
    process from ``os.wait4``.

It prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from deploystate import registry, simulation
from deploystate.config import RunnerConfig
from deploystate.journal import Entry, Record
from deploystate.notices import FanOut
from deploystate.ports import Store, Summary
from deploystate.runner import Runner
from deploystate.simulation import SIMULATED, settings_for_simulate
from deploystate.spec import default_spec
from deploystate.sqlite_store import SQLiteStore

SPEC = default_spec()
R_TARGET = 1.2
S_TARGET = 4.0


# -- a rollout the way the product runs one ---------------------------------------------------------


def simulate_once(store: Store, version: str) -> str:
    """One whole simulated rollout into ``store``; returns how it stopped."""
    settings = settings_for_simulate({}, spec=SPEC, store=None, seed=None, fail=(), retry_fixes=(), hang=())
    backends = registry.create(SIMULATED, settings)
    try:
        # Older runners left moving the simulated clock to the tag's time to the caller; newer
        # ones do it in create() through Backends.prepare.
        catch_up = getattr(simulation, "catch_up_to_tag", None)
        if catch_up is not None:
            catch_up(backends, version)
        runner = Runner(store, backends, config=RunnerConfig(auto_promote="bench"), notifier=FanOut([]))
        runner.create(version, SPEC)
        return str(runner.run(version).stop.value)
    finally:
        release = getattr(simulation, "release", None)
        if release is not None:
            release(backends)
        else:
            backends.close()


def versions(start: dt.datetime, count: int, step: dt.timedelta) -> Iterator[str]:
    """Valid auto-deploy tags, ``MAJOR.MINOR.YYYYMMDDHHMM`` of a real UTC time, ``step`` apart."""
    moment = start
    for _ in range(count):
        yield f"13.10.{moment:%Y%m%d%H%M}"
        moment += step


def renamed(value: Any, old: str, new: str) -> Any:
    """``value`` (plain JSON) with ``old`` replaced by ``new`` in every string and key."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, Mapping):
        return {renamed(k, old, new): renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [renamed(v, old, new) for v in value]
    return value


# -- measuring -------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def spread(samples: Sequence[float]) -> str:
    ordered = sorted(samples)
    return (f"median {ms(statistics.median(ordered))} (min {ms(ordered[0])}, max {ms(ordered[-1])}, "
            f"n={len(ordered)})")


def cpu(call: Callable[[], object]) -> float:
    started = time.process_time()
    call()
    return time.process_time() - started


class TimedStore:
    """``store`` with the CPU time of each of its methods added up (``hold`` included)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.spent: defaultdict[str, float] = defaultdict(float)
        self.calls: defaultdict[str, int] = defaultdict(int)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if not callable(method):
            return method

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent[name] += time.process_time() - started
                self.calls[name] += 1
        return timed


# Runs one command and reports it.  A child's peak RSS counts the image it was started from
# (the parent's, up to exec); this launcher is small, the bench process is not.
_LAUNCHER = """
import json, os, subprocess, sys, tempfile, time
argv = json.loads(sys.argv[1])
with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as errors:
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=output, stderr=errors)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    errors.seek(0)
    output.seek(0)
    print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_kb": usage.ru_maxrss,
                      "code": os.waitstatus_to_exitcode(status), "lines": output.read().count(b"\\n"),
                      "errors": errors.read().decode(errors="replace").strip()}))
"""


def status_child(argv: Sequence[str], cwd: Path) -> dict[str, Any]:
    """Wall and CPU (user + system) seconds, peak RSS (KB), exit code, lines of output and stderr
    of one process running ``argv``, without outside settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTATE_")}
    out = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, json.dumps(list(argv))], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def command() -> list[str]:
    script = Path(sys.executable).with_name("deploystate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "deploystate"]


# -- the journals: SQLite files, or PostgreSQL databases -----------------------------------------------


class SQLiteJournals:
    """The small and the big journal as SQLite files in ``folder``."""

    kind = "SQLite"
    clock = "CPU"  # the whole journal's work is in this process

    def __init__(self, folder: Path) -> None:
        self.paths = {"small": folder / "small.sqlite", "big": folder / "big.sqlite"}
        self._copies = iter(range(10**6))

    def open(self, name: str) -> Store:
        return SQLiteStore(self.paths[name])

    def open_copy_of_small(self) -> Store:
        path = self.paths["small"].with_name(f"small-{next(self._copies)}.sqlite")
        shutil.copyfile(self.paths["small"], path)
        return SQLiteStore(path)

    def location(self, name: str) -> str:
        return str(self.paths[name])

    def size(self, name: str) -> str:
        return f"{self.paths[name].stat().st_size / 1e6:.1f} MB"

    def close(self) -> None:
        return None


class PostgresJournals:
    """The small and the big journal as databases of a PostgreSQL server: ``admin_url`` names one of
    its databases as a role that may create databases (a throwaway cluster's, by default)."""

    kind = "PostgreSQL"
    # Client CPU alone leaves out the server's work, which is where a big table costs: this process's
    # CPU plus that of the server processes serving the store (/proc/PID/schedstat, nanoseconds),
    # when the server runs on this machine; else wall time.
    clock = "CPU (client + server)"

    def __init__(self, admin_url: str, cluster: Any = None) -> None:
        import psycopg
        from deploystate_backends.postgres import parse

        self._psycopg, self._admin, self._cluster = psycopg, parse(admin_url), cluster
        self._base = admin_url
        self._copies = iter(range(10**6))
        suffix = f"{os.getpid()}"
        self.databases = {"small": f"bench_small_{suffix}", "big": f"bench_big_{suffix}"}
        self._made: list[str] = []
        for database in self.databases.values():
            self._sql(f"CREATE DATABASE {database}")

    def _sql(self, statement: str) -> list[Any]:
        secret = {"password": self._admin.password} if self._admin.password else {}
        with self._psycopg.connect(self._admin.conninfo, autocommit=True, **secret) as db:
            done = db.execute(statement)
            return done.fetchall() if statement.startswith("SELECT") else []

    def url(self, database: str) -> str:
        """The admin URL with another database in it (the path, or ``dbname=``)."""
        import urllib.parse

        parts = urllib.parse.urlsplit(self._base)
        query = urllib.parse.urlencode([(k, v) for k, v in urllib.parse.parse_qsl(parts.query)
                                        if k != "dbname"])
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{database}", query, ""))

    def open(self, name: str) -> Store:
        from deploystate_backends.postgres import PostgresStore

        store = PostgresStore(self.url(self.databases[name]))
        if self.clock != "wall" and server_cpu(store) is None:
            self.clock = "wall"  # the server is elsewhere: its processes cannot be seen from here
        return store

    def open_copy_of_small(self) -> Store:
        from deploystate_backends.postgres import PostgresStore

        copy = f"{self.databases['small']}_{next(self._copies)}"
        self._sql(f"CREATE DATABASE {copy} TEMPLATE {self.databases['small']}")  # nobody may be on it
        self._made.append(copy)
        return PostgresStore(self.url(copy))

    def location(self, name: str) -> str:
        return self.url(self.databases[name])

    def size(self, name: str) -> str:
        rows = self._sql(f"SELECT pg_database_size('{self.databases[name]}')")
        return f"{rows[0][0] / 1e6:.1f} MB (the database)"

    def close(self) -> None:
        for database in [*self._made, *self.databases.values()]:
            with contextlib.suppress(Exception):
                self._sql(f"DROP DATABASE IF EXISTS {database}")
        if self._cluster is not None:
            self._cluster.stop()
            shutil.rmtree(self._cluster.folder, ignore_errors=True)


def server_cpu(store: Any) -> float | None:
    """CPU seconds the server processes of ``store``'s connections have used, or None if they run
    elsewhere."""
    total = 0.0
    for connection in (getattr(store, "_db", None), getattr(store, "_lock_db", None)):
        if connection is None or connection.closed:
            continue
        try:
            with open(f"/proc/{connection.info.backend_pid}/schedstat", encoding="ascii") as stat:
                total += int(stat.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return None
    return total


def throwaway_postgres() -> PostgresJournals:
    """A PostgreSQL cluster in a temporary folder, started as the tests start theirs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import pg_fixtures

    bin_dir = pg_fixtures._bin_dir()
    if bin_dir is None:
        raise SystemExit("bench_scale: PostgreSQL's initdb is not installed (Debian: apt-get install "
                         "postgresql), or give --postgres URL of a server")
    cluster = pg_fixtures.Cluster(bin_dir, Path(tempfile.mkdtemp(prefix="deploystate-pg-")),
                                  pg_fixtures._server_user())
    cluster.start()
    print(f"  a throwaway PostgreSQL server ({bin_dir.parent.name}) on its unix socket, fsync off")
    return PostgresJournals(cluster.url("postgres"), cluster)


# -- the parts ---------------------------------------------------------------------------------------


def set_up(journals: Any, count: int) -> str:
    (original,) = versions(dt.datetime(2021, 3, 1, 12, 20), 1, dt.timedelta())
    started = time.perf_counter()
    with journals.open("small") as small:
        stop = simulate_once(small, original)
        records = small.read(original)
        last, summary = small.summaries()[original]
        # What the rollout wrote in its environments' journals (claims, releases), kept too:
        # those journals grow with every rollout of a store, and a runner reads them.
        env_records = ({name: small.env_read(name) for name in small.environments()}
                       if hasattr(small, "environments") else {})
    fresh = summary is not None and summary.seq == last
    print(f"  the real rollout: {original}, stopped {stop}, {len(records)} records; its summary: "
          f"{'fresh' if fresh else 'stale' if summary else 'none (the runner passes no summary)'}")
    copies = list(versions(dt.datetime(2021, 4, 1, 0, 7), count, dt.timedelta(minutes=7)))
    with journals.open("big") as big:
        for version in copies:
            entries = [Entry(r.action, r.at, r.actor, r.step, renamed(r.data, original, version))
                       for r in records]
            data = None if summary is None else renamed(summary.data, original, version)
            big.append(version, 0, entries, summary=data)
        for name, kept in env_records.items():
            copied = [Entry(r.action, r.at, r.actor, r.step, renamed(r.data, original, version))
                      for version in copies for r in kept]
            # With the summary the product keeps beside each environment's journal (if it has one).
            env_summary = None
            if hasattr(big, "env_summary"):
                from deploystate import environments

                after = environments.environment_view(name, [
                    Record(name, i + 1, e.action, e.at, e.actor, e.step, e.data)
                    for i, e in enumerate(copied)])
                env_summary = environments.summary_of(after)
            big.env_append(name, 0, copied, **({"summary": env_summary} if env_summary else {}))
        stored = big.summaries()
    env_count = sum(len(kept) for kept in env_records.values()) * count
    print(f"  environments' journals: {env_count:,} records in {len(env_records)} environments")
    fresh_copies = sum(1 for last, s in stored.values() if isinstance(s, Summary) and s.seq == last)
    print(f"  big store: {len(stored):,} rollouts, {len(stored) * len(records):,} records, "
          f"{fresh_copies:,} fresh summaries, {journals.size('big')}, "
          f"set-up {time.perf_counter() - started:.1f} s")
    return original


def wall(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def part_r(journals: Any, count: int, samples: int) -> float:
    with journals.open("small"):  # PostgreSQL: finds out whether the server's CPU can be seen
        pass
    clock = journals.clock

    def measure(call: Callable[[], object], store: Any = None) -> float:
        if clock == "CPU":
            return cpu(call)
        if clock == "wall" or store is None:
            return wall(call)
        before = (time.process_time(), server_cpu(store) or 0.0)
        call()
        return time.process_time() - before[0] + (server_cpu(store) or 0.0) - before[1]

    print(f"(R) one whole simulated rollout into a store of {count:,} rollouts vs of 1, {clock} time")
    opens: dict[str, list[float]] = {"small": [], "big": []}
    for _ in range(samples):
        for name in ("big", "small"):
            opens[name].append(wall(lambda n=name: journals.open(n).close()))
    print(f"  opening the store, {count:,} rollouts (wall): {spread(opens['big'])}")
    print(f"  opening the store, 1 rollout (wall):        {spread(opens['small'])}")

    fresh = versions(dt.datetime(2022, 1, 3, 9, 1), 4 * samples + 2, dt.timedelta(minutes=11))

    def opened(name: str) -> Store:
        """The big store itself (it grows by one rollout a sample), or a new copy of the small one."""
        return journals.open("big") if name == "big" else journals.open_copy_of_small()

    round_trips: list[int] = []

    def measured(name: str, wrap: Callable[[Store], Store] = lambda s: s) -> float:
        with opened(name) as store:
            wrapped, version = wrap(store), next(fresh)
            before = getattr(store, "round_trips", 0)
            spent = measure(lambda: simulate_once(wrapped, version), store)
            round_trips.append(getattr(store, "round_trips", 0) - before)
            return spent

    for name in ("big", "small"):  # a first rollout each (imports, caches), not counted
        measured(name)
    costs: dict[str, list[float]] = {"big": [], "small": []}
    for index in range(samples):
        for name in ("big", "small") if index % 2 == 0 else ("small", "big"):
            costs[name].append(measured(name))
    big, small = statistics.median(costs["big"]), statistics.median(costs["small"])
    print(f"  rollout into {count:,} rollouts: {spread(costs['big'])}")
    print(f"  rollout into 1 rollout:        {spread(costs['small'])}")
    ratio = big / small
    print(f"new rollout cost, store of {count} vs 1 rollout ({journals.kind}, {clock}): "
          f"{ratio:.2f} x")
    print(f"  target <= {R_TARGET}: {'met' if ratio <= R_TARGET else 'missed'}")

    timed: dict[str, list[TimedStore]] = {"big": [], "small": []}

    def timing(name: str) -> Callable[[Store], Store]:
        def wrap(store: Store) -> Store:
            timed[name].append(TimedStore(store))
            return timed[name][-1]  # type: ignore[return-value]
        return wrap

    round_trips.clear()
    for index in range(samples):
        for name in ("big", "small") if index % 2 == 0 else ("small", "big"):
            measured(name, timing(name))
    for name, label in (("big", f"{count:,} rollouts"), ("small", "1 rollout")):
        spent: defaultdict[str, float] = defaultdict(float)
        calls: defaultdict[str, int] = defaultdict(int)
        for one in timed[name]:
            for method, seconds in one.spent.items():
                spent[method] += seconds / samples
                calls[method] += one.calls[method]
        shown = ", ".join(f"{method} {calls[method] / samples:.0f}x {spent[method] * 1000:.2f} ms"
                          for method in sorted(spent, key=spent.__getitem__, reverse=True))
        print(f"  of which in the store ({label}), per rollout, CPU: {sum(spent.values()) * 1000:.2f} ms: "
              f"{shown}")
    if any(round_trips):
        steps = len(SPEC.steps)
        per_rollout = statistics.median(round_trips)
        appends = statistics.median(sum(one.calls["append"] for one in timed[n]) / samples for n in timed)
        print(f"  journal round trips to the server per rollout: median {per_rollout:.0f} "
              f"({per_rollout / steps:.1f} per step of {steps}; {appends:.0f} appends, one statement each)")
    return ratio


def part_s(journals: Any, count: int, runs: int) -> None:
    print(f"(S) the whole process `deploystate status --store JOURNAL` ({journals.kind}), {count:,} "
          "rollouts vs 1")
    argv = {name: [*command(), "status", "--store", journals.location(name)] for name in ("big", "small")}
    print(f"  command: {shlex.join(argv['big'])}")
    results: dict[str, list[dict[str, Any]]] = {"big": [], "small": []}
    cwd = Path(tempfile.gettempdir())
    for index in range(runs + 1):
        order = ("big", "small") if index % 2 == 0 else ("small", "big")
        for name in order:
            run = status_child(argv[name], cwd)
            if run["code"] != 0:
                print(f"  status on the {name} store failed (exit code {run['code']}): "
                      f"{run['errors'][-500:]}")
                return
            if index > 0:  # the first pair warms the page cache and the bytecode cache
                results[name].append(run)
    for name, label in (("big", f"{count:,} rollouts"), ("small", "1 rollout")):
        rows = results[name]
        print(f"  {label:>16}: wall {spread([r['wall'] for r in rows])}; CPU median "
              f"{ms(statistics.median(r['cpu'] for r in rows))}; peak RSS "
              f"{max(r['rss_kb'] for r in rows) / 1024:.0f} MB; {rows[-1]['lines']} lines of output")
    ratio = (statistics.median(r["wall"] for r in results["big"])
             / statistics.median(r["wall"] for r in results["small"]))
    print(f"status of {count} rollouts vs 1 rollout (whole process, {journals.kind}): {ratio:.2f} x")
    print(f"  target <= {S_TARGET}: {'met' if ratio <= S_TARGET else 'missed'}")


def bench(journals: Any, args: argparse.Namespace) -> None:
    print(f"== {journals.kind} ==")
    set_up(journals, args.rollouts)
    part_s(journals, args.rollouts, args.runs)  # first: (R) adds rollouts
    with journals.open("big") as big:
        started, cpu_started = time.perf_counter(), time.process_time()
        problems = big.check()  # type: ignore[attr-defined]
        spent_wall, spent = time.perf_counter() - started, time.process_time() - cpu_started
        print(f"{type(big).__name__}.check() of the big store ('deploystate check-store'): "
              f"{spent_wall:.2f} s wall, {spent:.2f} s CPU here, {len(problems)} problems")
    part_r(journals, args.rollouts, args.samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=10_000, help="rollouts in the big store")
    parser.add_argument("--samples", type=int, default=15, help="rollouts measured per store in (R)")
    parser.add_argument("--runs", type=int, default=5, help="status processes per store in (S)")
    parser.add_argument("--stores", default="sqlite", help="sqlite, postgres, or sqlite,postgres")
    parser.add_argument("--postgres", metavar="URL", default=os.environ.get("DEPLOYSTATE_BENCH_PG_URL"),
                        help="a database of a PostgreSQL server, as a role that may create databases "
                             "(default: $DEPLOYSTATE_BENCH_PG_URL, else a throwaway server started here)")
    args = parser.parse_args()
    kinds = [kind.strip() for kind in args.stores.split(",")]
    if not set(kinds) <= {"sqlite", "postgres"}:
        parser.error(f"--stores {args.stores}: name sqlite, postgres or both")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs, "
          f"load average {load}")
    for kind in kinds:
        with tempfile.TemporaryDirectory() as folder:
            journals = (SQLiteJournals(Path(folder)) if kind == "sqlite" else
                        PostgresJournals(args.postgres) if args.postgres else throwaway_postgres())
            try:
                bench(journals, args)
            finally:
                journals.close()


if __name__ == "__main__":
    main()

"""Two writers on one rollout at once: runners exclude each other, operators and runners re-decide.

Everything runs against a real SQLite journal and the simulated deployer's world file beside it.
To make a race happen at a chosen moment, a runner process freezes itself (SIGSTOP) at one of the
runner's checkpoints: it then holds the rollout exactly as a runner stuck in a slow deployer
call would, for as long as the test needs.  The other side is the real ``deploystate`` command.

- A second runner is refused while the first holds the rollout (a lock on the journal file,
  whatever path each took to it, released even when the holder dies), and triggers nothing.
- An operator command that writes while a runner is between reading and appending makes the
  runner's append fail with the expected-sequence conflict: the runner decides again on the
  new state, nothing is written twice and nothing is lost.
- An operator whose decision went stale while a runner wrote decides again the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import pytest
from deploystate_backends.simulated import World

from deploystate import registry
from deploystate.actions import Action
from deploystate.cli import main
from deploystate.config import load_config
from deploystate.crashpoint import KILL_AT
from deploystate.journal import Record
from deploystate.machine import Phase
from deploystate.notices import FanOut
from deploystate.ports import Clock
from deploystate.rollout import RolloutView, rebuild
from deploystate.runner import Runner, Stop
from deploystate.simulation import SIMULATED, settings_for_store, world_beside
from deploystate.spec import StepKind, default_spec
from deploystate.sqlite_store import SQLiteStore

VERSION = "13.10.202103011220"
SPEC = default_spec()
BAKE = next(s.name for s in SPEC.steps if s.kind is StepKind.BAKE)
PROMOTION = next(s.name for s in SPEC.steps if s.kind is StepKind.PROMOTION)
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC",
                "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", KILL_AT)
WAIT_S = 60.0

# A runner process that stops itself at a checkpoint: STORE VERSION STOP_AT AUTO_PROMOTE.
# STOP_AT is CHECKPOINT:N (the Nth time), or "bake-over": the bake's time ran out and the runner
# decided so, but has not appended it yet (its view is from before the bake ended).
FREEZING_RUNNER = """
import os, signal, sys
from pathlib import Path
from deploystate import registry
from deploystate.config import load_config
from deploystate.notices import FanOut
from deploystate.runner import Runner
from deploystate.simulation import settings_for_store
from deploystate.sqlite_store import SQLiteStore

path, version, stop_at, auto_promote = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] or None
reached = {}
runner = None

def checkpoint(name):
    reached[name] = reached.get(name, 0) + 1
    if stop_at == "bake-over":
        view = runner.view(version)
        run = view.steps["baking_time"]
        step = view.spec.step("baking_time")
        hit = (name == "before-record" and view.phases["baking_time"].value == "running"
               and runner.clock.now() - run.started_at >= step.duration_s)
    else:
        hit = stop_at == f"{name}:{reached[name]}"
    if hit and not reached.get("stopped"):
        reached["stopped"] = 1
        os.kill(os.getpid(), signal.SIGSTOP)

config = load_config(env={}).runner_config(auto_promote=auto_promote)
backends = registry.create("simulated", settings_for_store({}, path))
runner = Runner(SQLiteStore(path), backends, config=config, notifier=FanOut([]), checkpoint=checkpoint)
print(runner.run(version).stop.value)
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}


def deploystate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploystate", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd, env=clean_env())


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A journal holding VERSION, just created by ``deploystate start`` (nothing has run)."""
    path = tmp_path / "journal.sqlite"
    assert main(["start", VERSION, "--store", str(path)]) == 0
    capsys.readouterr()
    return path


@contextlib.contextmanager
def frozen_runner(store: Path, stop_at: str, *, auto_promote: str = "") -> Iterator[subprocess.Popen[str]]:
    """A runner process on ``store``, stopped (SIGSTOP) at ``stop_at`` and holding the rollout."""
    argv = [sys.executable, "-c", FREEZING_RUNNER, str(store), VERSION, stop_at, auto_promote]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=store.parent, env=clean_env())
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            pid, status = os.waitpid(process.pid, os.WNOHANG | os.WUNTRACED)
            if pid and os.WIFSTOPPED(status):
                break
            if pid:  # it ended without ever getting there
                process.returncode = os.waitstatus_to_exitcode(status)
                pytest.fail(f"the runner never reached {stop_at}: exit {process.returncode}, "
                            f"{process.stderr.read() if process.stderr else ''}")
            assert time.monotonic() < deadline, f"the runner did not reach {stop_at} in {WAIT_S} s"
            time.sleep(0.01)
        yield process
    finally:
        if process.returncode is None and process.poll() is None:  # the test failed while it was stopped
            process.kill()
            process.communicate()


def resume(process: subprocess.Popen[str]) -> str:
    """Let a frozen runner go on; returns where its rollout stopped."""
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=WAIT_S)
    assert process.returncode == 0, err
    return out.strip()


def journal(store: Path) -> list[Record]:
    opened = SQLiteStore(store)
    try:
        return opened.read(VERSION)
    finally:
        opened.close()


def deployer_keys(store: Path) -> Counter[str]:
    """Every idempotency key the simulated deployer was triggered with, from its own record."""
    with World.open(world_beside(store), create=False) as world:
        return Counter(t.key for t in world.triggers())


def intents(records: Sequence[Record]) -> set[str]:
    return {str(r.data["key"]) for r in records if r.action == Action.START.value and "key" in r.data}


def triggered(records: Sequence[Record]) -> Counter[str]:
    return Counter(str(r.data["key"]) for r in records if r.action == Action.TRIGGERED)


def assert_consistent(store: Path) -> RolloutView:
    """The journal replays and is contiguous; it and the deployer agree on every trigger."""
    records = journal(store)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert [r.action for r in records].count("created") == 1 and records[0].action == "created"
    view = rebuild(records)
    keys = deployer_keys(store)
    assert set(keys.values()) <= {1}, f"triggered twice: {keys}"
    assert triggered(records) == keys, "the journal and the deployer disagree about what was triggered"
    assert set(keys) <= intents(records), "a trigger without a recorded intent"
    return view


def one_of(records: Sequence[Record], action: str, step: str | None) -> Record:
    found = [r for r in records if r.action == action and r.step == step]
    assert len(found) == 1, found
    return found[0]


# -- two runners -------------------------------------------------------------------------------


def test_a_second_runner_is_refused_while_the_first_holds_the_rollout(store: Path, tmp_path: Path) -> None:
    # Frozen with the intent of the first deployment durable and the deployer not yet called: a
    # second runner allowed in here would find no deployment under that key and trigger it too.
    with frozen_runner(store, "before-trigger:1", auto_promote="release-manager") as holder:
        before = journal(store)
        assert intents(before) and not triggered(before) and not deployer_keys(store)
        second = deploystate("run", VERSION, "--store", str(store), cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and f"rollout {VERSION} is being run by another process" in lines[0]
        assert journal(store) == before and not deployer_keys(store)
        assert resume(holder) == Stop.DONE.value
    # The lock went with its holder: the same command now simply finds the rollout done.
    again = deploystate("run", VERSION, "--store", str(store), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"rollout {VERSION} is done" in again.stdout
    view = assert_consistent(store)
    assert view.status == "done"
    assert set(deployer_keys(store)) == intents(journal(store)) and len(intents(journal(store))) == 4


def test_a_second_runner_is_refused_whatever_path_it_takes(store: Path, tmp_path: Path) -> None:
    # The lock is the journal file's, not its name's: through another name, a second runner once
    # ran the same rollout alongside the first and triggered its deployments again.
    # (A link of the same name, so that the simulated backend beside it is the same one.)
    other = tmp_path / "other"
    other.mkdir()
    (other / store.name).symlink_to(f"../{store.name}")
    ways = [("./" + store.name, tmp_path), ("../" + store.name, other), (store.name, other),
            (str(other / store.name), tmp_path), (f"other/../{store.name}", tmp_path)]
    with frozen_runner(store, "before-trigger:1", auto_promote="release-manager") as holder:
        before = journal(store)
        for path, cwd in ways:
            second = deploystate("run", VERSION, "--store", path, cwd=cwd)
            assert second.returncode == 2, (path, second.stdout, second.stderr)
            lines = second.stderr.splitlines()
            assert len(lines) == 1 and f"rollout {VERSION} is being run by another process" in lines[0], path
            assert journal(store) == before and not deployer_keys(store)
        assert resume(holder) == Stop.DONE.value
    view = assert_consistent(store)
    assert view.status == "done" and len(deployer_keys(store)) == 4


def test_two_run_commands_started_together(store: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "deploystate", "run", VERSION, "--store", str(store)]
    started = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=tmp_path, env=clean_env()) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in started]
    codes = sorted(p.returncode for p in started)
    # Whoever gets the rollout runs it to the promotion gate (exit 1: a human must promote); the
    # other is refused (exit 2) or, if it came after, finds it waiting there too.
    assert codes in ([1, 1], [1, 2]), outputs
    for process, (out, err) in zip(started, outputs, strict=True):
        if process.returncode == 2:
            assert "is being run by another process" in err
        else:
            assert "waiting for promotion" in out, err
    view = assert_consistent(store)
    assert view.phases[PROMOTION] is Phase.RUNNING
    assert len(deployer_keys(store)) == 3  # staging, legacy and canary; production waits


# -- an operator and a runner ------------------------------------------------------------------


def test_a_promotion_between_the_runners_read_and_its_append(store: Path, tmp_path: Path) -> None:
    # Frozen after the bake's time ran out, polling before it records the bake: its view of the
    # rollout is about to be stale.
    with frozen_runner(store, "bake-over") as runner:
        before = journal(store)
        phases = rebuild(before).phases
        assert phases[BAKE] is Phase.RUNNING and phases[PROMOTION] is Phase.RUNNING
        promoted = deploystate("promote", VERSION, "--by", "alice", "--reason", "checks green", "--store",
                               str(store), cwd=tmp_path)
        assert promoted.returncode == 0, promoted.stderr
        assert resume(runner) == Stop.DONE.value
    records = journal(store)
    promotion = one_of(records, Action.SUCCEED.value, PROMOTION)
    checked = records[before[-1].seq]  # the promotion's production checks come first, in its append
    assert (checked.action, checked.actor, checked.data["for"]) == (Action.CHECKED.value, "alice",
                                                                    "promotion")
    assert (promotion.seq, promotion.actor, dict(promotion.data)) == (
        before[-1].seq + 2, "alice", {"by": "alice", "reason": "checks green", "checks": "passed"})
    # The runner's append after record N was refused; it decided again and recorded the bake once.
    bake = one_of(records, Action.SUCCEED.value, BAKE)
    started = one_of(records, Action.START.value, BAKE)
    assert bake.seq > promotion.seq
    assert bake.at - started.at == pytest.approx(SPEC.step(BAKE).duration_s or 0)
    view = assert_consistent(store)
    assert view.status == "done" and len(deployer_keys(store)) == 4


def test_an_abort_while_a_trigger_is_not_yet_recorded(store: Path, tmp_path: Path) -> None:
    # Frozen when the deployer has accepted the first trigger and the journal does not know yet.
    with frozen_runner(store, "after-trigger:1") as runner:
        before = journal(store)
        assert len(intents(before)) == 2 and not triggered(before)  # staging and the legacy path
        (accepted,) = deployer_keys(store)
        aborted = deploystate("abort", VERSION, "--reason", "incident 77", "--by", "carol", "--store",
                              str(store), cwd=tmp_path)
        assert aborted.returncode == 0, aborted.stderr
        assert resume(runner) == Stop.ABORTED.value
    records = journal(store)
    abort = one_of(records, Action.ABORT.value, None)
    assert (abort.seq, abort.actor) == (before[-1].seq + 1, "carol")
    # The pipeline the deployer started is kept in the journal, and nothing else was triggered
    # for the aborted rollout (the legacy deployment's intent stays untriggered).
    assert triggered(records) == Counter([accepted])
    assert deployer_keys(store) == Counter([accepted])
    view = assert_consistent(store)
    assert view.status == "aborted"


class HesitatingClock:
    """The simulated clock, except that its first reading waits until the test says go.

    The operator commands read the clock when they write down their decision, after reading the
    rollout: this holds an operator between its read and its append, like a slow one.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.waiting = threading.Event()
        self.go = threading.Event()

    def now(self) -> float:
        if not self.waiting.is_set():
            self.waiting.set()
            assert self.go.wait(WAIT_S)
        return self.clock.now()

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)


def test_an_operator_decision_gone_stale_is_made_again(store: Path, tmp_path: Path) -> None:
    config = load_config(env={}).runner_config()
    backends = registry.create(SIMULATED, settings_for_store({}, store))
    opened = SQLiteStore(store)
    try:
        # Advance until the bake runs and the promotion gate is open; then nobody runs it.
        runner = Runner(opened, backends, config=config, notifier=FanOut([]))
        for _ in range(50):
            result = runner.run(VERSION, max_wakeups=1)
            if result.view.phases[BAKE] is Phase.RUNNING:
                break
        assert result.view.phases[PROMOTION] is Phase.RUNNING
        decided_at = result.view.seq

        clock = HesitatingClock(backends.clock)
        operator = Runner(opened, attrs.evolve(backends, clock=clock), config=config, notifier=FanOut([]))
        promoted: list[RolloutView] = []
        thread = threading.Thread(target=lambda: promoted.append(
            operator.promote(VERSION, "alice", "checks green")))
        thread.start()
        try:
            assert clock.waiting.wait(WAIT_S)
            # Meanwhile a runner ends the bake and runs until only the promotion is left.
            ran = deploystate("run", VERSION, "--store", str(store), cwd=tmp_path)
            assert ran.returncode == 1 and "waiting for promotion" in ran.stdout, ran.stderr
        finally:
            clock.go.set()
            thread.join(WAIT_S)
        assert promoted and promoted[0].steps[PROMOTION].ended_at is not None
    finally:
        opened.close()
        backends.close()  # the world file the set-up runner and the operator shared
    records = journal(store)
    promotion = one_of(records, Action.SUCCEED.value, PROMOTION)
    # Decided on record `decided_at`, refused there, decided again after the runner's records.
    assert promotion.seq == len(records) > decided_at + 1
    assert one_of(records, Action.SUCCEED.value, BAKE).seq < promotion.seq

    done = deploystate("run", VERSION, "--store", str(store), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    view = assert_consistent(store)
    assert view.status == "done" and len(deployer_keys(store)) == 4

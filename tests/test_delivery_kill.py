"""kill -9 while notices are being delivered, then resume: nothing lost, at most one repeat per kill.

A real ``deploystate simulate`` (or ``run``) subprocess delivers to two real local HTTP receivers
(tests/notify_receivers.py: Slack's webhook endpoint and a Standard Webhooks consumer) and is
killed with SIGKILL, at a runner checkpoint (``DEPLOYSTATE_KILL_AT``) or at a random moment.
``deploystate run`` (with a ``promote`` when the rollout waits for one) then resumes the rollout
and its delivery.  Each receiver answers every request a little late (10 ms), so kills land while
notices are in flight.  Afterwards, for each receiver, counted by the receiver itself:

- every journal record's notice arrived;
- they arrived in journal order, and the only irregularity is a notice arriving twice in a row:
  the one in flight at a kill (sent, and taken, but its position not yet written), at most one per
  kill and receiver;
- ``deploystate status`` says everything was delivered.
"""

from __future__ import annotations

import itertools
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
import notify_receivers
import pytest
from notify_receivers import WEBHOOK_SECRET, Fault, Receiver

from deploystate.crashpoint import KILL_AT
from deploystate.sqlite_store import SQLiteStore

VERSION = "13.10.202103011220"
KILLED = -signal.SIGKILL
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC",
                "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", KILL_AT, "SLACK_WEBHOOK_URL",
                "DEPLOYSTATE_WEBHOOK_URL", "DEPLOYSTATE_WEBHOOK_SECRET")
CONFIG = """
[notify]
drain_seconds = 20
retry_min_seconds = 0.05
retry_max_seconds = 0.5

[notify.slack]

[notify.webhook]
"""
SLOW = Fault(200, times=10**6, delay_s=0.01, body="ok")  # every answer 10 ms late, but taken
receivers = notify_receivers.receivers  # the fixture


@attrs.define
class Journal:
    folder: Path
    slack: Receiver
    webhook: Receiver
    kills: int = 0
    commands: list[str] = attrs.field(factory=list)

    @property
    def store(self) -> Path:
        return self.folder / "journal.sqlite"

    def env(self, kill_at: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
        env.update(SLACK_WEBHOOK_URL=self.slack.url, DEPLOYSTATE_WEBHOOK_URL=self.webhook.url,
                   DEPLOYSTATE_WEBHOOK_SECRET=WEBHOOK_SECRET)
        if kill_at is not None:
            env[KILL_AT] = kill_at
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "deploystate", *args, "--store", str(self.store)]

    def run(self, *args: str, kill_at: str | None = None, kill_after: float | None = None) -> int:
        """Run a command; killed at ``kill_at`` (a checkpoint) or after ``kill_after`` seconds."""
        process = subprocess.Popen(self.command(*args), cwd=self.folder, env=self.env(kill_at),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kill_after is not None:
            try:
                process.wait(kill_after)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        out, err = process.communicate(timeout=120)
        code = process.returncode
        self.kills += code == KILLED
        how = f" (kill at {kill_at})" if kill_at else ""
        how += f" (kill after {kill_after:.2f}s)" if kill_after is not None else ""
        self.commands.append(f"{' '.join(args)}{how} -> {code}")
        assert code in (0, 1, KILLED), (args, code, err[-3000:])
        if code == 1:
            assert "waiting for promotion" in out, (args, out[-2000:], err[-2000:])
        return code

    def resume(self) -> None:
        """``deploystate run`` until done, promoting when the rollout waits for it (and first
        ``simulate``, if every earlier one was killed before the rollout was written)."""
        if not self.exists() and self.run("simulate", VERSION) == 0:
            return
        for _ in range(6):
            code = self.run("run", VERSION)
            if code == 0:
                return
            if code == 1:
                assert self.run("promote", VERSION, "--by", "rm") == 0
        raise AssertionError(f"the rollout did not finish: {self.commands}")

    def exists(self) -> bool:
        if not self.store.exists():
            return False
        with SQLiteStore(self.store) as store:
            return store.last_seq(VERSION) > 0

    def record_ids(self) -> list[str]:
        with SQLiteStore(self.store) as store:
            return [f"{r.rollout_id}:{r.seq}" for r in store.read(VERSION)]

    def check(self) -> dict[str, Any]:
        """Everything delivered, in order, repeats only of a notice in flight at a kill."""
        ids = self.record_ids()
        found: dict[str, Any] = {"records": len(ids), "kills": self.kills}
        for receiver in (self.slack, self.webhook):
            assert receiver.refused() == [], receiver.refused()[:1]
            arrived = [d.notice_id for d in receiver.requests if d.accepted and d.notice_id in set(ids)]
            counts = Counter(arrived)
            assert set(counts) == set(ids), f"{receiver.kind} never got {sorted(set(ids) - set(counts))}"
            seqs = [ids.index(i) for i in arrived]
            steps = [b - a for a, b in itertools.pairwise(seqs)]
            assert seqs[0] == 0 and set(steps) <= {0, 1}, (receiver.kind, seqs, self.commands)
            repeats = steps.count(0)
            assert repeats <= self.kills, (receiver.kind, repeats, self.kills)
            found[receiver.kind] = {"accepted": len(arrived), "repeated": repeats,
                                    "twice": sorted(i for i, n in counts.items() if n > 1)}
        status = subprocess.run(self.command("status", VERSION), cwd=self.folder, env=self.env(),
                                capture_output=True, text=True, timeout=60, check=False)
        assert "delivery: slack: all delivered; webhook: all delivered" in status.stdout, status.stdout
        return found


@pytest.fixture
def journal(tmp_path: Path, receivers: Any) -> Journal:
    (tmp_path / "deploystate.toml").write_text(CONFIG)
    slack = receivers("slack", faults=(SLOW,))
    webhook = receivers("webhook", secret=WEBHOOK_SECRET, faults=(SLOW,))
    return Journal(tmp_path, slack, webhook)


def report(name: str, found: dict[str, Any], journal: Journal) -> None:
    print(f"\n{name}: {found['records']} records, {found['kills']} kill(s); "
          f"slack accepted {found['slack']['accepted']} (repeated {found['slack']['twice'] or 'none'}), "
          f"webhook accepted {found['webhook']['accepted']} (repeated {found['webhook']['twice'] or 'none'})"
          f"\n  commands: {'; '.join(journal.commands)}")


@pytest.mark.parametrize("kill_at", ["recorded:1", "recorded:9", "after-trigger:2", "before-sleep:3",
                                     "before-call:20"])
def test_killed_at_a_checkpoint_then_resumed_with_run(journal: Journal, kill_at: str) -> None:
    assert journal.run("simulate", VERSION, kill_at=kill_at) == KILLED
    journal.resume()
    found = journal.check()
    report(f"kill at {kill_at}", found, journal)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_at_random_moments_again_and_again_then_resumed(journal: Journal, seed: int) -> None:
    """simulate and run killed at random moments (while the runner works, or while delivery drains),
    until a command finishes; then run to the end."""
    chance = random.Random(seed)
    started = time.monotonic()
    for attempt in range(6):
        # run needs the rollout to exist: until a simulate created it, simulate again.
        command = ("run", VERSION) if attempt % 2 and journal.exists() else ("simulate", VERSION)
        code = journal.run(*command, kill_after=chance.uniform(0.4, 2.5))
        if code == 1:
            assert journal.run("promote", VERSION, "--by", "rm") == 0
        if time.monotonic() - started > 60:
            break
    journal.resume()
    found = journal.check()
    assert journal.kills >= 1, journal.commands  # the test must have killed something
    report(f"random kills (seed {seed})", found, journal)

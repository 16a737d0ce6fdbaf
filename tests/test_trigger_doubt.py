"""A trigger is looked up before it is sent, and never too early after a doubtful one.

Against the GitLab stand-in over HTTP, with the real GitLab backend: each intent is looked up once
before its first trigger (a journal started again writes the same keys); a trigger whose answer
was lost is looked up only after ``trigger_doubt_s``, then found instead of sent again.
"""

from __future__ import annotations

from collections import Counter

import attrs
import pytest
from deploystate_backends.gitlab_standin import VirtualClock, World, seed_package_builds
from test_gitlab_rollouts import VERSION, runner_for, trigger_pipelines

from deploystate.actions import Action
from deploystate.runner import Stop
from deploystate.spec import default_spec


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class LookUps:
    """The real GitLab deployer, with a note of every key looked up (everything else passes through)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.keys: list[str] = []

    def find(self, key: str) -> object:
        self.keys.append(key)
        return self.inner.find(key)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_each_intent_is_looked_up_once_before_its_first_trigger(standin_factory):
    # A journal that was lost and started again writes the same keys: only the deployer knows.
    standin = standin_factory(World(clock=VirtualClock()))
    seed_package_builds(standin.world, VERSION)
    runner = runner_for(standin, auto_promote="release-manager")
    look_ups = LookUps(runner.backends.deployer)
    runner.backends = attrs.evolve(runner.backends, deployer=look_ups)
    runner.create(VERSION, default_spec())

    assert runner.run(VERSION).stop is Stop.DONE
    assert len(trigger_pipelines(standin.world)) == 4
    keys = [str(r.data["key"]) for r in runner.store.read(VERSION) if r.action == Action.TRIGGERED]
    assert sorted(look_ups.keys) == sorted(keys) and len(keys) == 4


def test_a_lost_trigger_answer_is_looked_up_after_the_doubt_window_and_found(standin_factory):
    standin = standin_factory(World(clock=VirtualClock()))
    standin.faults.next(1, "lost_response", route="trigger")
    seed_package_builds(standin.world, VERSION)
    runner = runner_for(standin, auto_promote="release-manager", trigger_doubt_s=120.0)
    runner.create(VERSION, default_spec())

    assert runner.run(VERSION).stop is Stop.DONE
    records = runner.store.read(VERSION)
    doubts = [r for r in records if r.action == Action.OBSERVED and r.data.get("trigger_in_doubt")]
    assert len(doubts) == 1
    step = doubts[0].step
    triggered = [r for r in records if r.action == Action.TRIGGERED and r.step == step]
    assert len(triggered) == 1
    # Found, not sent again: one pipeline for that key, and not before the window ended.
    assert triggered[0].at >= doubts[0].at + 120.0
    keys = Counter(p.variable("DEPLOYSTATE_KEY") for p in standin.world.pipelines()
                   if p.source == "trigger")
    assert set(keys.values()) == {1} and len(keys) == 4

"""Waiting on GitLab by webhooks with safety polls, against the stand-in over HTTP.

Whole rollouts run the real runner and the real GitLab adapter; the stand-in posts its Pipeline
Hooks to the adapter's receiver.  Runner and stand-in share one virtual time base
(``SharedVirtualClock``), so "promptly" is checked in exact virtual seconds, never wall time.
"""

from __future__ import annotations

import http.server
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import pytest
import requests
from deploystate_backends.gitlab import create
from deploystate_backends.gitlab.hooks import HookReceiver, PipelineEvent
from deploystate_backends.gitlab.settings import GitLabSettings, GitLabSettingsError
from deploystate_backends.gitlab.watching import SAFETY_POLLS, WatchingDeployer, Webhooks, watch
from deploystate_backends.gitlab_standin import (
    CNG,
    DEPLOYER,
    OMNIBUS,
    Pipeline,
    Script,
    Standin,
    VirtualClock,
    World,
)
from deploystate_backends.gitlab_standin.hooks import HookFaults, HookSender
from deploystate_backends.gitlab_standin.shared_clock import Member, SharedVirtualClock
from standin_fixtures import HookCapture

from deploystate.journal import MemoryStore
from deploystate.ports import Notice
from deploystate.runner import Runner, RunnerConfig, RunResult, Stop
from deploystate.spec import builtin_spec
from deploystate.strategy import Strategy
from deploystate.waiting import WaitPolicy

VERSION = "13.10.202103011220"
SECRET = "s3cret-hook-token-value"
BUILD_S = 300.0
DEPLOY_S = 600.0
ON_TIME = HookFaults(latency_s=1.0)
# A runner that, on its own, would look only once an hour: anything quicker is a hook's doing.
HOURLY = WaitPolicy(fixed_interval_s=3600.0, max_interval_s=3600.0)


class Collected:
    """A notifier that keeps every notice."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def notify(self, notice: Notice) -> None:
        self.notices.append(notice)


@attrs.define
class Rig:
    standin: Standin
    clock: SharedVirtualClock
    runner_clock: Member
    sender: HookSender
    hooks: Webhooks
    notices: Collected

    @property
    def world(self) -> World:
        return self.standin.world

    def deployer_pipelines(self, environment: str) -> list[Pipeline]:
        return [p for p in self.world.pipelines(DEPLOYER.path) if p.environment == environment]

    def run(self, config: RunnerConfig) -> tuple[Runner, RunResult]:
        backends = attrs.evolve(create(self.settings(), TOKENS), clock=self.runner_clock,
                                deployer=self.hooks.deployer, packages=self.hooks.packages)
        runner = Runner(MemoryStore(), backends, config=config, notifier=self.notices)
        with self.runner_clock:
            runner.create(VERSION, builtin_spec("seed"))
            return runner, runner.run(VERSION)

    def settings(self) -> dict[str, object]:
        return {"url": self.standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                "omnibus_project": OMNIBUS.path}


TOKENS = {"GITLAB_API_TOKEN": "standin-token", "DEPLOYER_TRIGGER_TOKEN": "deployer-trigger-token"}


@contextmanager
def rig(faults: HookFaults = ON_TIME, *, secret_at_gitlab: str = SECRET,
        scripts: dict[str, Script] | None = None, idempotency_key: bool = True) -> Iterator[Rig]:
    clock = SharedVirtualClock()
    world = World(clock=clock)
    for environment, script in (scripts or {}).items():
        world.script(DEPLOYER.path, environment, outcome=script)
    world.script(DEPLOYER.path, timing=attrs.evolve(DEPLOYER.timing, running_s=DEPLOY_S))
    world.seed_pipeline(CNG.path, f"{VERSION}+abcdef012345",
                        timing=attrs.evolve(CNG.timing, running_s=BUILD_S))
    world.seed_pipeline(OMNIBUS.path, f"{VERSION}+abcdef012345.0123456789ab",
                        timing=attrs.evolve(OMNIBUS.timing, running_s=BUILD_S))
    with Standin(world) as standin:
        runner_clock = clock.member("runner")
        settings = {"url": standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                    "omnibus_project": OMNIBUS.path}
        base = create(settings, TOKENS)
        hooks = watch(base.deployer, base.packages, GitLabSettings.from_mapping(settings), runner_clock,
                      secret=SECRET, listen="127.0.0.1:0")
        sender = HookSender(world, faults=faults, base_url=standin.url, idempotency_key=idempotency_key)
        for project in (DEPLOYER, CNG, OMNIBUS):
            sender.add_hook(project, hooks.receiver.url, secret_at_gitlab)
        sender.start()
        try:
            yield Rig(standin, clock, runner_clock, sender, hooks, Collected())
        finally:
            sender.stop()
            hooks.listener.stop()
            runner_clock.leave()


def gap(rig: Rig, before: str, after: str) -> float:
    """Virtual seconds from ``before``'s pipeline finishing to ``after``'s being created."""
    (first,) = rig.deployer_pipelines(before)
    (second,) = rig.deployer_pipelines(after)
    assert first.finished_at is not None
    return second.created_at - first.finished_at


# -- the receiver on its own: who may post, and what it ignores ------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[HookReceiver, list[PipelineEvent]]]:
    events: list[PipelineEvent] = []
    with HookReceiver("127.0.0.1", 0, SECRET, events.append) as started:
        yield started, events


def post(url: str, *, token: str | None = SECRET, event: str = "Pipeline Hook", key: str | None = "k-1",
         status: str = "success") -> requests.Response:
    headers = {"Content-Type": "application/json", "X-Gitlab-Event": event}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    if key is not None:
        headers["Idempotency-Key"] = key
    body = {"object_kind": "pipeline", "object_attributes": {"id": 1001, "ref": "master", "status": status},
            "project": {"id": DEPLOYER.id, "path_with_namespace": DEPLOYER.path}}
    session = requests.Session()
    session.trust_env = False
    return session.post(url, data=json.dumps(body), headers=headers, timeout=5)


@pytest.mark.parametrize("token", [None, "wrong-token-value", SECRET + "x", ""])
def test_a_hook_without_the_right_secret_is_refused_and_neither_secret_is_logged(
        receiver: tuple[HookReceiver, list[PipelineEvent]], caplog: pytest.LogCaptureFixture,
        token: str | None) -> None:
    server, events = receiver
    with caplog.at_level(logging.DEBUG):
        answer = post(server.url, token=token)
    assert answer.status_code == 401
    assert events == []
    assert server.stats.refused == 1
    assert "X-Gitlab-Token" in caplog.text  # the refusal is logged and says what to check...
    for secret in (SECRET, "wrong-token-value"):  # ...without the secret or the wrong guess
        assert secret not in caplog.text
        assert secret not in answer.text


def test_a_hook_of_another_kind_is_answered_but_ignored(
        receiver: tuple[HookReceiver, list[PipelineEvent]]) -> None:
    server, events = receiver
    answer = post(server.url, event="Job Hook")
    assert answer.status_code == 200  # GitLab disables hooks that keep failing
    assert events == []
    assert server.stats.ignored == 1


def test_a_redelivered_hook_is_handled_once(receiver: tuple[HookReceiver, list[PipelineEvent]]) -> None:
    server, events = receiver
    answers = [post(server.url, key="same-key").status_code for _ in range(3)]
    answers.append(post(server.url, key="other-key").status_code)
    assert answers == [200, 200, 200, 200]
    assert [e.key for e in events] == ["same-key", "other-key"]
    assert events[0] == PipelineEvent(DEPLOYER.id, DEPLOYER.path, 1001, "master", "success", "same-key")
    assert server.stats.duplicates == 2


def test_a_malformed_pipeline_hook_is_refused_with_the_reason(
        receiver: tuple[HookReceiver, list[PipelineEvent]]) -> None:
    server, events = receiver
    session = requests.Session()
    session.trust_env = False
    answer = session.post(server.url, data=b'{"object_kind": "pipeline"}', timeout=5,
                          headers={"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Pipeline Hook"})
    assert answer.status_code == 400
    assert "object_attributes" in answer.json()["message"]
    assert events == []


def test_the_stand_in_s_hooks_with_a_wrong_secret_change_nothing() -> None:
    with rig(secret_at_gitlab="not-the-secret") as r:
        _, result = r.run(RunnerConfig(auto_promote="test", wait_policy=WaitPolicy()))
        deliveries = r.sender.deliveries()
        assert result.stop is Stop.DONE  # the safety polls carried the rollout
        assert deliveries and {d.answer for d in deliveries} == {401}
        assert r.hooks.receiver.stats.accepted == 0
        assert r.hooks.deployer.stats.marks == 0


# -- whole rollouts -----------------------------------------------------------------------


def test_a_hook_wakes_a_sleeping_runner_at_once() -> None:
    with rig(HookFaults(latency_s=1.0)) as r:
        _, result = r.run(RunnerConfig(auto_promote="test", wait_policy=HOURLY))
        assert result.stop is Stop.DONE
        # Each next deployment is triggered the moment the hook arrives (1 s after the change),
        # though the runner, left alone, would have slept for an hour.
        assert gap(r, "gstg", "gprd-cny") == pytest.approx(1.0, abs=1e-6)
        (canary,) = r.deployer_pipelines("gprd-cny")
        (production,) = r.deployer_pipelines("gprd")
        assert canary.finished_at is not None
        # The bake counts from canary's own finished_at, not from when the hook told us.
        assert production.created_at - canary.finished_at == pytest.approx(1800.0, abs=1e-3)
        assert r.hooks.deployer.stats.missed_hooks == 0


def test_safety_polls_catch_changes_when_every_hook_is_lost(caplog: pytest.LogCaptureFixture) -> None:
    with rig(HookFaults(drop=1.0)) as r, caplog.at_level(logging.WARNING):
        _, result = r.run(RunnerConfig(auto_promote="test", wait_policy=WaitPolicy()))
        assert result.stop is Stop.DONE
        assert r.sender.deliveries() == [] and r.sender.dropped > 0
        assert r.hooks.deployer.stats.missed_hooks >= 4  # every deployment's end came unannounced
        assert "no webhook announcing it" in caplog.text
        # Later than a hook would have been, but within one safety interval (these deployments end
        # long before the expected hour, where the safety polls are furthest apart).
        assert 1.0 < gap(r, "gstg", "gprd-cny") <= SAFETY_POLLS.max_interval_s


def test_repeated_and_out_of_order_hooks_are_harmless() -> None:
    faults = HookFaults(latency_s=1.0, jitter_s=4.0, duplicate=1.0, late=0.5, late_s=90.0, seed=7)
    with rig(faults) as r:
        _, result = r.run(RunnerConfig(auto_promote="test", wait_policy=HOURLY))
        assert result.stop is Stop.DONE
        triggered = r.standin.counters().triggered_pipelines_by_env
        assert triggered == {"gstg": 1, "gstg,gprd-cny,gprd": 1, "gprd-cny": 1, "gprd": 1}
        assert r.hooks.receiver.stats.duplicates > 0
        deliveries = [d for d in r.sender.deliveries() if d.copy == 0]
        overtaken = [(a, b) for a in deliveries for b in deliveries
                     if a.pipeline_id == b.pipeline_id and a.changed_at < b.changed_at
                     and deliveries.index(a) > deliveries.index(b)]
        assert overtaken, "the fault plan should have delivered some hooks out of order"
        # Lateness shows in the timing, never in the outcome: at most one late hook's worth.
        assert gap(r, "gstg", "gprd-cny") <= 1.0 + 4.0 + 90.0


def test_without_idempotency_keys_repeats_are_dropped_and_each_hook_counts() -> None:
    """As from GitLab before 17.4: every delivery twice, and a second hook on the deployer (say, a
    group hook) whose posts share each event's X-Gitlab-Event-UUID with the first hook's."""
    with rig(HookFaults(latency_s=1.0, duplicate=1.0), idempotency_key=False) as r:
        r.sender.add_hook(DEPLOYER, r.hooks.receiver.url, SECRET)
        _, result = r.run(RunnerConfig(auto_promote="test", wait_policy=HOURLY))
        assert result.stop is Stop.DONE
        r.sender.stop()  # no post under way while the two sides are counted
        deliveries = r.sender.deliveries()
        stats = r.hooks.receiver.stats
        # Each hook's first post of a change is taken, its repeat dropped; no hook hides another.
        assert stats.accepted == sum(d.copy == 0 for d in deliveries) > 0
        assert stats.duplicates == sum(d.copy == 1 for d in deliveries) > 0
        assert gap(r, "gstg", "gprd-cny") == pytest.approx(1.0, abs=1e-6)


# Staging's own deployment real (under the default plan a failure of it would be a dry run's).
STAGING_REAL = Strategy(individual_deployments=True, check_mode_everywhere=True)


def test_a_failed_pipeline_retried_by_a_human_moves_the_rollout_on_by_its_hooks() -> None:
    with rig(HookFaults(latency_s=1.0), scripts={"gstg": Script.fail_then_succeed()}) as r:
        human = r.clock.member("release-manager")
        retried: list[float] = []

        def retry_when_failed() -> None:
            with human:
                for _ in range(200):  # a bounded watch: the test must end even if gstg never fails
                    failed = [p for p in r.deployer_pipelines("gstg") if p.status == "failed"]
                    if failed:
                        human.sleep(300)  # five minutes to look at the logs
                        r.world.retry_pipeline(failed[0])
                        retried.append(r.clock.now())
                        return
                    human.sleep(60)

        helper = threading.Thread(target=retry_when_failed)
        helper.start()
        runner, result = r.run(RunnerConfig(auto_promote="test", wait_policy=HOURLY, strategy=STAGING_REAL))
        helper.join(timeout=30)
        assert result.stop is Stop.DONE
        assert retried
        actions = [(rec.action, rec.step) for rec in runner.store.read(VERSION)]
        assert ("fail", "trigger_gstg") in actions and ("resume", "trigger_gstg") in actions
        # The retried pipeline's success arrived by hook: the canary followed 1 s later, though
        # the runner on its own would have looked only after an hour.
        assert gap(r, "gstg", "gprd-cny") == pytest.approx(1.0, abs=1e-6)
        assert r.standin.counters().triggered_pipelines_by_env["gstg"] == 1


def test_a_wait_past_its_limit_is_announced_as_an_error() -> None:
    with rig(HookFaults(latency_s=1.0), scripts={"gstg": Script.hang()}) as r:
        config = RunnerConfig(auto_promote="test", wait_policy=WaitPolicy(), deployment_wait_limit_s=1800,
                              failed_watch_s=600, strategy=STAGING_REAL)
        _, result = r.run(config)
        assert result.stop is Stop.FAILED
        errors = [n for n in r.notices.notices if n.severity == "error"]
        assert [(n.step, n.data.get("timed_out")) for n in errors] == [("trigger_gstg", True)]
        assert "timed out" in errors[0].message and "still running" in errors[0].message


# -- the settings that turn webhooks on -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_without_webhook_settings_the_backend_polls(gitlab_standin: Standin) -> None:
    backends = create({"url": gitlab_standin.url, "deployer_project": DEPLOYER.path,
                       "cng_project": CNG.path, "omnibus_project": OMNIBUS.path}, TOKENS)
    assert not isinstance(backends.deployer, WatchingDeployer)
    assert "Pipeline Hooks" not in backends.description


def test_webhook_settings_make_the_backend_listen_from_its_first_read(gitlab_standin: Standin) -> None:
    port = free_port()
    settings = {"url": gitlab_standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                "omnibus_project": OMNIBUS.path, "webhook_listen": f"127.0.0.1:{port}",
                "webhook_secret_env": "DEPLOYSTATE_HOOK_SECRET"}
    backends = create(settings, {**TOKENS, "DEPLOYSTATE_HOOK_SECRET": SECRET})
    assert isinstance(backends.deployer, WatchingDeployer)
    assert f"Pipeline Hooks on 127.0.0.1:{port}" in backends.description
    url = f"http://127.0.0.1:{port}/hooks/gitlab"
    with pytest.raises(requests.ConnectionError):
        post(url)  # building the backend (as `deploystate status` does) binds no port
    assert backends.packages.status("cng", VERSION).status == "missing"  # the first read starts it
    try:
        assert post(url, token="nope").status_code == 401
        assert post(url).status_code == 200
    finally:
        backends.deployer.close()


def test_closing_the_backends_stops_the_listener_and_frees_its_port(gitlab_standin: Standin) -> None:
    port = free_port()
    settings = {"url": gitlab_standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                "omnibus_project": OMNIBUS.path, "webhook_listen": f"127.0.0.1:{port}",
                "webhook_secret_env": "DEPLOYSTATE_HOOK_SECRET"}
    backends = create(settings, {**TOKENS, "DEPLOYSTATE_HOOK_SECRET": SECRET})
    url = f"http://127.0.0.1:{port}/hooks/gitlab"
    before = set(threading.enumerate())
    assert backends.packages.status("cng", VERSION).status == "missing"  # listening from here
    assert post(url).status_code == 200
    (server,) = [t for t in set(threading.enumerate()) - before if t.name == "gitlab-hooks"]

    backends.close()

    with pytest.raises(requests.ConnectionError):
        post(url)  # refused: nobody listens any more
    assert not server.is_alive()  # its thread was joined
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))  # the port is free again
    # A read after closing does not listen again: it reads through the API, as plain polling does.
    assert backends.packages.status("cng", VERSION).status == "missing"
    with pytest.raises(requests.ConnectionError):
        post(url)
    backends.close()  # closing twice does no harm


def test_closing_backends_that_never_listened_binds_nothing(gitlab_standin: Standin) -> None:
    port = free_port()
    settings = {"url": gitlab_standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                "omnibus_project": OMNIBUS.path, "webhook_listen": f"127.0.0.1:{port}",
                "webhook_secret_env": "DEPLOYSTATE_HOOK_SECRET"}
    with create(settings, {**TOKENS, "DEPLOYSTATE_HOOK_SECRET": SECRET}):
        pass  # `deploystate status` builds the backends and closes them without a read
    with pytest.raises(requests.ConnectionError):
        post(f"http://127.0.0.1:{port}/hooks/gitlab")


@pytest.mark.parametrize(("extra", "complaint"), [
    ({"webhook_listen": "127.0.0.1:8930"}, "go together"),
    ({"webhook_secret_env": "HOOK_SECRET"}, "go together"),
    ({"webhook_listen": "8930", "webhook_secret_env": "HOOK_SECRET"}, "HOST:PORT"),
    ({"webhook_listen": "127.0.0.1:8930", "webhook_secret_env": "HOOK_SECRET"}, "HOOK_SECRET is not set"),
])
def test_webhook_settings_are_checked_before_anything_starts(extra: dict[str, str], complaint: str) -> None:
    settings = {"url": "http://127.0.0.1:9", "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                "omnibus_project": OMNIBUS.path, **extra}
    with pytest.raises(GitLabSettingsError, match=complaint):
        create(settings, TOKENS)


# -- the stand-in's hooks themselves -------------------------------------------------------------


def test_the_stand_in_posts_a_pipeline_hook_per_status_change_shaped_like_gitlab_s() -> None:
    received: list[tuple[dict[str, str], dict[str, object]]] = []
    handler = type("Capture", (HookCapture,), {"received": received})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as capture:
        threading.Thread(target=capture.serve_forever, daemon=True).start()
        world = World(clock=VirtualClock())
        sender = HookSender(world, faults=HookFaults(duplicate=1.0))
        sender.add_hook(DEPLOYER.path, f"http://127.0.0.1:{capture.server_address[1]}/hook", SECRET)
        pipeline = world.trigger(DEPLOYER.path, "master", {"DEPLOY_ENVIRONMENT": "gstg"})
        for _ in range(40):  # a VirtualClock moves only when told: advance, then deliver what is due
            sender.pump()
            at = world.next_change_at()
            if at is None:
                break
            world.advance(at - world.now())
        capture.shutdown()
    statuses = [body["object_attributes"]["status"] for _, body in received[::2]]  # type: ignore[index]
    assert statuses == ["created", "pending", "running", "success"]
    for (first, body), (second, again) in zip(received[::2], received[1::2], strict=True):
        assert first["Idempotency-Key"] == second["Idempotency-Key"] and body == again  # a redelivery
        assert first["X-Gitlab-Event"] == "Pipeline Hook" and first["X-Gitlab-Token"] == SECRET
    last = received[-1][1]
    attributes = last["object_attributes"]
    assert last["object_kind"] == "pipeline"
    project = last["project"]
    assert isinstance(project, dict)
    assert (project["id"], project["path_with_namespace"]) == (DEPLOYER.id, DEPLOYER.path)
    assert isinstance(attributes, dict)
    assert (attributes["id"], attributes["ref"], attributes["source"]) == (pipeline.id, "master", "trigger")
    assert {"key": "DEPLOY_ENVIRONMENT", "value": "gstg"} in attributes["variables"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", attributes["finished_at"])
    assert attributes["duration"] == pipeline.duration

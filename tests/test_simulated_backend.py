"""The simulated backend: a deployer and package builds on a durable virtual clock."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap

import pytest
from deploystate_backends.autodeploy import RUNBOOK, BadVersion, check_version, tag_time
from deploystate_backends.simulated import (
    DEFAULT_START,
    Scenario,
    SettingsError,
    UnknownDeployment,
    UnknownPackage,
    VirtualClock,
    World,
    WorldError,
    create,
)
from deploystate_backends.simulated.scenario import PACKAGES
from deploystate_backends.simulated.timeline import CREATED_S, QUEUE_S
from hypothesis import given
from hypothesis import strategies as st

from deploystate.errors import DeploystateError
from deploystate.ports import (
    BackendError,
    Backends,
    Clock,
    Deployer,
    Hints,
    Outcome,
    PackageWatcher,
    TriggerRequest,
)

VERSION = "13.10.202103011220"
LEGACY = ("gstg", "gprd-cny", "gprd")
EXACT = {"jitter": 0, "durations": {"gstg": 3600, "gprd-cny": 3000, "gprd": 5400}}


def request(environments: object = "gstg", key: str | None = None, check_mode: bool = True,
            ref: str = "next-gen", version: str = VERSION) -> TriggerRequest:
    envs = environments if isinstance(environments, tuple | list) else (str(environments),)
    return TriggerRequest(key=key or f"r/{','.join(envs)}/1", version=version, environments=envs,
                          ref=ref, check_mode=check_mode)


def trace(backends: Backends, deployment_id: str, limit: int = 50) -> list[tuple[float, str]]:
    """Every (offset from trigger, status) of a deployment, jumping from hint to hint."""
    deployer = backends.deployer
    first = deployer.status(deployment_id)
    origin = backends.clock.now()
    seen = [(0.0, first.status)]
    for _ in range(limit):
        at = deployer.next_change_at()
        if at is None:
            return seen
        backends.clock.advance_to(at)
        status = deployer.status(deployment_id).status
        if status != seen[-1][1]:
            seen.append((at - origin, status))
    raise AssertionError(f"still changing after {limit} hints: {seen}")


# -- the clock ---------------------------------------------------------------------------------

def test_virtual_clock_moves_only_forward():
    clock = VirtualClock(start=1000.0)
    clock.sleep(1800)
    assert clock.now() == 2800.0
    assert clock.advance_to(100.0) == 2800.0  # an earlier time is not a move back
    assert clock.advance_to(5000.0) == 5000.0
    for bad in (-1, math.nan, math.inf):
        with pytest.raises(ValueError, match="sleep"):
            clock.sleep(bad)
    assert clock.now() == 5000.0


def test_default_start_is_the_example_tag_time():
    backends = create({})
    expected = dt.datetime(2021, 3, 1, 12, 20, tzinfo=dt.UTC).timestamp()
    assert backends.clock.now() == expected == DEFAULT_START
    assert create({"start": "2022-01-02T03:04:05Z"}).clock.now() == dt.datetime(
        2022, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()
    assert create({"start": 12345}).clock.now() == 12345.0


def test_backends_implement_the_protocols():
    backends = create({})
    assert isinstance(backends.deployer, Deployer)
    assert isinstance(backends.packages, PackageWatcher)
    assert isinstance(backends.clock, Clock)
    assert isinstance(backends.deployer, Hints)
    assert isinstance(backends.packages, Hints)
    assert "nothing is ever deployed" in backends.description
    assert backends.deployer.world is backends.packages.world


# -- what the backend says about its rollouts: versions, preparing, runbook, closing ----------

@pytest.mark.parametrize(("text", "message"), [
    ("x", "version 'x' is not an auto-deploy tag; expected MAJOR.MINOR.YYYYMMDDHHMM (UTC), "
          "e.g. 13.10.202103011220"),
    ("13.10.202103011220\n", "version '13.10.202103011220\\n' is not an auto-deploy tag; expected "
                             "MAJOR.MINOR.YYYYMMDDHHMM (UTC), e.g. 13.10.202103011220"),
    ("13.10.202113011220", "version '13.10.202113011220': 202113011220 is not a valid UTC time "
                           "YYYYMMDDHHMM; e.g. 13.10.202103011220"),
])
def test_versions_must_be_auto_deploy_tags_with_today_s_messages(text, message):
    backends = create({})
    with pytest.raises(BadVersion) as refused:
        backends.check_version(text)
    assert str(refused.value) == message
    assert isinstance(refused.value, DeploystateError)
    assert check_version is backends.check_version
    assert backends.check_version(VERSION) == VERSION


def test_preparing_a_rollout_moves_the_clock_to_its_tag_never_back():
    backends = create({})
    later = "13.10.202103011420"
    backends.prepare(later)
    assert backends.clock.now() == tag_time(later) == DEFAULT_START + 2 * 3600
    backends.prepare(VERSION)  # tagged earlier: the clock stays
    assert backends.clock.now() == DEFAULT_START + 2 * 3600
    backends.prepare("custom-1")  # no tag time: nothing moves
    assert backends.clock.now() == DEFAULT_START + 2 * 3600
    assert backends.runbook == RUNBOOK


def test_closing_the_backends_closes_the_world(tmp_path):
    with create({"world": str(tmp_path / "w.sim")}) as backends:
        world = backends.deployer.world
        backends.deployer.trigger(request())
        assert len(world.triggers()) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        world.triggers()
    backends.close()  # closing again does no harm
    in_memory = create({})
    in_memory.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        in_memory.deployer.trigger(request())


def test_a_package_the_simulation_does_not_build_is_refused_when_asked_for():
    backends = create({})
    with pytest.raises(UnknownPackage) as refused:
        backends.packages.status("web-image", VERSION)
    assert str(refused.value) == ("the simulation builds no package 'web-image'; ask for cng or omnibus "
                                  "(fix the spec's package_wait step)")
    assert PACKAGES == ("cng", "omnibus")
    assert {backends.packages.status(p, VERSION).package for p in PACKAGES} == set(PACKAGES)


# -- deployments over virtual time -------------------------------------------------------------

def test_deployment_statuses_over_virtual_time():
    backends = create(EXACT)
    deployer = backends.deployer
    start = backends.clock.now()
    made = deployer.trigger(request("gstg"))
    assert (made.status, made.outcome, made.started_at) == ("created", Outcome.WAITING, None)
    assert trace(backends, made.id) == [(0.0, "created"), (CREATED_S, "pending"), (QUEUE_S, "running"),
                                        (3600.0, "success")]
    done = deployer.status(made.id)
    assert done.outcome is Outcome.SUCCEEDED
    assert (done.started_at, done.finished_at) == (start + QUEUE_S, start + 3600.0)


def test_legacy_deployment_takes_the_sum_of_its_environments():
    backends = create({"seed": 7})
    world = backends.deployer.world
    legacy = backends.deployer.trigger(request(LEGACY, ref="master"))
    total = sum(world.scenario.deploy_duration(VERSION, env) for env in LEGACY)
    assert trace(backends, legacy.id)[-1] == (total, "success")


def test_same_seed_same_world_and_seeds_vary_the_jitter():
    def run(seed: int) -> list[list[tuple[float, str]]]:
        backends = create({"seed": seed, "retry_fixes": ["gprd-cny"]})
        ids = [backends.deployer.trigger(request(envs, key=str(envs))).id for envs in (LEGACY, "gprd")]
        return [trace(backends, i) for i in ids]

    assert run(3) == run(3)
    assert run(3) != run(4)
    base = Scenario().durations["gprd"]
    durations = {Scenario(seed=seed).deploy_duration(VERSION, "gprd") for seed in range(20)}
    assert len(durations) > 10
    assert all(base * 0.9 <= d <= base * 1.1 for d in durations)
    assert Scenario(seed=1, jitter=0).deploy_duration(VERSION, "gprd") == base


@given(seed=st.integers(), version=st.text(min_size=1, max_size=30),
       environment=st.text(min_size=1, max_size=10), jitter=st.floats(0, 0.99))
def test_durations_stay_within_the_jitter(seed, version, environment, jitter):
    scenario = Scenario(seed=seed, jitter=jitter)
    # An environment with a duration of its own (gprd: 90 min) jitters around that one.
    base = scenario.durations.get(environment, scenario.default_duration_s)
    duration = scenario.deploy_duration(version, environment)
    assert duration == scenario.deploy_duration(version, environment)
    assert base * (1 - jitter) - 1 <= duration <= base * (1 + jitter) + 1


def test_fail_fails_and_nobody_fixes_it():
    backends = create({**EXACT, "fail": ["gprd"]})
    deployer = backends.deployer
    made = deployer.trigger(request("gprd"))
    assert trace(backends, made.id)[-1] == (5400.0, "failed")
    assert deployer.status(made.id).outcome is Outcome.FAILED
    assert deployer.next_change_at() is None
    retried = deployer.retry(made.id)  # an API retry runs again, and fails again
    assert retried.status == "running" and retried.finished_at is None
    assert trace(backends, made.id) == [(0.0, "running"), (900.0, "failed")]


def test_retry_fixes_fails_then_a_scripted_human_retry_passes():
    backends = create({**EXACT, "retry_fixes": ["gprd-cny"], "retry_after_s": 600, "retry_run_s": 900})
    made = backends.deployer.trigger(request("gprd-cny"))
    assert trace(backends, made.id) == [(0.0, "created"), (CREATED_S, "pending"), (QUEUE_S, "running"),
                                        (3000.0, "failed"), (3600.0, "running"), (4500.0, "success")]


def test_retry_fixes_an_api_retry_before_the_human_passes_too():
    backends = create({**EXACT, "retry_fixes": ["gprd-cny"]})
    deployer = backends.deployer
    made = deployer.trigger(request("gprd-cny"))
    backends.clock.sleep(3000 + 60)
    assert deployer.status(made.id).status == "failed"
    assert deployer.retry(made.id).status == "running"
    assert trace(backends, made.id) == [(0.0, "running"), (900.0, "success")]


def test_retry_fixes_in_the_middle_of_a_legacy_deployment():
    backends = create({**EXACT, "retry_fixes": ["gprd-cny"]})
    made = backends.deployer.trigger(request(LEGACY, ref="master"))
    statuses = trace(backends, made.id)
    assert statuses[-3:] == [(6600.0, "failed"), (7200.0, "running"), (7200.0 + 900 + 5400, "success")]


def test_hang_runs_forever_until_canceled_and_a_retry_hangs_again():
    backends = create({**EXACT, "hang": ["gstg"]})
    deployer = backends.deployer
    made = deployer.trigger(request("gstg"))
    assert trace(backends, made.id)[-1] == (QUEUE_S, "running")
    backends.clock.sleep(10 * 24 * 3600)
    assert deployer.status(made.id).status == "running"
    canceled = deployer.cancel(made.id)
    assert (canceled.status, canceled.outcome) == ("canceled", Outcome.FAILED)
    assert canceled.finished_at == backends.clock.now()
    backends.clock.sleep(60)
    assert deployer.retry(made.id).status == "running"
    assert deployer.next_change_at() is None


def test_unknown_status_for_a_while():
    backends = create({**EXACT, "unknown": ["gstg"], "unknown_s": 300})
    made = backends.deployer.trigger(request("gstg"))
    assert trace(backends, made.id) == [(0.0, "created"), (CREATED_S, "pending"),
                                        (QUEUE_S, "waiting_for_callback"), (QUEUE_S + 300, "running"),
                                        (3600.0, "success")]
    backends2 = create({**EXACT, "unknown": ["gstg"]})
    again = backends2.deployer.trigger(request("gstg"))
    backends2.clock.sleep(QUEUE_S + 1)
    assert backends2.deployer.status(again.id).outcome is Outcome.UNKNOWN


def test_cancel_and_retry_of_finished_deployments_change_nothing():
    backends = create(EXACT)
    deployer = backends.deployer
    made = deployer.trigger(request("gstg"))
    backends.clock.sleep(4000)
    assert deployer.cancel(made.id).status == "success"
    assert deployer.retry(made.id).status == "success"
    backends.clock.sleep(4000)
    assert deployer.status(made.id).status == "success"
    assert [a.kind for a in deployer.world.acts()] == ["cancel", "retry"]


def test_cancel_while_pending():
    backends = create(EXACT)
    deployer = backends.deployer
    made = deployer.trigger(request("gstg"))
    backends.clock.sleep(10)
    canceled = deployer.cancel(made.id)
    assert (canceled.status, canceled.started_at) == ("canceled", None)
    backends.clock.sleep(7200)
    assert deployer.status(made.id).status == "canceled"


def test_find_by_key_and_duplicate_triggers_are_recorded():
    backends = create({})
    deployer = backends.deployer
    world = deployer.world
    assert deployer.find("rollout/trigger_gstg/1") is None
    first = deployer.trigger(request("gstg", key="rollout/trigger_gstg/1"))
    backends.clock.sleep(60)
    assert deployer.find("rollout/trigger_gstg/1") == deployer.status(first.id)
    # A careless second trigger is kept: the record must show it, find still names the first.
    second = deployer.trigger(request("gstg", key="rollout/trigger_gstg/1"))
    assert second.id != first.id
    assert deployer.find("rollout/trigger_gstg/1").id == first.id
    deployer.trigger(request(LEGACY, key="rollout/legacy/1", ref="master"))
    assert world.trigger_count("gstg") == 3
    assert world.trigger_count("gstg", alone=True) == 2
    assert world.trigger_count("gstg", ref="master") == 1
    assert world.trigger_count("gprd") == 1


def test_unknown_deployment_and_package_are_clear_backend_errors():
    backends = create({})
    for call in (backends.deployer.status, backends.deployer.retry, backends.deployer.cancel):
        with pytest.raises(UnknownDeployment, match="no simulated deployment '42'") as caught:
            call("42")
        assert isinstance(caught.value, BackendError) and not caught.value.transient
    with pytest.raises(UnknownPackage, match="cng or omnibus"):
        backends.packages.status("charts", VERSION)


def test_the_request_is_recorded_and_check_mode_false_is_noted(caplog):
    backends = create({})
    world = backends.deployer.world
    backends.clock.sleep(120)
    with caplog.at_level(logging.INFO, logger="deploystate_backends.simulated"):
        backends.deployer.trigger(TriggerRequest(key="k", version=VERSION, environments=LEGACY,
                                                 ref="master", check_mode=False, user="release-bot"))
    (made,) = world.triggers()
    assert (made.key, made.version, made.environments, made.ref, made.check_mode, made.user, made.at) == (
        "k", VERSION, LEGACY, "master", False, "release-bot", DEFAULT_START + 120)
    assert "check_mode false" in caplog.text
    assert world.summary()["real_requests"] == 1


# -- package builds ----------------------------------------------------------------------------

def test_package_builds_appear_run_and_finish():
    backends = create({"jitter": 0, "build_s": 2400, "build_appear_s": 300, "fail_builds": "omnibus"})
    packages = backends.packages
    assert packages.status("cng", VERSION).outcome is Outcome.MISSING
    assert packages.status("omnibus", VERSION).status == "missing"
    assert packages.next_change_at() == DEFAULT_START + 300
    backends.clock.sleep(300)
    assert packages.status("cng", VERSION).status == "running"
    backends.clock.sleep(2399)
    assert packages.status("cng", VERSION).outcome is Outcome.WAITING
    backends.clock.sleep(1)
    cng, omnibus = packages.status("cng", VERSION), packages.status("omnibus", VERSION)
    assert (cng.status, cng.outcome) == ("success", Outcome.SUCCEEDED)
    assert (omnibus.status, omnibus.outcome) == ("failed", Outcome.FAILED)
    assert packages.next_change_at() is None


def test_package_tags_follow_the_auto_deploy_scheme():
    backends = create({"seed": 5})
    cng = backends.packages.status("cng", VERSION).tag
    omnibus = backends.packages.status("omnibus", VERSION).tag
    gitlab_sha = cng.split("+")[1]
    assert cng.startswith(VERSION + "+") and len(gitlab_sha) == 12
    assert omnibus.startswith(f"{VERSION}+{gitlab_sha}.") and len(omnibus.split(".")[-1]) == 12
    assert create({"seed": 6}).packages.status("cng", VERSION).tag != cng


def test_builds_of_a_later_tag_wait_for_it_and_other_versions_start_when_asked():
    backends = create({"jitter": 0})
    packages = backends.packages
    later = "13.10.202103011420"  # tagged two hours after the clock's start
    backends.clock.sleep(3600)
    assert packages.status("cng", later).status == "missing"
    backends.clock.sleep(3600 + 300)
    assert packages.status("cng", later).status == "running"
    # Not an auto-deploy tag: its builds count from when they were first asked for.
    assert packages.status("cng", "custom-1").status == "missing"
    backends.clock.sleep(300)
    assert packages.status("cng", "custom-1").status == "running"
    assert packages.status("cng", "custom-1").tag == "custom-1"


# -- hints -------------------------------------------------------------------------------------

def test_next_change_at_is_the_earliest_change_of_anything():
    backends = create({**EXACT, "build_s": 2400, "build_appear_s": 300})
    deployer, packages = backends.deployer, backends.packages
    assert deployer.next_change_at() is None
    made = deployer.trigger(request("gstg"))
    assert deployer.next_change_at() == DEFAULT_START + CREATED_S
    backends.clock.sleep(60)
    assert deployer.next_change_at() == DEFAULT_START + 3600
    packages.status("omnibus", VERSION)  # now watched: its build appears at +300
    assert deployer.next_change_at() == DEFAULT_START + 300
    backends.clock.sleep(7200)
    assert deployer.status(made.id).status == "success"
    assert deployer.next_change_at() is None


ENVIRONMENTS = ("gstg", "gprd-cny", "gprd")


@given(seed=st.integers(0, 10**6),
       fates=st.lists(st.sampled_from(["ok", "fail", "retry_fixes", "hang"]), min_size=3, max_size=3),
       unknown=st.sets(st.sampled_from(ENVIRONMENTS)),
       gaps=st.lists(st.integers(0, 4000), min_size=1, max_size=4),
       acts=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["retry", "cancel"]),
                               st.integers(0, 9000)), max_size=4))
def test_hints_never_skip_a_change(seed, fates, unknown, gaps, acts):
    """Between one hint and the next, no status of anything changes (checked at many instants)."""
    settings: dict[str, object] = {"seed": seed, "unknown": sorted(unknown)}
    for environment, fate in zip(ENVIRONMENTS, fates, strict=True):
        if fate != "ok":
            settings.setdefault(fate, []).append(environment)
    backends = create(settings)
    deployer, clock = backends.deployer, backends.clock
    ids = []
    for index, gap in enumerate(gaps):
        clock.sleep(gap)
        envs = (LEGACY, "gstg", "gprd-cny", "gprd")[index]
        ids.append(deployer.trigger(request(envs, key=f"k{index}")).id)
        backends.packages.status(("cng", "omnibus")[index % 2], VERSION)
    origin = clock.now()
    pending = sorted(acts, key=lambda a: a[2])

    def snapshot() -> list[str]:
        return [deployer.status(i).status for i in ids] + [
            backends.packages.status(p, VERSION).status for p in ("cng", "omnibus")]

    for _ in range(80):
        now = clock.now()
        before = snapshot()
        at = deployer.next_change_at()
        assert at is None or at > now
        act_at = max(now, origin + pending[0][2]) if pending else math.inf
        end = min(at if at is not None else math.inf, act_at)
        if end == math.inf:
            end = now + 48 * 3600
        for fraction in (0.01, 0.5, 0.99):
            clock.advance_to(now + (end - now) * fraction)
            assert snapshot() == before
        if act_at < (at if at is not None else math.inf):
            # Someone retries or cancels before the next change; the hint is asked again after.
            clock.advance_to(act_at)
            assert snapshot() == before
            target, kind, _ = pending.pop(0)
            getattr(deployer, kind)(ids[target % len(ids)])
            continue
        if at is None:
            return
        clock.advance_to(at)
        assert snapshot() != before
    raise AssertionError("the world kept changing")


# -- durability --------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    from deploystate.ports import TriggerRequest
    from deploystate_backends.simulated import create
    settings = json.loads(sys.argv[1])
    backends = create(settings)
    deployer, clock = backends.deployer, backends.clock
    out = {}
    for envs in json.loads(sys.argv[2]):
        key = "rollout/" + ",".join(envs)
        found = deployer.find(key)
        made = found or deployer.trigger(TriggerRequest(key=key, version="13.10.202103011220",
                                         environments=envs, ref="next-gen", check_mode=True))
        out[key] = made.id
        clock.sleep(float(sys.argv[3]))
    out["now"] = clock.now()
    out["statuses"] = {i: deployer.status(i).status for i in out.values() if isinstance(i, str)}
    print(json.dumps(out), flush=True)
    if len(sys.argv) > 4:  # keep writing the clock until killed
        while True:
            clock.sleep(60)
""")


def run_child(settings: dict[str, object], environments: list[list[str]], sleep_s: float) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings), json.dumps(environments),
                           str(sleep_s)], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout)


def test_world_survives_a_new_process(tmp_path):
    path = tmp_path / "world.db"
    settings = {"world": str(path), "seed": 11, "retry_fixes": ["gprd-cny"], "start": "2021-03-01T12:20:00Z"}
    out = run_child(settings, [["gstg"], list(LEGACY)], sleep_s=1234)
    with World.open(path) as world:  # the file alone: scenario, clock and record come from it
        assert world.scenario.seed == 11 and world.scenario.retry_fixes == ("gprd-cny",)
        assert world.clock.now() == out["now"] == DEFAULT_START + 2 * 1234
        records = world.triggers()
        assert [(t.key, t.environments, t.at) for t in records] == [
            ("rollout/gstg", ("gstg",), DEFAULT_START), ("rollout/" + ",".join(LEGACY), LEGACY,
                                                         DEFAULT_START + 1234)]
        assert {i: world.deployment(i).status for i in out["statuses"]} == out["statuses"]
    # Resuming with the same settings finds both triggers instead of triggering again.
    again = run_child(settings, [["gstg"], list(LEGACY)], sleep_s=10)
    assert {k: v for k, v in again.items() if k.startswith("rollout/")} == {
        k: v for k, v in out.items() if k.startswith("rollout/")}
    with World.open(path) as world:
        assert world.trigger_count("gstg") == 2 and world.trigger_count("gstg", alone=True) == 1
        assert world.clock.now() == DEFAULT_START + 2 * 1234 + 20


def test_world_survives_sigkill_and_the_clock_never_goes_back(tmp_path):
    path = tmp_path / "world.db"
    settings = {"world": str(path), "seed": 2}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(settings), json.dumps([["gprd"]]),
                              "600", "forever"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        told = json.loads(child.stdout.readline())
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    backends = create(settings)
    world = backends.deployer.world
    assert world.clock.now() >= told["now"]
    assert [t.key for t in world.triggers()] == ["rollout/gprd"]
    assert backends.deployer.find("rollout/gprd").id == told["rollout/gprd"]
    backends.clock.sleep(5)
    reached = backends.clock.now()
    world.close()
    with World.open(path) as reopened:
        assert reopened.clock.now() == reached


def test_two_connections_to_one_world_file_see_each_others_changes(tmp_path):
    """Each keeps a decoded copy of the record; a change through one must show through the other."""
    path = tmp_path / "world.db"
    with World.open(path, Scenario.from_settings(EXACT)) as one, World.open(path) as other:
        assert other.find("a") is None and other.next_change_at() is None  # both copies now read
        made = one.trigger(request("gstg", key="a"))
        assert other.find("a") == made == other.deployment(made.id)
        assert other.next_change_at() == DEFAULT_START + CREATED_S
        other.clock.advance(QUEUE_S)
        assert one.clock.now() == DEFAULT_START + QUEUE_S
        assert one.deployment(made.id).status == "running"
        # One's copy of the time is behind the file's now: its move must start from the file's.
        other.clock.advance(100)
        assert one.clock.advance(10) == DEFAULT_START + QUEUE_S + 110
        assert other.clock.advance_to(DEFAULT_START) == DEFAULT_START + QUEUE_S + 110  # never back
        later = other.trigger(request("gprd", key="b"))
        assert later.id != made.id
        assert [t.at for t in one.triggers()] == [DEFAULT_START, DEFAULT_START + QUEUE_S + 110]
        one.act(later.id, "cancel")
        assert other.deployment(later.id).status == "canceled"
        assert [(a.deployment_id, a.kind) for a in other.acts()] == [(later.id, "cancel")]
        assert other.build("cng", VERSION).status == "missing"  # tagged at the start, appears at 300 s
        assert one.next_change_at() == DEFAULT_START + 300  # the build other asked about, not gstg's end
        with World.open(path) as fresh:  # nothing cached: the file as it is
            assert one.summary() == other.summary() == fresh.summary()


@given(steps=st.lists(st.tuples(st.integers(0, 1), st.sampled_from(["trigger", "retry", "cancel", "sleep",
                                                                     "hint", "build"]),
                                st.integers(0, 3)), max_size=12))
def test_shared_world_file_copies_agree_with_the_file(steps):
    """Whatever two connections do in turn, both answer as a world just read from the file does."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "world.db")
        worlds = [World.open(path, Scenario(retry_fixes=("gstg",), hang=("gprd",))), World.open(path)]
        try:
            for index, (who, what, n) in enumerate(steps):
                world = worlds[who]
                ids = [t.id for t in world.triggers()]
                if what == "trigger":
                    world.trigger(request(LEGACY[: n % 3 + 1], key=f"k{index}"))
                elif what in ("retry", "cancel") and ids:
                    world.act(ids[n % len(ids)], what)
                elif what == "sleep":
                    world.clock.sleep(n * 1000)
                elif what == "hint" and (at := world.next_change_at()) is not None:
                    world.clock.advance_to(at)
                elif what == "build":
                    world.build(("cng", "omnibus")[n % 2], f"13.10.20210301{12 + n:02}20")
                assert worlds[0].summary() == worlds[1].summary()
            with World.open(path) as fresh:
                assert worlds[0].summary() == fresh.summary()
                assert worlds[1].acts() == fresh.acts()
        finally:
            for world in worlds:
                world.close()


def test_a_world_file_refuses_other_settings_and_foreign_files(tmp_path):
    path = tmp_path / "world.db"
    create({"world": str(path), "seed": 1, "fail": "gprd"}).deployer.world.close()
    with pytest.raises(WorldError, match=r"seed: file has 1, given 2.*same settings"):
        create({"world": str(path), "seed": 2, "fail": "gprd"})
    with pytest.raises(WorldError, match="start"):
        create({"world": str(path), "seed": 1, "fail": "gprd", "start": 0})
    assert create({"world": str(path)}).deployer.world.scenario.fail == ("gprd",)
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    with pytest.raises(WorldError, match="not a SQLite file"):
        create({"world": str(text)})
    assert text.read_text() == "not a database"
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(WorldError, match="another program"):
        create({"world": str(other)})
    with pytest.raises(WorldError, match="is a folder"):
        create({"world": str(tmp_path)})
    with pytest.raises(WorldError, match="does not exist"):
        create({"world": str(tmp_path / "missing" / "world.db")})
    with pytest.raises(WorldError, match="no simulated world"):
        World.open(tmp_path / "absent.db", create=False)


def test_command_line_summary(tmp_path):
    path = tmp_path / "world.db"
    backends = create({"world": str(path), **EXACT})
    backends.deployer.trigger(request("gstg", key="a"))
    backends.deployer.trigger(request(LEGACY, key="b", ref="master", check_mode=False))
    backends.clock.sleep(4000)
    command = [sys.executable, "-m", "deploystate_backends.simulated", str(path)]
    summary = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True,
                                        timeout=60).stdout)
    assert summary["per_environment"] == {"gprd": 1, "gprd-cny": 1, "gstg": 2}
    assert summary["per_target"] == {"gstg": 1, "gstg,gprd-cny,gprd": 1}
    assert (summary["triggers"], summary["real_requests"], summary["now"]) == (2, 1, DEFAULT_START + 4000)
    assert [d["status"] for d in summary["deployments"]] == ["success", "running"]
    text = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    assert "gstg: triggered 2x" in text
    missing = subprocess.run([*command[:-1], str(tmp_path / "nope.db")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and "no simulated world" in missing.stderr
    assert not (tmp_path / "nope.db").exists()


# -- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "message"), [
    ({"durations": {"gprd": -5}}, r"'durations.gprd': -5 .*from 0 to 2592000"),
    ({"build_s": -1}, r"'build_s': -1 .*from 0 to 2592000"),
    ({"retry_after_s": "soon"}, r"'retry_after_s': 'soon'"),
    ({"jitter": 1.5}, r"'jitter'.*fraction"),
    ({"seed": "abc"}, r"'seed'.*whole number"),
    ({"seed": 1.5}, r"'seed'"),
    ({"seeed": 1}, r"unknown simulated backend setting 'seeed'; did you mean 'seed'"),
    ({"fail_builds": ["omnbus"]}, r"'fail_builds'.*cng, omnibus"),
    ({"fail": "gprd", "hang": ["gprd"]}, r"'gprd' is in both 'fail' and 'hang'"),
    ({"start": "2021-03-01T12:20:00"}, r"time zone"),
    ({"start": "yesterday"}, r"'start'"),
    ({"durations": "gstg"}, r"'durations'.*gstg=3600"),
    ({"fail": [1, 2]}, r"'fail'.*list of names"),
    ({"world": 5}, r"'world'"),
])
def test_bad_settings_are_refused_clearly(settings, message):
    with pytest.raises(SettingsError, match=message):
        create(settings)


def test_plain_string_settings_and_unknown_environments_are_accepted():
    backends = create({"seed": "9", "jitter": "0", "durations": "moon=120, gstg=60", "fail": "moon,mars",
                       "unknown_s": "30"})
    scenario = backends.deployer.world.scenario
    assert (scenario.seed, scenario.fail, scenario.durations["moon"]) == (9, ("mars", "moon"), 120.0)
    assert scenario.durations["gprd"] == Scenario().durations["gprd"]  # defaults stay for the others
    made = backends.deployer.trigger(request("moon"))
    assert trace(backends, made.id)[-1] == (120.0, "failed")


@given(seed=st.integers(), jitter=st.floats(0, 0.99), fail=st.lists(st.sampled_from(ENVIRONMENTS)),
       build_s=st.floats(0, 30 * 86400), start=st.floats(0, 4e9))
def test_scenario_settings_round_trip(seed, jitter, fail, build_s, start):
    scenario = Scenario(seed=seed, jitter=jitter, fail=tuple(fail), build_s=build_s, start=start)
    assert Scenario.from_settings(json.loads(json.dumps(scenario.to_settings()))) == scenario


@pytest.mark.parametrize(("settings", "says"), [
    ({"build_s": 1e300},
     "'build_s': 1e+300 is not valid; give a number of seconds from 0 to 2592000 (30 days)"),
    ({"durations": {"gprd": 2**63}}, "'durations.gprd': 9223372036854775808 is not valid; give a number of "
                                     "seconds from 0 to 2592000 (30 days)"),
    ({"default_duration_s": "inf"}, "'default_duration_s': 'inf' is not valid"),
    ({"retry_after_s": math.nan}, "'retry_after_s': nan is not valid"),
    ({"start": 1e300}, "'start': 1e+300 is not valid; give a UTC time between 1970-01-01 and 2999-12-31"),
    ({"start": "3021-03-01T12:20:00Z"},
     "'start': '3021-03-01T12:20:00Z' is not valid; give a UTC time between 1970-01-01 and 2999-12-31"),
    ({"start": -1}, "'start': -1 is not valid"),
])
def test_numbers_that_would_spin_or_overflow_the_clock_are_refused(settings, says):
    with pytest.raises(SettingsError, match=re.escape(says)):
        create(settings)
    with pytest.raises(SettingsError, match=re.escape(says.split(" is not valid")[0])):
        Scenario.from_settings(settings)

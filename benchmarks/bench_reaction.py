"""Reaction latency on the real clock: a pipeline finishes, how soon is the next one triggered?

Run from the repository root::

    python benchmarks/bench_reaction.py                # 5 rollouts (about a minute and a half)
    python benchmarks/bench_reaction.py --rollouts 2   # a smoke run

Everything runs at real speed on 127.0.0.1, nothing is simulated in time: the GitLab stand-in
(``gitlab_standin.Standin`` on a ``RealClock``, speed 1) with Pipeline Hooks posted the moment a
pipeline changes (``HookSender``, no hook delay), and the real runner (``deploystate.runner.Runner``)
with the real GitLab backend configured as in production, ``webhook_listen`` and
``webhook_secret_env`` (its own listener, the system clock that a hook wakes), auto-promotion,
and the default wait policy.  Short pipelines (about 3 s each: builds, then staging beside the
legacy deployment, then canary, then production) and a 3-second bake: the seed spec with
``duration_s = 3``.  Each rollout gets a fresh stand-in, listener and runner.

Measured, from the stand-in's own record (its clock is the same wall clock):

- reaction: for each deployment triggered when pipelines it needs finished (staging and the legacy
  deployment after both package builds, canary after staging), the time from the last of those
  pipelines' ``finished_at`` to the trigger arriving (the triggered pipeline's ``created_at``,
  stamped by the stand-in while it handles the trigger request).  p50 and p95 over all rollouts.
  Target: p95 <= 250 ms.
- for information, production: from the bake's end (the runner counts the bake from the
  canary's ``finished_at``, so: that plus the bake's duration) to production's trigger.
- API calls per rollout: every request the stand-in answered (hooks are not API calls).

Bounded: each rollout must finish within ``--rollout-timeout`` seconds (default 40) and the whole
run stops starting rollouts after ``--budget`` seconds (default 150); a rollout that overruns is
reported and the script exits non-zero (its threads are daemons).  It asserts nothing else.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import socket
import statistics
import sys
import threading
import time
import tomllib
from importlib import resources
from typing import Any

import attrs
from deploystate_backends.gitlab import create
from deploystate_backends.gitlab_standin import CNG, DEPLOYER, OMNIBUS, RealClock, Standin, Timing, World
from deploystate_backends.gitlab_standin.hooks import HookFaults, HookSender
from deploystate_backends.gitlab_standin.world import Pipeline, fake_sha

from deploystate.journal import MemoryStore
from deploystate.runner import Runner, RunnerConfig
from deploystate.spec import Spec, StepKind

VERSION = "13.10.202103011220"
BAKE_S = 3
TARGET_P95_S = 0.250
HOOK_SECRET_ENV = "BENCH_REACTION_HOOK_SECRET"
TOKENS = {"GITLAB_API_TOKEN": "standin-token", "DEPLOYER_TRIGGER_TOKEN": "deployer-trigger-token",
          HOOK_SECRET_ENV: "bench-reaction-hook-secret"}
# A few seconds per pipeline: every job is created for 0.2 s, pending for 0.3 s, the scripted job
# runs for the given time and the others for 0.3 s (deployer: 3 stages; builds: 2 stages).
DEPLOY_TIMING = Timing(created_s=0.2, pending_s=0.3, running_s=1.0, other_running_s=0.3)
BUILD_TIMING = Timing(created_s=0.2, pending_s=0.3, running_s=1.5, other_running_s=0.3)


def short_bake_spec() -> Spec:
    """The seed spec as TOML, with a bake of BAKE_S seconds instead of 30 minutes."""
    text = resources.files("deploystate.specs").joinpath("seed.toml").read_text("utf-8")
    if text.count("duration_s = 1800") != 1:
        raise SystemExit("seed.toml changed: update short_bake_spec()")
    data = tomllib.loads(text.replace("duration_s = 1800", f"duration_s = {BAKE_S}"))
    data["name"] = "seed-short-bake"
    return Spec.from_mapping(data, source="seed.toml (short bake)")


class Quiet:
    """A notifier that drops every notice (printing them would be timed too)."""

    def notify(self, notice: object) -> None:
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.frozen
class Rollout:
    stop: str
    wall_s: float
    calls: int
    reactions: dict[str, float]  # step -> seconds from what it needed finishing to its trigger
    after_bake: float | None  # production: seconds from the bake's end to its trigger
    triggers: int
    hooks: int


def run_one(spec: Spec, timeout_s: float) -> Rollout | None:
    """One rollout to done on a fresh stand-in; None if it did not end within ``timeout_s``."""
    world = World(clock=RealClock())
    world.script(DEPLOYER.path, timing=DEPLOY_TIMING)
    commit = fake_sha("gitlab-org/security/gitlab", VERSION)[:12]
    world.seed_pipeline(CNG.path, f"{VERSION}+{commit}", timing=BUILD_TIMING)
    world.seed_pipeline(OMNIBUS.path, f"{VERSION}+{commit}.{fake_sha(OMNIBUS.path, VERSION)[:12]}",
                        timing=BUILD_TIMING)
    started = time.monotonic()
    with Standin(world) as standin:
        listen = f"127.0.0.1:{free_port()}"
        settings = {"url": standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                    "omnibus_project": OMNIBUS.path, "webhook_listen": listen,
                    "webhook_secret_env": HOOK_SECRET_ENV}
        backends = create(settings, TOKENS)
        sender = HookSender(world, faults=HookFaults(), base_url=standin.url)
        for project in (DEPLOYER, CNG, OMNIBUS):
            sender.add_hook(project, f"http://{listen}/hooks/gitlab", TOKENS[HOOK_SECRET_ENV])
        sender.start()
        store = MemoryStore()
        outcome: dict[str, Any] = {}

        def drive() -> None:
            try:
                runner = Runner(store, backends, config=RunnerConfig(auto_promote="bench"), notifier=Quiet())
                runner.create(VERSION, spec)
                outcome["result"] = runner.run(VERSION)
            except BaseException as error:  # reported by the main thread
                outcome["error"] = error

        thread = threading.Thread(target=drive, name="bench-runner", daemon=True)
        thread.start()
        thread.join(timeout_s)
        sender.stop()
        if thread.is_alive():
            return None
        backends.close()
        if "error" in outcome:
            raise outcome["error"]
        wall = time.monotonic() - started
        calls = sum(standin.counters().requests.values())
        triggers = sum(standin.counters().trigger_requests_by_env.values())
        reactions, after_bake = measure(spec, world.pipelines())
        return Rollout(outcome["result"].stop.value, wall, calls, reactions, after_bake, triggers,
                       len(sender.deliveries()))


def measure(spec: Spec, pipelines: list[Pipeline]) -> tuple[dict[str, float], float | None]:
    """Per deployment step, its trigger's arrival minus the moment it could have been sent.

    That moment is the last ``finished_at`` of the pipelines it needs; for a step behind a bake
    (production), the bake counts from the canary's ``finished_at`` (as the runner counts it), so
    it is that plus the bake's duration.  Returns the pipeline-to-trigger reactions by step, and
    the bake-end-to-trigger gap (None if the spec has no step behind a bake).
    """
    packages = {"cng": CNG.id, "omnibus": OMNIBUS.id}
    finished: dict[str, float] = {}  # step -> its pipeline's finished_at
    created: dict[str, float] = {}  # deployment step -> its triggered pipeline's created_at
    for pipeline in pipelines:
        end = pipeline.finished_at if pipeline.finished_at is not None else math.nan
        for step in spec.steps:
            if step.kind is StepKind.PACKAGE_WAIT and pipeline.project_id == packages.get(step.package or ""):
                finished[step.name] = end
            elif (step.targets and pipeline.project_id == DEPLOYER.id and pipeline.source == "trigger"
                  and pipeline.environment == ",".join(step.targets)):
                finished[step.name] = end
                created[step.name] = pipeline.created_at
    ready_at: dict[str, float] = {}  # when each step could have been done
    behind_bake: set[str] = set()
    reactions: dict[str, float] = {}
    after_bake: float | None = None
    for step in spec.steps:  # a spec lists every step after the steps it needs
        ready = max((ready_at[n] for n in step.needs), default=-math.inf)
        if any(spec.step(n).kind is StepKind.BAKE or n in behind_bake for n in step.needs):
            behind_bake.add(step.name)
        if step.name in created:
            if step.name in behind_bake:
                after_bake = created[step.name] - ready
            elif step.needs:
                reactions[step.name] = created[step.name] - ready
        if step.name in finished:
            ready_at[step.name] = finished[step.name]
        elif step.kind is StepKind.BAKE:
            ready_at[step.name] = ready + (step.duration_s or 0)
        else:  # the tag; a promotion (automatic here) needs nothing more than its needs
            ready_at[step.name] = ready
    return reactions, after_bake


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (p95 of 15 samples is the 15th smallest: the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rollouts", type=int, default=5, help="rollouts (default 5)")
    parser.add_argument("--rollout-timeout", type=float, default=40.0, help="seconds per rollout at most")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="start no rollout after this many seconds (default 150)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    spec = short_bake_spec()
    print("command:", shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"real clock, stand-in at speed 1 on 127.0.0.1, hooks sent at once; pipelines ~3 s, bake "
          f"{BAKE_S} s, auto-promotion; {args.rollouts} rollouts; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    began = time.monotonic()
    done: list[Rollout] = []
    for index in range(args.rollouts):
        left = args.budget - (time.monotonic() - began)
        if left <= 0:
            print(f"budget of {args.budget:g} s spent: stopping after {index} rollouts")
            break
        one = run_one(spec, min(args.rollout_timeout, left + args.rollout_timeout))
        if one is None:
            print(f"  rollout {index + 1}: not done within {args.rollout_timeout:g} s; stopping")
            return 1
        done.append(one)
        steps = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in one.reactions.items())
        bake = f"{one.after_bake * 1000:.0f} ms" if one.after_bake is not None else "?"
        print(f"  rollout {index + 1}: {one.stop}, {one.wall_s:.1f} s wall, {one.calls} API calls, "
              f"{one.triggers} triggers, {one.hooks} hooks; reaction {steps}; bake end -> production "
              f"{bake}", flush=True)
    if not done:
        return 1
    reactions = [s for r in done for s in r.reactions.values()]
    p50, p95 = statistics.median(reactions), percentile(reactions, 0.95)
    print()
    print(f"reaction, pipeline finished -> next trigger arrived ({len(reactions)} samples): "
          f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(reactions) * 1000:.0f} ms; "
          f"target p95 <= {TARGET_P95_S * 1000:.0f} ms: {'met' if p95 <= TARGET_P95_S else 'MISSED'}")
    for name in done[0].reactions:
        values = [r.reactions[name] for r in done if name in r.reactions]
        print(f"  {name:<28} p50 {statistics.median(values) * 1000:>6.0f} ms  "
              f"max {max(values) * 1000:>6.0f} ms")
    bakes = [r.after_bake for r in done if r.after_bake is not None]
    if bakes:
        print(f"bake end -> production trigger: p50 {statistics.median(bakes) * 1000:.0f} ms, "
              f"max {max(bakes) * 1000:.0f} ms")
    print(f"API calls per rollout: mean {statistics.mean(r.calls for r in done):.1f} "
          f"(min {min(r.calls for r in done)}, max {max(r.calls for r in done)}); "
          f"wall per rollout {statistics.mean(r.wall_s for r in done):.1f} s; "
          f"total {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

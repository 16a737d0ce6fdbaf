"""Waiting for downstream pipelines: API calls and orchestration overhead per rollout.

Run from the repository root::

    python benchmarks/bench_waiting.py               # 10 rollouts per policy (about 20 s)
    python benchmarks/bench_waiting.py --rollouts 2  # a smoke run

One scenario, three waiting policies side by side, the same seeded durations for each:

(a) fixed 60-second polling, as the original coordinator did;
(b) ours: GitLab Pipeline Hooks wake the runner, safety polls (``gitlab.watching.SAFETY_POLLS``)
    catch lost hooks;
(c) adaptive polling without webhooks (``WaitPolicy()``), for information.

Every rollout runs the real runner with the real GitLab adapter (python-gitlab) against the GitLab
stand-in over HTTP on loopback; with (b) the stand-in posts its hooks to the adapter's receiver.
All of them share one virtual time base (``SharedVirtualClock``): time jumps ahead only when the
runner and the hook sender both sleep, so a five-hour rollout takes seconds and every wall-clock
millisecond of HTTP and Python is *not* counted as overhead.  Hooks are delivered with a modelled
latency (``--hook-latency``, default 1-3 s after the change, as GitLab sends them from a queue).

Scenario (the seed spec): builds about 40 minutes (CNG and Omnibus in parallel), deployments
about 60 minutes each (gstg beside the legacy all-environments deployment, then gprd-cny, then
gprd), a 30-minute bake, promotion at the end of the bake.  "About": each duration is drawn
uniformly within +-15% (``--jitter``), seeded per rollout, identical across policies.

Measured, both at the stand-in (its own record, not the runner's):

- API calls per rollout: every request the stand-in answered;
- overhead per rollout: for each deployment, its pipeline's ``created_at`` minus the moment it
  could have been triggered (the latest ``finished_at`` of what it needs; for production, the
  canary's ``finished_at`` plus the 30-minute bake), summed.

Targets (issue 4): (b) uses at most 25% of (a)'s calls, with at most 10 s of overhead per rollout.
The script prints the numbers and the targets; it asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
from deploystate_backends.gitlab import create
from deploystate_backends.gitlab.settings import GitLabSettings
from deploystate_backends.gitlab.watching import watch
from deploystate_backends.gitlab_standin import CNG, DEPLOYER, OMNIBUS, Standin, World
from deploystate_backends.gitlab_standin.hooks import HookFaults, HookSender
from deploystate_backends.gitlab_standin.shared_clock import SharedVirtualClock
from deploystate_backends.gitlab_standin.world import fake_sha

from deploystate.journal import MemoryStore
from deploystate.runner import Runner, RunnerConfig
from deploystate.spec import Spec, StepKind, builtin_spec
from deploystate.waiting import WaitPolicy

VERSION = "13.10.202103011220"
BUILD_S = 40 * 60
DEPLOY_S = 60 * 60
HOOK_SECRET = "bench-hook-secret"
CALLS_TARGET = 0.25
OVERHEAD_TARGET_S = 10.0
POLICIES = ("a", "b", "c")
LABELS = {"a": "(a) fixed 60 s polling", "b": "(b) webhooks + safety polls", "c": "(c) adaptive polling"}
# Fixed parts of the stand-in's pipelines (job created/pending times, the other jobs' run times):
# the scripted job's run time is the drawn duration minus these, so the whole pipeline lasts it.
DEPLOYER_FIXED_S = (3 * (DEPLOYER.timing.created_s + DEPLOYER.timing.pending_s)
                    + 2 * DEPLOYER.timing.other_running_s)
CNG_FIXED_S = 2 * (CNG.timing.created_s + CNG.timing.pending_s) + CNG.timing.other_running_s
OMNIBUS_FIXED_S = 2 * (OMNIBUS.timing.created_s + OMNIBUS.timing.pending_s) + OMNIBUS.timing.other_running_s


@attrs.frozen
class Durations:
    """One rollout's drawn durations, in seconds."""

    cng: float
    omnibus: float
    deployments: dict[str, float]  # by DEPLOY_ENVIRONMENT value

    @classmethod
    def draw(cls, spec: Spec, seed: int, jitter: float) -> Durations:
        rng = random.Random(seed)

        def about(seconds: float) -> float:
            return seconds * rng.uniform(1 - jitter, 1 + jitter)

        environments = [",".join(s.targets) for s in spec.steps if s.targets]
        return cls(about(BUILD_S), about(BUILD_S), {env: about(DEPLOY_S) for env in environments})


@attrs.frozen
class Result:
    policy: str
    calls: int
    overhead_s: float
    gaps: dict[str, float]
    wall_s: float
    stop: str
    hooks_sent: int = 0


def policy_config(policy: str) -> WaitPolicy:
    return WaitPolicy(fixed_interval_s=60.0) if policy == "a" else WaitPolicy()


@contextmanager
def scenario(spec: Spec, durations: Durations) -> Iterator[tuple[Standin, SharedVirtualClock]]:
    clock = SharedVirtualClock()
    world = World(clock=clock)
    for env, seconds in durations.deployments.items():
        world.script(DEPLOYER.path, env, timing=attrs.evolve(DEPLOYER.timing,
                                                             running_s=seconds - DEPLOYER_FIXED_S))
    commit = fake_sha("gitlab-org/security/gitlab", VERSION)[:12]
    world.seed_pipeline(CNG.path, f"{VERSION}+{commit}", timing=attrs.evolve(
        CNG.timing, running_s=durations.cng - CNG_FIXED_S))
    world.seed_pipeline(OMNIBUS.path, f"{VERSION}+{commit}.{fake_sha(OMNIBUS.path, VERSION)[:12]}",
                        timing=attrs.evolve(OMNIBUS.timing, running_s=durations.omnibus - OMNIBUS_FIXED_S))
    with Standin(world) as standin:
        yield standin, clock


def run_one(policy: str, spec: Spec, durations: Durations, hook_faults: HookFaults) -> Result:
    started = time.perf_counter()
    with scenario(spec, durations) as (standin, clock):
        settings = {"url": standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
                    "omnibus_project": OMNIBUS.path}
        env = {"GITLAB_API_TOKEN": "standin-token", "DEPLOYER_TRIGGER_TOKEN": "deployer-trigger-token"}
        base = create(settings, env)
        runner_clock = clock.member("runner")
        backends = attrs.evolve(base, clock=runner_clock)
        sender: HookSender | None = None
        hooks = None
        if policy == "b":
            hooks = watch(base.deployer, base.packages, GitLabSettings.from_mapping(settings), runner_clock,
                          secret=HOOK_SECRET, listen="127.0.0.1:0")
            backends = attrs.evolve(backends, deployer=hooks.deployer, packages=hooks.packages)
            sender = HookSender(standin.world, faults=hook_faults, base_url=standin.url)
            for project in (DEPLOYER, CNG, OMNIBUS):
                sender.add_hook(project, hooks.receiver.url, HOOK_SECRET)
            sender.start()
        try:
            with runner_clock:
                runner = Runner(MemoryStore(), backends, config=RunnerConfig(
                    auto_promote="bench", wait_policy=policy_config(policy)))
                runner.create(VERSION, spec)
                result = runner.run(VERSION)
        finally:
            if sender is not None:
                sender.stop()
            if hooks is not None:
                hooks.listener.stop()
        calls = sum(standin.counters().requests.values())
        gaps = overhead(spec, standin.world)
    return Result(policy, calls, sum(gaps.values()), gaps, time.perf_counter() - started, result.stop.value,
                  len(sender.deliveries()) if sender is not None else 0)


def overhead(spec: Spec, world: World) -> dict[str, float]:
    """Per deployment step: its pipeline's created_at minus when it could have been triggered."""
    finished: dict[str, float] = {}
    created: dict[str, float] = {}
    for pipeline in world.pipelines():
        end = pipeline.finished_at if pipeline.finished_at is not None else float("nan")
        if pipeline.project_id == CNG.id:
            finished["package:cng"] = end
        elif pipeline.project_id == OMNIBUS.id:
            finished["package:omnibus"] = end
        elif pipeline.project_id == DEPLOYER.id:
            finished[pipeline.environment] = end
            created[pipeline.environment] = pipeline.created_at
    done: dict[str, float] = {}
    gaps: dict[str, float] = {}
    for step in spec.steps:  # a spec lists every step after the steps it needs
        ready = max((done[n] for n in step.needs), default=0.0)
        if step.kind is StepKind.PACKAGE_WAIT:
            done[step.name] = finished[f"package:{step.package}"]
        elif step.targets:
            env = ",".join(step.targets)
            gaps[step.name] = created[env] - ready
            done[step.name] = finished[env]
        elif step.kind is StepKind.BAKE:
            assert step.duration_s is not None
            done[step.name] = ready + step.duration_s
        else:  # tag; promotion at the end of the bake needs nothing more than the bake
            done[step.name] = ready
    return gaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rollouts", type=int, default=10, help="rollouts per policy (default 10)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the drawn durations (default 42)")
    parser.add_argument("--jitter", type=float, default=0.15, help="durations vary by +- this fraction")
    parser.add_argument("--hook-latency", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"),
                        help="seconds from a change to its hook's delivery (default 1 3)")
    parser.add_argument("--drop-hooks", type=float, default=0.0,
                        help="probability that a hook is lost (default 0): shows the safety polls at work")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    spec = builtin_spec("seed")
    low, high = args.hook_latency
    print("command:", shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"scenario: seed spec; builds ~{BUILD_S // 60} min, deployments ~{DEPLOY_S // 60} min "
          f"(+-{args.jitter:.0%}), bake 30 min, promotion at the end of the bake; {args.rollouts} "
          f"rollouts per policy; hooks {low:g}-{high:g} s late, {args.drop_hooks:.0%} lost; virtual time "
          "shared by runner and stand-in\n")
    results: dict[str, list[Result]] = {p: [] for p in POLICIES}
    for index in range(args.rollouts):
        durations = Durations.draw(spec, args.seed + index, args.jitter)
        for policy in POLICIES:
            faults = HookFaults(latency_s=low, jitter_s=high - low, drop=args.drop_hooks,
                                seed=args.seed + index)
            result = run_one(policy, spec, durations, faults)
            results[policy].append(result)
            print(f"  rollout {index + 1} {LABELS[policy]:<30} {result.calls:>4} calls  overhead "
                  f"{result.overhead_s:>7.1f} s  ({result.stop}, {result.wall_s:.1f} s wall)", flush=True)
    print()
    print(f"{'policy':<30} {'calls/rollout':>14} {'overhead s/rollout':>19} {'max overhead':>13}  "
          "overhead per step (mean s)")
    means: dict[str, tuple[float, float]] = {}
    for policy in POLICIES:
        rows = results[policy]
        calls = statistics.mean(r.calls for r in rows)
        spent = statistics.mean(r.overhead_s for r in rows)
        means[policy] = (calls, spent)
        steps = ", ".join(f"{name} {statistics.mean(r.gaps[name] for r in rows):.1f}"
                          for name in rows[0].gaps)
        print(f"{LABELS[policy]:<30} {calls:>14.1f} {spent:>19.1f} {max(r.overhead_s for r in rows):>13.1f}  "
              f"{steps}")
    calls_a, spent_a = means["a"]
    for policy in ("b", "c"):
        calls, spent = means[policy]
        print(f"{LABELS[policy]} / (a): calls {calls / calls_a:.0%}, overhead {spent:.1f} s vs "
              f"{spent_a:.1f} s")
    calls_b = means["b"][0]
    worst_b = max(r.overhead_s for r in results["b"])
    print(f"target: (b) calls <= {CALLS_TARGET:.0%} of (a) -> {calls_b / calls_a:.0%} "
          f"({'met' if calls_b <= CALLS_TARGET * calls_a else 'MISSED'}); overhead <= "
          f"{OVERHEAD_TARGET_S:g} s per rollout -> worst {worst_b:.1f} s "
          f"({'met' if worst_b <= OVERHEAD_TARGET_S else 'MISSED'})")
    hooks = statistics.mean(r.hooks_sent for r in results["b"])
    print(f"(b) hooks delivered per rollout: {hooks:.1f} (not API calls: GitLab posts them to us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

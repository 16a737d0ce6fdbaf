"""What our compiled machine costs next to a bare `transitions` machine of the same shape.

Run from the repository root::

    python benchmarks/bench_machine.py            # both built-in specs
    python benchmarks/bench_machine.py --quick    # fewer repetitions, for a smoke run

Three measurements per spec (``seed`` and ``reordered``):

(a) per-event cost of ``RolloutMachine.fire`` against a bare ``HierarchicalMachine`` (same states,
    transitions and trigger names; '.' separator; default model binding; triggers called on the
    model; no guards).  Each round drives fresh rollouts through the full event sequence (start and
    succeed every step in dependency order, then finish); rounds alternate ours/bare so that drift
    of the machine (frequency scaling, other load) hits both alike.  Medians over the rounds.
    ``fire`` remembers the next state per (state, trigger) once transitions has computed it, so
    "warm" is a machine that has already seen the sequence (every later rollout) and "cold" is the
    first rollout on a freshly built machine (every step goes through transitions).
(b) construction time of the machine (ours vs bare), also interleaved.
(c) memory per extra rollout on one machine: tracemalloc around adding 1,000 rollouts.
    tracemalloc runs only here, never while timing, because it slows every allocation.

The script prints numbers and the targets beside them; it asserts nothing about them.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import transitions
from transitions.extensions.nesting import HierarchicalMachine, NestedState

from deploystate.machine import (
    ABORTED,
    ACTIVE,
    BAKE_SKIP,
    DONE,
    STEP_TRANSITIONS,
    Action,
    Phase,
    RolloutMachine,
)
from deploystate.spec import Spec, StepKind, builtin_spec

EVENT_RATIO_TARGET = 1.5
BYTES_PER_ROLLOUT_TARGET = 20 * 1024
MEMORY_ROLLOUTS = 1_000

Event = tuple[Action, str | None, dict[str, Any]]


# -- the bare machine: the same shape, nothing of ours ----------------------------------------
class _DotState(NestedState):
    separator = "."


class _BareHSM(HierarchicalMachine):
    state_cls = _DotState


class BareModel:
    """A plain model: transitions binds its triggers, ``may_*`` and ``is_*`` helpers onto it."""


def bare_machine(spec: Spec) -> HierarchicalMachine:
    regions = [
        {"name": s.name, "children": [p.value for p in Phase], "initial": Phase.PENDING.value}
        for s in spec.steps
    ]
    rows: list[dict[str, str]] = []
    for step in spec.steps:
        table = [*STEP_TRANSITIONS, BAKE_SKIP] if step.kind is StepKind.BAKE else list(STEP_TRANSITIONS)
        for action, source, dest in table:
            rows.append({
                "trigger": f"{action.value}_{step.name}",
                "source": f"{ACTIVE}.{step.name}.{source.value}",
                "dest": f"{ACTIVE}.{step.name}.{dest.value}",
            })
    rows.append({"trigger": Action.FINISH.value, "source": ACTIVE, "dest": DONE})
    rows.append({"trigger": Action.ABORT.value, "source": ACTIVE, "dest": ABORTED})
    # auto_transitions off so both machines have exactly the same transitions (and to_* helpers
    # would make construction O(n^2), domain.md); everything else is transitions' default.
    return _BareHSM(
        model=None,
        states=[{"name": ACTIVE, "parallel": regions}, DONE, ABORTED],
        transitions=rows,
        initial=ACTIVE,
        auto_transitions=False,
    )


# -- the event sequence -----------------------------------------------------------------------
def full_sequence(spec: Spec) -> list[Event]:
    """Start and succeed every step in dependency order, then finish: a clean rollout."""
    events: list[Event] = []
    for step in spec.steps:
        data: dict[str, Any] = {}
        if step.kind is StepKind.BAKE:
            data = {"elapsed_s": step.duration_s}
        elif step.kind is StepKind.PROMOTION:
            data = {"by": "release-manager"}
        events.append((Action.START, step.name, {}))
        events.append((Action.SUCCEED, step.name, data))
    events.append((Action.FINISH, None, {}))
    return events


def bare_calls(events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    return [(a.value if s is None else f"{a.value}_{s}", data) for a, s, data in events]


def check_sequences(spec: Spec, events: list[Event]) -> None:
    """Refuse to print numbers for a sequence that does not finish the rollout on both machines."""
    ours = RolloutMachine(spec)
    rollout = ours.new("check")
    for action, step, data in events:
        ours.fire(rollout, action, step, **data)
    bare = bare_machine(spec)
    model = BareModel()
    bare.add_model(model)
    for trigger, data in bare_calls(events):
        getattr(model, trigger)(**data)
    if ours.status(rollout) != DONE or model.state != DONE:  # type: ignore[attr-defined]
        raise SystemExit(f"{spec.name}: the event sequence does not finish a rollout; fix full_sequence")


# -- (a) per-event cost -----------------------------------------------------------------------
def time_ours(machine: RolloutMachine, events: list[Event], rollouts: int) -> float:
    batch = [machine.new(f"r{i}") for i in range(rollouts)]
    fire = machine.fire
    gc.disable()
    started = time.perf_counter_ns()
    for rollout in batch:
        for action, step, data in events:
            fire(rollout, action, step, **data)
    elapsed = time.perf_counter_ns() - started
    gc.enable()
    for rollout in batch:
        machine.release(rollout)
    return elapsed / (rollouts * len(events))


def time_bare(machine: HierarchicalMachine, calls: list[tuple[str, dict[str, Any]]],
              rollouts: int) -> float:
    batch = [BareModel() for _ in range(rollouts)]
    for model in batch:
        machine.add_model(model)
    # Resolving the bound trigger is part of "calling a trigger on the model", so it stays timed.
    gc.disable()
    started = time.perf_counter_ns()
    for model in batch:
        for trigger, data in calls:
            getattr(model, trigger)(**data)
    elapsed = time.perf_counter_ns() - started
    gc.enable()
    for model in batch:
        machine.remove_model(model)
    return elapsed / (rollouts * len(calls))


def time_ours_cold(spec: Spec, events: list[Event], machines: int) -> float:
    """The first rollout on each of several fresh machines: nothing learnt yet."""
    fresh = [RolloutMachine(spec) for _ in range(machines)]
    batch = [(machine, machine.new("cold")) for machine in fresh]
    gc.disable()
    started = time.perf_counter_ns()
    for machine, rollout in batch:
        for action, step, data in events:
            machine.fire(rollout, action, step, **data)
    elapsed = time.perf_counter_ns() - started
    gc.enable()
    return elapsed / (machines * len(events))


def interleaved(runs: list[Callable[[], float]], rounds: int) -> list[list[float]]:
    for one in runs:
        one()  # warm caches and lazily built structures before anything counts
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for one, kept in zip(runs, samples, strict=True):
            kept.append(one())
    return samples


# -- (b) construction -------------------------------------------------------------------------
BUILDS_PER_SAMPLE = 10  # one build takes ~1 ms: a single one is at the mercy of the scheduler


def construct_ours(spec: Spec) -> float:
    started = time.perf_counter_ns()
    for _ in range(BUILDS_PER_SAMPLE):
        RolloutMachine(spec)
    return (time.perf_counter_ns() - started) / BUILDS_PER_SAMPLE


def construct_bare(spec: Spec) -> float:
    started = time.perf_counter_ns()
    for _ in range(BUILDS_PER_SAMPLE):
        bare_machine(spec)
    return (time.perf_counter_ns() - started) / BUILDS_PER_SAMPLE


# -- (c) memory per rollout -------------------------------------------------------------------
def traced_bytes(add: Callable[[int], object]) -> float:
    """Bytes still allocated per rollout after adding MEMORY_ROLLOUTS of them (kept alive)."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        kept = [add(i) for i in range(MEMORY_ROLLOUTS)]
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del kept
    return (after - before) / MEMORY_ROLLOUTS


def memory_ours(spec: Spec) -> float:
    machine = RolloutMachine(spec)
    machine.new("warm")  # first model may build lazily cached structures; count only extra ones
    return traced_bytes(lambda i: machine.new(f"r{i}"))


def memory_bare(spec: Spec) -> float:
    machine = bare_machine(spec)
    machine.add_model(BareModel())

    def add(_: int) -> BareModel:
        model = BareModel()
        machine.add_model(model)
        return model

    return traced_bytes(add)


# -- report ---------------------------------------------------------------------------------
def run(spec: Spec, rounds: int, rollouts: int) -> dict[str, float]:
    events = full_sequence(spec)
    check_sequences(spec, events)
    calls = bare_calls(events)
    ours = RolloutMachine(spec)
    bare = bare_machine(spec)
    warm, cold, bare_event = interleaved([
        lambda: time_ours(ours, events, rollouts),
        lambda: time_ours_cold(spec, events, max(1, rollouts // 10)),
        lambda: time_bare(bare, calls, rollouts),
    ], rounds)
    ours_build, bare_build = interleaved([lambda: construct_ours(spec), lambda: construct_bare(spec)], rounds)
    # Memory last, after all timing: tracemalloc must not be running while anything is timed.
    return {
        "events": len(events),
        "warm_us": statistics.median(warm) / 1000,
        "cold_us": statistics.median(cold) / 1000,
        "bare_us": statistics.median(bare_event) / 1000,
        "warm_spread": _spread(warm) / 1000,
        "cold_spread": _spread(cold) / 1000,
        "bare_spread": _spread(bare_event) / 1000,
        "ours_build_ms": statistics.median(ours_build) / 1e6,
        "bare_build_ms": statistics.median(bare_build) / 1e6,
        "ours_bytes": memory_ours(spec),
        "bare_bytes": memory_bare(spec),
    }


def _spread(samples: list[float]) -> float:
    return max(samples) - min(samples)


def print_report(results: dict[str, dict[str, float]], rounds: int, rollouts: int) -> None:
    print(f"python {platform.python_version()}, transitions {transitions.__version__}, "
          f"{platform.machine()}; {rounds} interleaved rounds; {rollouts} fresh rollouts per warm/bare "
          f"round, {max(1, rollouts // 10)} fresh machines per cold round")
    # Other processes skew every figure; the load says how much to trust this run.
    print("load average (1/5/15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg())
          + f" on {os.cpu_count()} CPUs")
    print(f"command: python {' '.join(sys.argv)}")
    print()
    print(f"(a) per event, median us (spread = max-min over rounds); target ours/bare <= "
          f"{EVENT_RATIO_TARGET}x")
    head = (f"  {'spec':<10} {'events':>6} {'ours warm':>10} {'ours cold':>10} {'bare':>8} "
            f"{'warm/bare':>10} {'cold/bare':>10}   spread warm/cold/bare")
    print(head)
    for name, r in results.items():
        print(f"  {name:<10} {int(r['events']):>6} {r['warm_us']:>10.1f} {r['cold_us']:>10.1f} "
              f"{r['bare_us']:>8.1f} {r['warm_us'] / r['bare_us']:>9.3f}x "
              f"{r['cold_us'] / r['bare_us']:>9.2f}x"
              f"   {r['warm_spread']:.1f}/{r['cold_spread']:.1f}/{r['bare_spread']:.1f}")
    print()
    print("(b) machine construction, median ms")
    print(f"  {'spec':<10} {'ours':>8} {'bare':>8} {'ours/bare':>10}")
    for name, r in results.items():
        print(f"  {name:<10} {r['ours_build_ms']:>8.2f} {r['bare_build_ms']:>8.2f} "
              f"{r['ours_build_ms'] / r['bare_build_ms']:>9.2f}x")
    print()
    print(f"(c) memory per extra rollout ({MEMORY_ROLLOUTS:,} added to one machine, tracemalloc), bytes; "
          f"target ours <= {BYTES_PER_ROLLOUT_TARGET:,}")
    print(f"  {'spec':<10} {'ours':>8} {'bare':>8}")
    for name, r in results.items():
        print(f"  {name:<10} {r['ours_bytes']:>8,.0f} {r['bare_bytes']:>8,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per measurement")
    parser.add_argument("--rollouts", type=int, default=50, help="fresh rollouts per timing round")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 10 rollouts (smoke run)")
    args = parser.parse_args()
    rounds, rollouts = (3, 10) if args.quick else (args.rounds, args.rollouts)
    results = {name: run(builtin_spec(name), rounds, rollouts) for name in ("seed", "reordered")}
    print_report(results, rounds, rollouts)


if __name__ == "__main__":
    main()

"""What one event costs on our compiled machine, next to three other state-machine engines.

Run from the repository root::

    python benchmarks/bench_machine.py             # the seed spec, 15 interleaved rounds
    python benchmarks/bench_machine.py --quick     # 3 small rounds: a smoke run
    python benchmarks/bench_machine.py --spec seed --spec reordered

Four engines hold the same machine, the spec's shape (one parallel region per step with the
phases pending/running/succeeded/failed, the same transitions and trigger names), the same
guards (a join starts only when every needed region succeeded; ``finish`` only when every region
did; a bake's ``succeed`` needs ``elapsed_s`` >= its duration, a promotion's needs ``by``), and
each is driven through the same event sequence, a whole successful rollout (start and succeed
every step in dependency order, then ``finish``):

- ``ours``: :class:`deploystate.machine.RolloutMachine` and ``fire``;
- ``transitions``: a bare ``HierarchicalMachine`` ('.' separator, default model binding, triggers
  called on the model, guards as conditions with ``send_event=True``);
- ``python-statemachine``: a ``StateChart`` class built with
  ``statemachine.io.create_machine_class_from_definition`` (a parallel state of compound regions,
  guards as ``cond`` callables), ``send(event, **data)``;
- ``sismic``: a ``Statechart`` built with ``sismic.model`` (an orthogonal state of compound
  regions, guards in sismic's Python evaluator, e.g. ``active('wait_cng.succeeded')``),
  ``queue(event, **data)`` then ``execute_once()``.

Before anything is timed, every engine must finish the rollout with that sequence and must refuse
a join whose needs have not all succeeded and a bake that has not lasted: a guard that is not
there cannot make an engine look fast.

(a) COLD, the headline: each measured rollout is the first one on a freshly built machine (for
    ours: ``RolloutMachine.fire``'s cache of learnt next states is empty, as for the first rollout
    a process sees; for python-statemachine a fresh class, for sismic a fresh statechart and
    interpreter).  Building the machine and adding the rollout are not timed, only the events.
(b) replay of known paths: fresh rollouts on a machine that has already seen the sequence (ours
    replays next states it learnt; the others have nothing to learn, shown for comparison).
(c) construction of the machine, per engine.
(d) memory per extra rollout on one machine, tracemalloc around adding 1,000 rollouts
    (tracemalloc runs only here, never while timing, because it slows every allocation).

Engines alternate within every round (interleaved rounds), so drift of a shared, noisy machine
(frequency scaling, other load) hits all of them alike; the tables show medians over rounds and
ratios to the fastest engine of that table.  The script prints numbers and the targets beside
them; it asserts nothing about them.
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
from functools import partial
from importlib.metadata import version
from typing import Any

import attrs
from transitions import MachineError
from transitions.extensions.nesting import HierarchicalMachine, NestedState

from deploystate.actions import Action
from deploystate.errors import EventRefused
from deploystate.machine import (
    ABORTED,
    ACTIVE,
    BAKE_SKIP,
    DONE,
    STEP_TRANSITIONS,
    Phase,
    RolloutMachine,
    event_data_guard,
    is_text,
)
from deploystate.spec import Spec, Step, StepKind, builtin_spec

COLD_RATIO_TARGET = 1.2  # ours cold within 1.2x of the fastest engine
BYTES_PER_ROLLOUT_TARGET = 20 * 1024
MEMORY_ROLLOUTS = 1_000
BUILDS_PER_SAMPLE = 5

Event = tuple[Action, str | None, dict[str, Any]]
Call = tuple[str, dict[str, Any]]


# -- the event sequence -----------------------------------------------------------------------
def full_sequence(spec: Spec) -> list[Event]:
    """Start and succeed every step in dependency order, then finish: a clean rollout."""
    events: list[Event] = []
    for step in spec.steps:
        events.append((Action.START, step.name, {}))
        events.append((Action.SUCCEED, step.name, _success_data(step)))
    events.append((Action.FINISH, None, {}))
    return events


def _success_data(step: Step) -> dict[str, Any]:
    if step.kind is StepKind.BAKE:
        return {"elapsed_s": step.duration_s}
    if step.kind is StepKind.PROMOTION:
        return {"by": "release-manager"}
    return {}


def as_calls(events: list[Event]) -> list[Call]:
    return [(a.value if s is None else f"{a.value}_{s}", data) for a, s, data in events]


def _rows(step: Step) -> tuple[tuple[Action, Phase, Phase], ...]:
    return (*STEP_TRANSITIONS, BAKE_SKIP) if step.kind is StepKind.BAKE else STEP_TRANSITIONS


# The same data guards as ours (a bake lasted, a promotion names who, a skip says why): ours.
_data_check = event_data_guard
_text = is_text


def _number(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float("-inf")


# -- the engines ------------------------------------------------------------------------------
@attrs.frozen
class Engine:
    """How to build one engine's machine, add a rollout to it, and drive the sequence."""

    name: str
    build: Callable[[], Any]
    start: Callable[[Any, int], Any]
    drive: Callable[[Any, Any], None]
    final: Callable[[Any, Any], bool]
    refuses: Callable[[Any, Any, str, dict[str, Any]], bool]  # fire one event: True if refused
    release: Callable[[Any, Any], None] = lambda machine, rollout: None


def ours(spec: Spec, events: list[Event]) -> Engine:
    def drive(machine: RolloutMachine, rollout: Any) -> None:
        fire = machine.fire
        for action, step, data in events:
            fire(rollout, action, step, **data)

    def refuses(machine: RolloutMachine, rollout: Any, trigger: str, data: dict[str, Any]) -> bool:
        action, _, step = trigger.partition("_")
        try:
            machine.fire(rollout, action, step or None, **data)
        except EventRefused:
            return True
        return False

    return Engine("ours", lambda: RolloutMachine(spec), lambda m, i: m.new(f"r{i}"), drive,
                  lambda m, r: m.status(r) == DONE, refuses, lambda m, r: m.release(r))


class _DotState(NestedState):
    separator = "."


class _BareHSM(HierarchicalMachine):
    state_cls = _DotState


class BareModel:
    """A plain model: transitions binds its triggers, ``may_*`` and ``is_*`` helpers onto it."""

    state: Any


def _model_in_all(needed: tuple[str, ...], event: Any) -> bool:
    return all(p in event.model.state for p in needed)


def _kwargs_pass(check: Callable[[dict[str, Any]], bool], event: Any) -> bool:
    return check(event.kwargs)


def bare_machine(spec: Spec) -> HierarchicalMachine:
    regions = [
        {"name": s.name, "children": [p.value for p in Phase], "initial": Phase.PENDING.value}
        for s in spec.steps
    ]
    rows: list[dict[str, Any]] = []
    for step in spec.steps:
        for action, source, dest in _rows(step):
            conditions: list[Callable[[Any], bool]] = []
            if action is Action.START and step.needs:
                needed = tuple(f"{ACTIVE}.{n}.{Phase.SUCCEEDED.value}" for n in step.needs)
                conditions.append(partial(_model_in_all, needed))
            check = _data_check(step, action)
            if check is not None:
                conditions.append(partial(_kwargs_pass, check))
            rows.append({
                "trigger": f"{action.value}_{step.name}",
                "source": f"{ACTIVE}.{step.name}.{source.value}",
                "dest": f"{ACTIVE}.{step.name}.{dest.value}",
                "conditions": conditions,
            })
    every = tuple(f"{ACTIVE}.{s.name}.{Phase.SUCCEEDED.value}" for s in spec.steps)
    rows.append({"trigger": Action.FINISH.value, "source": ACTIVE, "dest": DONE,
                 "conditions": [lambda event: all(p in event.model.state for p in every)]})
    rows.append({"trigger": Action.ABORT.value, "source": ACTIVE, "dest": ABORTED,
                 "conditions": [lambda event: _text(event.kwargs.get("reason"))]})
    # auto_transitions off so that both machines have exactly the same transitions (to_* helpers
    # would also make construction O(n^2)); send_event so that guards see the model and the data.
    return _BareHSM(model=None, states=[{"name": ACTIVE, "parallel": regions}, DONE, ABORTED],
                    transitions=rows, initial=ACTIVE, auto_transitions=False, send_event=True)


def bare(spec: Spec, events: list[Event]) -> Engine:
    calls = as_calls(events)

    def start(machine: HierarchicalMachine, _: int) -> BareModel:
        model = BareModel()
        machine.add_model(model)
        return model

    def drive(machine: HierarchicalMachine, model: BareModel) -> None:
        # Resolving the bound trigger is part of "calling a trigger on the model": it stays timed.
        for trigger, data in calls:
            getattr(model, trigger)(**data)

    def refuses(machine: HierarchicalMachine, model: BareModel, trigger: str, data: dict[str, Any]) -> bool:
        before = model.state
        try:
            accepted = getattr(model, trigger)(**data)
        except MachineError:
            return True
        return not accepted and model.state == before

    return Engine("transitions", lambda: bare_machine(spec), start, drive, lambda m, r: r.state == DONE,
                  refuses, lambda m, r: m.remove_model(r))


def psm_class(spec: Spec) -> type[Any]:
    from statemachine.io import create_machine_class_from_definition

    def leaf(step: str, phase: Phase) -> str:
        return f"{step}__{phase.value}"  # state ids are global in python-statemachine

    regions: dict[str, Any] = {}
    for step in spec.steps:
        states: dict[str, Any] = {
            leaf(step.name, p): {"initial": p is Phase.PENDING, "on": {}} for p in Phase
        }
        for action, source, dest in _rows(step):
            conds: list[Callable[..., bool]] = []
            if action is Action.START and step.needs:
                needed = tuple(leaf(n, Phase.SUCCEEDED) for n in step.needs)
                conds.append(lambda machine, needed=needed: all(
                    v in machine.configuration_values for v in needed))
            check = _data_check(step, action)
            if check is not None:
                conds.append(lambda check=check, **data: check(data))
            row: dict[str, Any] = {"target": leaf(step.name, dest)}
            if conds:
                row["cond"] = conds
            states[leaf(step.name, source)]["on"][f"{action.value}_{step.name}"] = [row]
        regions[step.name] = {"states": states}
    every = tuple(leaf(s.name, Phase.SUCCEEDED) for s in spec.steps)
    top: dict[str, Any] = {
        ACTIVE: {"parallel": True, "initial": True, "states": regions, "on": {
            Action.FINISH.value: [{"target": DONE, "cond": lambda machine: all(
                v in machine.configuration_values for v in every)}],
            Action.ABORT.value: [{"target": ABORTED, "cond": lambda reason=None: _text(reason)}],
        }},
        DONE: {"final": True},
        ABORTED: {"final": True},
    }
    return create_machine_class_from_definition(f"Rollout_{spec.name}", states=top,
                                                allow_event_without_transition=False)


def python_statemachine(spec: Spec, events: list[Event]) -> Engine:
    from statemachine.exceptions import TransitionNotAllowed

    calls = as_calls(events)

    def drive(_: type[Any], machine: Any) -> None:
        send = machine.send
        for name, data in calls:
            send(name, **data)

    def refuses(_: type[Any], machine: Any, trigger: str, data: dict[str, Any]) -> bool:
        try:
            machine.send(trigger, **data)
        except TransitionNotAllowed:
            return True
        return False

    return Engine("python-statemachine", lambda: psm_class(spec), lambda cls, _: cls(), drive,
                  lambda _, m: list(m.configuration_values) == [DONE], refuses)


def sismic_chart(spec: Spec) -> Any:
    from sismic.model import (  # type: ignore[import-untyped]
        BasicState,
        CompoundState,
        OrthogonalState,
        Statechart,
        Transition,
    )

    chart = Statechart(spec.name)
    chart.add_state(CompoundState("root", initial=ACTIVE), None)
    chart.add_state(OrthogonalState(ACTIVE), "root")
    for step in spec.steps:
        chart.add_state(CompoundState(step.name, initial=f"{step.name}.{Phase.PENDING.value}"), ACTIVE)
        for phase in Phase:
            chart.add_state(BasicState(f"{step.name}.{phase.value}"), step.name)
        for action, source, dest in _rows(step):
            guards = []
            if action is Action.START and step.needs:
                guards += [f"active('{n}.{Phase.SUCCEEDED.value}')" for n in step.needs]
            if action is Action.SUCCEED and step.kind is StepKind.BAKE:
                guards.append(f"number(event.data.get('elapsed_s')) >= {step.duration_s or 0}")
            if action is Action.SUCCEED and step.kind is StepKind.PROMOTION:
                guards.append("text(event.data.get('by'))")
            if action is Action.SKIP:
                guards.append("text(event.data.get('reason')) and text(event.data.get('by'))")
            chart.add_transition(Transition(f"{step.name}.{source.value}", f"{step.name}.{dest.value}",
                                            event=f"{action.value}_{step.name}",
                                            guard=" and ".join(guards) or None))
    chart.add_state(BasicState(DONE), "root")
    chart.add_state(BasicState(ABORTED), "root")
    every = " and ".join(f"active('{s.name}.{Phase.SUCCEEDED.value}')" for s in spec.steps)
    chart.add_transition(Transition(ACTIVE, DONE, event=Action.FINISH.value, guard=every))
    chart.add_transition(Transition(ACTIVE, ABORTED, event=Action.ABORT.value,
                                    guard="text(event.data.get('reason'))"))
    return chart


def sismic(spec: Spec, events: list[Event]) -> Engine:
    from sismic.interpreter import Interpreter  # type: ignore[import-untyped]

    calls = as_calls(events)

    def start(chart: Any, _: int) -> Any:
        interpreter = Interpreter(chart, initial_context={"number": _number, "text": _text})
        interpreter.execute_once()  # enter the initial configuration (like adding a rollout)
        return interpreter

    def drive(_: Any, interpreter: Any) -> None:
        # One event, one macro step: execute_once() is the cheapest correct way (execute() would
        # look once more for eventless transitions, of which this chart has none).
        queue, once = interpreter.queue, interpreter.execute_once
        for name, data in calls:
            queue(name, **data)
            once()

    def refuses(_: Any, interpreter: Any, trigger: str, data: dict[str, Any]) -> bool:
        before = sorted(interpreter.configuration)
        interpreter.queue(trigger, **data)
        step = interpreter.execute_once()
        return (step is None or not step.transitions) and sorted(interpreter.configuration) == before

    return Engine("sismic", lambda: sismic_chart(spec), start, drive,
                  lambda _, it: DONE in it.configuration, refuses)


ENGINES: tuple[Callable[[Spec, list[Event]], Engine], ...] = (ours, bare, python_statemachine, sismic)
VERSIONS = {"transitions": "transitions", "python-statemachine": "python-statemachine", "sismic": "sismic"}


def check(spec: Spec, events: list[Event], engine: Engine) -> None:
    """Refuse to print numbers for an engine that does not hold the same machine."""
    machine = engine.build()
    rollout = engine.start(machine, 0)
    engine.drive(machine, rollout)
    if not engine.final(machine, rollout):
        raise SystemExit(f"{engine.name}: the sequence does not finish a rollout of {spec.name}")
    joins = [s for s in spec.steps if len(s.needs) > 1]
    bakes = [s for s in spec.steps if s.kind is StepKind.BAKE]
    if joins:  # every need but the last one succeeded, then the join: refused
        join = joins[0]
        probe = engine.start(machine, 1)
        last = join.needs[-1]
        for action, step, data in events:
            if step == last:
                break
            if step is not None and step != join.name and action in (Action.START, Action.SUCCEED):
                engine.refuses(machine, probe, f"{action.value}_{step}", data)
        if not engine.refuses(machine, probe, f"start_{join.name}", {}):
            raise SystemExit(f"{engine.name}: start {join.name} accepted before {last} succeeded")
    if bakes:
        bake = bakes[0]
        probe = engine.start(machine, 2)
        for action, step, data in events:
            if step == bake.name and action is Action.SUCCEED:
                break
            engine.refuses(machine, probe, as_calls([(action, step, data)])[0][0], data)
        if not engine.refuses(machine, probe, f"succeed_{bake.name}", {"elapsed_s": 0}):
            raise SystemExit(f"{engine.name}: a bake that lasted 0 s was accepted")


# -- timing -----------------------------------------------------------------------------------
def time_cold(engine: Engine, machines: int, events: int) -> float:
    """ns per event over the first rollout of each of ``machines`` freshly built machines."""
    fresh = [engine.build() for _ in range(machines)]
    batch = [(machine, engine.start(machine, 0)) for machine in fresh]
    drive = engine.drive
    gc.collect()
    gc.disable()
    started = time.perf_counter_ns()
    for machine, rollout in batch:
        drive(machine, rollout)
    elapsed = time.perf_counter_ns() - started
    gc.enable()
    return elapsed / (machines * events)


def time_replay(engine: Engine, machine: Any, rollouts: int, events: int) -> float:
    """ns per event over ``rollouts`` fresh rollouts on a machine that has seen the sequence."""
    batch = [engine.start(machine, i) for i in range(rollouts)]
    drive = engine.drive
    gc.collect()
    gc.disable()
    started = time.perf_counter_ns()
    for rollout in batch:
        drive(machine, rollout)
    elapsed = time.perf_counter_ns() - started
    gc.enable()
    for rollout in batch:
        engine.release(machine, rollout)
    return elapsed / (rollouts * events)


def time_build(engine: Engine) -> float:
    started = time.perf_counter_ns()
    for _ in range(BUILDS_PER_SAMPLE):
        engine.build()
    return (time.perf_counter_ns() - started) / BUILDS_PER_SAMPLE


def interleaved(runs: list[Callable[[], float]], rounds: int) -> list[list[float]]:
    for one in runs:
        one()  # import, warm caches and lazily built structures before anything counts
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for one, kept in zip(runs, samples, strict=True):
            kept.append(one())
    return samples


def memory_per_rollout(engine: Engine) -> float:
    """Bytes still allocated per rollout after adding MEMORY_ROLLOUTS of them (kept alive)."""
    machine = engine.build()
    engine.start(machine, 0)  # the first may build lazily cached structures: count extra ones
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        kept = [engine.start(machine, i) for i in range(MEMORY_ROLLOUTS)]
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del kept
    return (after - before) / MEMORY_ROLLOUTS


# -- report -----------------------------------------------------------------------------------
@attrs.frozen
class Figures:
    cold: list[float]
    replay: list[float]
    build: list[float]
    memory: float


def run(spec: Spec, rounds: int, machines: int, rollouts: int) -> dict[str, Figures]:
    events = full_sequence(spec)
    engines = [make(spec, events) for make in ENGINES]
    for engine in engines:
        check(spec, events, engine)
    count = len(events)
    cold = interleaved([partial(time_cold, e, machines, count) for e in engines], rounds)
    seen = []
    for engine in engines:
        machine = engine.build()
        first = engine.start(machine, 0)
        engine.drive(machine, first)  # the sequence has been seen once: paths are known
        seen.append(machine)
    replay = interleaved([partial(time_replay, e, m, rollouts, count)
                          for e, m in zip(engines, seen, strict=True)], rounds)
    build = interleaved([partial(time_build, e) for e in engines], rounds)
    # Memory last, after all timing: tracemalloc must not be running while anything is timed.
    memory = [memory_per_rollout(e) for e in engines]
    return {e.name: Figures(c, r, b, m)
            for e, c, r, b, m in zip(engines, cold, replay, build, memory, strict=True)}


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def _table(title: str, figures: dict[str, list[float]], scale: float, unit: str, digits: int) -> None:
    print(title)
    medians = {name: _median(s) / scale for name, s in figures.items()}
    fastest = min(medians.values())
    print(f"  {'engine':<21} {unit:>10} {'spread':>9} {'x fastest':>10}")
    for name, samples in figures.items():
        spread = (max(samples) - min(samples)) / scale
        print(f"  {name:<21} {medians[name]:>10.{digits}f} {spread:>9.{digits}f} "
              f"{medians[name] / fastest:>9.2f}x")


def print_report(spec: Spec, results: dict[str, Figures], events: int) -> None:
    print(f"spec {spec.name}: {len(spec.steps)} steps, {events} events per rollout")
    cold = {n: f.cold for n, f in results.items()}
    _table("(a) COLD, the first rollout on a fresh machine (nothing learnt): per event, median us "
           "(spread = max-min over rounds)", cold, 1000, "us/event", 1)
    medians = {n: _median(s) for n, s in cold.items()}
    others = min(v for n, v in medians.items() if n != "ours")
    ratio = medians["ours"] / min(medians.values())
    print(f"  target: ours within {COLD_RATIO_TARGET}x of the fastest -> {ratio:.2f}x "
          f"({'met' if ratio <= COLD_RATIO_TARGET else 'MISSED'}); ours / fastest other engine: "
          f"{medians['ours'] / others:.3f}")
    print()
    _table("(b) replay of known paths: fresh rollouts on a machine that has seen the sequence, "
           "per event, median us", {n: f.replay for n, f in results.items()}, 1000, "us/event", 2)
    print()
    _table("(c) building the machine, median ms", {n: f.build for n, f in results.items()}, 1e6, "ms", 2)
    print()
    print(f"(d) memory per extra rollout ({MEMORY_ROLLOUTS:,} added to one machine, tracemalloc), bytes; "
          f"target ours <= {BYTES_PER_ROLLOUT_TARGET:,}")
    for name, figures in results.items():
        print(f"  {name:<21} {figures.memory:>10,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per measurement")
    parser.add_argument("--machines", type=int, default=5, help="fresh machines per engine per cold round")
    parser.add_argument("--rollouts", type=int, default=20, help="rollouts per engine per replay round")
    parser.add_argument("--spec", action="append", help="built-in spec (default seed; repeatable)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 machines, 5 rollouts (smoke run)")
    args = parser.parse_args()
    rounds, machines, rollouts = (3, 2, 5) if args.quick else (args.rounds, args.machines, args.rollouts)
    names = ", ".join(f"{n} {version(n)}" for n in VERSIONS.values())
    print(f"python {platform.python_version()} on {platform.machine()}; {names}; {rounds} interleaved "
          f"rounds; per round and engine {machines} fresh machines (cold), {rollouts} rollouts (replay)")
    # Other processes skew every figure; the load says how much to trust this run.
    print("load average (1/5/15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg())
          + f" on {os.cpu_count()} CPUs")
    print(f"command: python {' '.join(sys.argv)}")
    for name in args.spec or ["seed"]:
        spec = builtin_spec(name)
        print()
        print_report(spec, run(spec, rounds, machines, rollouts), len(full_sequence(spec)))
    print("load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()

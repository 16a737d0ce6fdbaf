"""A spec compiled onto a `transitions` hierarchical machine.

Shape of the compiled machine::

    active (parallel: one region per step)      done      aborted
      <step>: pending -> running -> succeeded
                           |  ^
                           v  | resume (the downstream pipeline was retried)
                         failed -> pending (retry: an operator asks for a new run)

A fork is the set of regions whose steps need the same step; a join is a ``start``
transition guarded by *every* needed region being ``succeeded``.  The guard is a condition on
the transition itself; we never rely on `transitions`' experimental ``on_final`` (domain.md,
bug #715).  ``finish`` leaves ``active`` only when every region succeeded; ``abort`` leaves it
from anywhere.  ``done`` and ``aborted`` have no way out.

One machine serves many rollouts: a :class:`Rollout` is a `transitions` model, added with
:meth:`RolloutMachine.new` and removed with :meth:`RolloutMachine.release`.  Events are the only
way to change a rollout, through :meth:`RolloutMachine.fire`, which raises
:class:`~deploystate.errors.EventRefused` (and changes nothing) when the event is not allowed.

`transitions` is the source of truth for the table, but not the engine of every event: asking it
to take one transition of a nine-region parallel state costs ~250 us, while the move itself is
"replace one region's leaf".  Once compiled, each transition is read back from `transitions`'
own event table (source, destination, conditions, callbacks) into a *move*; ``fire`` applies
moves directly, and the first move a machine makes is checked against `transitions` taking the
same transition.  Anything that does not read back as a plain move goes through `transitions`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

import attrs
from transitions import MachineError
from transitions.extensions.nesting import HierarchicalMachine, NestedState

from deploystate.actions import EVENTS, ROLLOUT_EVENTS, Action
from deploystate.errors import EventRefused
from deploystate.spec import Spec, Step, StepKind

ACTIVE = "active"
DONE = "done"
ABORTED = "aborted"
SEPARATOR = "."
_LEARNT_LIMIT = 10_000  # ~1 KB each; the seed reaches ~120 configurations
_LOGGER = logging.getLogger(__name__)

# A move read back from transitions: (region index, or -1 for the whole rollout; source state;
# destination state; the state guard of its conditions, if any).  See RolloutMachine._read_moves.
_Move = tuple[int, str, str, Callable[["Rollout"], bool] | None]


class Phase(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


ROLLOUT_ACTIONS = ROLLOUT_EVENTS

# (action, from phase, to phase) for every step; SKIP is added for bakes only.
STEP_TRANSITIONS: tuple[tuple[Action, Phase, Phase], ...] = (
    (Action.START, Phase.PENDING, Phase.RUNNING),
    (Action.SUCCEED, Phase.RUNNING, Phase.SUCCEEDED),
    (Action.FAIL, Phase.RUNNING, Phase.FAILED),
    (Action.RESUME, Phase.FAILED, Phase.RUNNING),
    (Action.RETRY, Phase.FAILED, Phase.PENDING),
)
BAKE_SKIP = (Action.SKIP, Phase.RUNNING, Phase.SUCCEEDED)


class _DottedState(NestedState):
    # Step names use '_' (wait_cng); with transitions' default '_' separator they would be
    # read as nested paths.
    separator = SEPARATOR


class _CompiledMachine(HierarchicalMachine):
    """A HierarchicalMachine that binds nothing onto its models.

    transitions normally attaches a bound trigger, ``may_*`` and ``is_*`` helper per event and
    state to every model: ~150 objects per rollout for the seed's spec.  Rollouts are driven
    only through :meth:`RolloutMachine.fire`, so we skip that binding and keep one shared
    machine cheap per extra rollout.
    """

    state_cls = _DottedState

    def _checked_assignment(self, model: Any, name: str, func: Any) -> None:
        return None

    def _add_model_to_state(self, state: Any, model: Any) -> None:
        return None

    def _add_trigger_to_model(self, trigger: str, model: Any) -> None:
        return None


class Rollout:
    """One rollout's live state; ``state`` is owned by the machine that created it."""

    __slots__ = ("__weakref__", "rollout_id", "state", "to")
    state: str | list[str]  # a list of region leaves while active; set by `transitions`
    to: Any  # transitions' own `to(state)` helper, unused by deploystate

    def __init__(self, rollout_id: str) -> None:
        self.rollout_id = rollout_id

    def __repr__(self) -> str:
        return f"Rollout({self.rollout_id!r})"


def trigger_name(action: Action, step: str | None) -> str:
    return action.value if step is None else f"{action.value}_{step}"


def _state_path(step: str, phase: Phase) -> str:
    return f"{ACTIVE}{SEPARATOR}{step}{SEPARATOR}{phase.value}"


class RolloutMachine:
    """The compiled machine for one spec; serves any number of rollouts."""

    def __init__(self, spec: Spec, optional: frozenset[str] = frozenset()) -> None:
        """``optional``: steps the rollout may finish without (dry runs): each may have failed, or
        never started because a step it needs failed or was itself left so."""
        unknown = sorted(optional - {s.name for s in spec.steps})
        if unknown:
            raise ValueError(f"optional steps {unknown} are not in spec {spec.name!r}")
        self.spec = spec
        self.optional = optional
        self._steps: Mapping[str, Step] = {s.name: s for s in spec.steps}
        self._triggers: dict[tuple[Action, str | None], str] = {}
        self._needs_met: dict[str, Callable[[Rollout], bool]] = {}
        self._data_guards: dict[str, Callable[[Mapping[str, Any]], bool]] = {}
        # (state, trigger) -> next state, learnt from transitions itself, for events that are
        # not plain moves; see fire().
        self._learnt: dict[tuple[tuple[str, ...] | str, str], tuple[str, ...] | str] = {}
        self._initial: tuple[str, ...] | str | None = None
        # trigger -> move, read back from transitions once a rollout exists (None: not yet).
        self._moves: dict[str, _Move] | None = None
        self._move_checked = False
        # The conditions handed to transitions per trigger: moves must find exactly these.
        self._conditions_of: dict[str, list[Callable[[Any], bool]]] = {}
        # The triggers transitions lists from one leaf state (its own, its region's, active's).
        self._triggers_of_leaf: dict[str, tuple[str, ...]] = {}
        # "active.<step>.<phase>" -> (step, phase), so reading phases parses nothing.
        self._leaf: dict[str, tuple[str, Phase]] = {
            _state_path(s.name, p): (s.name, p) for s in spec.steps for p in Phase
        }
        regions = [
            {"name": s.name, "children": [p.value for p in Phase], "initial": Phase.PENDING.value}
            for s in spec.steps
        ]
        transitions: list[dict[str, Any]] = []
        for step in spec.steps:
            self._needs_met[step.name] = self._needs_check(step)
            rows = [*STEP_TRANSITIONS, BAKE_SKIP] if step.kind is StepKind.BAKE else STEP_TRANSITIONS
            for action, source, dest in rows:
                name = trigger_name(action, step.name)
                self._triggers[(action, step.name)] = name
                conditions = self._conditions_of[name] = self._conditions(step, action)
                transitions.append({
                    "trigger": name,
                    "source": _state_path(step.name, source),
                    "dest": _state_path(step.name, dest),
                    "conditions": conditions,
                })
        self._triggers[(Action.FINISH, None)] = Action.FINISH.value
        self._triggers[(Action.ABORT, None)] = Action.ABORT.value
        required = tuple(_state_path(s.name, Phase.SUCCEEDED) for s in spec.steps if s.name not in optional)
        # Optional steps in spec order (needs come first): (name, its leaves that end it, its needs).
        order = _in_order(spec)
        left_alone = tuple((s.name, (_state_path(s.name, Phase.SUCCEEDED), _state_path(s.name, Phase.FAILED)),
                            _state_path(s.name, Phase.PENDING), s.needs)
                           for s in order if s.name in optional)

        def finishable(configuration: str | list[str] | tuple[str, ...]) -> bool:
            state = _leaves(configuration)
            if not all(p in state for p in required):
                return False
            over: set[str] = set()  # optional steps that ended, or can never start
            for name, ends, pending, needs in left_alone:
                ended = ends[0] in state or ends[1] in state
                blocked = pending in state and any(n in over and _state_path(n, Phase.SUCCEEDED) not in state
                                                   for n in needs)
                if not (ended or blocked):
                    return False
                over.add(name)
            return True

        def all_succeeded(rollout: Rollout) -> bool:
            return finishable(rollout.state)

        self.finishable = finishable

        self._all_succeeded = all_succeeded
        finish = self._conditions_of[Action.FINISH.value] = [lambda event: all_succeeded(event.model)]
        transitions.append({
            "trigger": Action.FINISH.value, "source": ACTIVE, "dest": DONE, "conditions": finish,
        })
        abort_guard = needs_reason
        self._data_guards[Action.ABORT.value] = abort_guard
        abort = self._conditions_of[Action.ABORT.value] = [lambda event: abort_guard(event.kwargs)]
        transitions.append({
            "trigger": Action.ABORT.value, "source": ACTIVE, "dest": ABORTED, "conditions": abort,
        })
        self._machine = _CompiledMachine(
            model=None,
            states=[{"name": ACTIVE, "parallel": regions}, DONE, ABORTED],
            transitions=transitions,
            initial=ACTIVE,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=False,
            queued=False,  # queued triggers return True even when refused (domain.md)
        )
        self._trigger_to_event = {name: key for key, name in self._triggers.items()}

    # -- building ---------------------------------------------------------------------------
    def _needs_check(self, step: Step) -> Callable[[Rollout], bool]:
        required = tuple(_state_path(n, Phase.SUCCEEDED) for n in step.needs)

        def needs_met(rollout: Rollout) -> bool:
            state = _leaves(rollout.state)
            return all(r in state for r in required)

        return needs_met

    def _conditions(self, step: Step, action: Action) -> list[Callable[[Any], bool]]:
        conditions: list[Callable[[Any], bool]] = []
        if action is Action.START and step.needs:
            needs_met = self._needs_met[step.name]
            conditions.append(lambda event: needs_met(event.model))
        data_guard = event_data_guard(step, action)
        if data_guard is not None:
            self._data_guards[trigger_name(action, step.name)] = data_guard
            conditions.append(lambda event: data_guard(event.kwargs))
        return conditions

    # -- rollouts ---------------------------------------------------------------------------
    def new(self, rollout_id: str) -> Rollout:
        """A fresh rollout (every step pending), served by this machine."""
        rollout = Rollout(rollout_id)
        if self._initial is None:
            self._machine.add_model(rollout)
            state = rollout.state
            self._initial = tuple(state) if isinstance(state, list) else state
        else:
            # add_model resolves the nested initial state again on every call (~250 us for nine
            # regions, most of the cost of listing 1,000 rollouts).  With nothing bound onto models
            # (see _CompiledMachine) registering a model is exactly this.
            initial = self._initial
            rollout.state = list(initial) if isinstance(initial, tuple) else initial
            self._machine.models.append(rollout)
        return rollout

    def release(self, rollout: Rollout) -> None:
        """Stop serving ``rollout`` (its state stays readable)."""
        self._machine.remove_model(rollout)

    def fire(self, rollout: Rollout, action: Action | str, step: str | None = None,
             **data: Any) -> None:
        """Apply one event, or raise :class:`EventRefused` and change nothing."""
        if not isinstance(action, Action):
            try:
                action = Action(action)
            except ValueError:
                # An unknown action is a refused event like any other, not a crash in the caller.
                raise EventRefused(describe_event(action, step), self.describe(rollout),
                                   self.allowed(rollout), f"unknown action {action!r}; actions: "
                                   f"{', '.join(a.value for a in Action if a in EVENTS)}") from None
        if action not in EVENTS:
            raise EventRefused(describe_event(action, step), self.describe(rollout), self.allowed(rollout),
                               f"{action.value} is a fact about a rollout, not an event of its machine")
        key = (action, step)
        trigger = self._triggers.get(key)
        if trigger is None:
            raise self._refusal(rollout, key[0], step, data)
        data_guard = self._data_guards.get(trigger)
        if data_guard is not None and not data_guard(data):
            raise self._refusal(rollout, key[0], step, data)
        # The compiled machine has no callbacks, and its guards depend only on the state and on
        # the data checked just above, so the next state is a function of (state, trigger): once
        # reached, it is replayed from what was learnt (~1 us), which makes rebuilding journals
        # cheap.  The first time, a move reads it off transitions' table (~2 us, see
        # _read_moves); an event that is not a plain move asks transitions (~300 us for the
        # seed's 9 regions).
        state = rollout.state
        learnt_key = (tuple(state) if isinstance(state, list) else state, trigger)
        learnt = self._learnt.get(learnt_key)
        if learnt is not None:
            rollout.state = list(learnt) if isinstance(learnt, tuple) else learnt
            return
        moves = self._moves
        if moves is None:
            moves = self._read_moves()
        move = moves.get(trigger)
        if move is not None:
            reached = self._move(rollout, move, trigger, action, step, data)
            rollout.state = reached
        else:
            try:
                accepted = self._machine.trigger_event(rollout, trigger, **data)
            except MachineError:
                accepted = False
            if not accepted:
                raise self._refusal(rollout, action, step, data)
            reached = rollout.state
        if len(self._learnt) >= _LEARNT_LIMIT:
            self._learnt.clear()
        self._learnt[learnt_key] = tuple(reached) if isinstance(reached, list) else reached

    def _move(self, rollout: Rollout, move: _Move, trigger: str, action: Action, step: str | None,
              data: Mapping[str, Any]) -> str | list[str]:
        """The state ``move`` leads to from ``rollout``'s, or raise EventRefused."""
        index, source, dest, guard = move
        state = rollout.state
        after: str | list[str]
        if index < 0:  # the whole rollout leaves "active" (finish, abort)
            if not _leaves(state) or (guard is not None and not guard(rollout)):
                raise self._refusal(rollout, action, step, data)
            after = dest
        elif isinstance(state, list):  # one region's leaf, "active.<step>.<phase>", changes
            if state[index] != source or (guard is not None and not guard(rollout)):
                raise self._refusal(rollout, action, step, data)
            after = state.copy()
            after[index] = dest
        elif state == source and (guard is None or guard(rollout)):  # a one-region spec
            after = dest
        else:
            raise self._refusal(rollout, action, step, data)
        if not self._move_checked:
            return self._check_move(rollout, trigger, after, data)
        return after

    # -- moves: transitions' table, applied without asking transitions each time ---------------
    def _read_moves(self) -> dict[str, _Move]:
        """Each trigger that transitions compiled into one plain move, read from its own table.

        A move is taken only when transitions holds exactly one transition for the trigger, with
        the source and destination we expect (inside one region, or from ``active`` for the
        rollout's events), exactly the conditions we handed it, and no callbacks; the machine has
        none either.  Region indices come from the initial state transitions itself entered.
        """
        initial = self._initial
        if initial is None:  # no rollout made here yet: nothing to index regions by (not kept)
            return {}
        # Kept only once complete: another thread never sees half of the moves.
        moves = self._moves = self._moves_from_table(initial)
        return moves

    def _moves_from_table(self, initial: tuple[str, ...] | str) -> dict[str, _Move]:
        machine = self._machine
        moves: dict[str, _Move] = {}
        hooks = (machine.prepare_event, machine.before_state_change, machine.after_state_change,
                 machine.finalize_event, machine.on_exception, machine.on_final)
        if any(hooks):
            return moves
        index: dict[str, int] = {}
        for position, leaf in enumerate(initial if isinstance(initial, tuple) else (initial,)):
            found = self._leaf.get(leaf)
            if found is None:
                return moves
            index[found[0]] = position
        if len(index) != len(self._steps):
            return moves
        for name, event in machine.events.items():
            rows = [row for source_rows in event.transitions.values() for row in source_rows]
            if len(rows) != 1:
                continue
            row = rows[0]
            source, dest = str(row.source), str(row.dest)
            action, step = self._trigger_to_event[name]
            conditions = [c.func for c in row.conditions if c.target is True]
            if (row.prepare or row.before or row.after or len(conditions) != len(row.conditions)
                    or conditions != self._conditions_of.get(name)):
                continue
            guard: Callable[[Rollout], bool] | None = None
            if step is None:
                if source != ACTIVE or dest not in (DONE, ABORTED):
                    continue
                if action is Action.FINISH:
                    guard = self._all_succeeded
                moves[name] = (-1, source, dest, guard)
                continue
            if self._leaf.get(source, ("",))[0] != step or self._leaf.get(dest, ("",))[0] != step:
                continue
            if action is Action.START and self._steps[step].needs:
                guard = self._needs_met[step]
            moves[name] = (index[step], source, dest, guard)
        return moves

    def _check_move(self, rollout: Rollout, trigger: str, after: str | list[str],
                    data: Mapping[str, Any]) -> str | list[str]:
        """The first move of a machine, also taken by transitions on a probe: they must agree.

        Returns the state to enter: the move's, or transitions' own if they ever disagree.
        """
        self._move_checked = True
        probe = Rollout(rollout.rollout_id + "~check")
        state = rollout.state
        probe.state = list(state) if isinstance(state, list) else state
        try:
            accepted = self._machine.trigger_event(probe, trigger, **data)
        except MachineError:
            accepted = False
        if accepted and probe.state == after:
            return after
        # Never seen; a changed transitions would be the cause.  Its answer wins, for good.
        _LOGGER.warning("moves disagree with transitions on %s from %s: %s, transitions %s; every "
                        "event goes through transitions from now on", trigger, state, after,
                        probe.state if accepted else "refused")
        self._moves = {}
        if not accepted:
            raise self._refusal(rollout, *self._trigger_to_event[trigger], data)
        return probe.state

    # -- reading ----------------------------------------------------------------------------
    def status(self, rollout: Rollout) -> str:
        """``active``, ``done`` or ``aborted``."""
        state = rollout.state
        return state if state in (DONE, ABORTED) else ACTIVE

    def phases(self, rollout: Rollout) -> dict[str, Phase]:
        """Each step's phase; empty once the rollout has ended."""
        leaf = self._leaf
        return dict(leaf[path] for path in _leaves(rollout.state))

    def phase(self, rollout: Rollout, step: str) -> Phase | None:
        return self.phases(rollout).get(step)

    def ready(self, rollout: Rollout) -> list[str]:
        """Pending steps whose needs have all succeeded: what may start now."""
        phases = self.phases(rollout)
        return [
            name for name, phase in phases.items()
            if phase is Phase.PENDING and self._needs_met[name](rollout)
        ]

    def can_finish(self, rollout: Rollout) -> bool:
        return self.status(rollout) == ACTIVE and self._all_succeeded(rollout)

    def allowed(self, rollout: Rollout) -> list[str]:
        """Events that would be accepted now, by structure and joins (data aside)."""
        if self.status(rollout) != ACTIVE:
            return []
        # transitions' get_triggers(*leaves) is the concatenation of get_triggers(leaf) for each
        # leaf.  Asked per leaf (~0.1 ms each, four per step) rather than per configuration
        # (~0.7 ms for the seed's nine regions, ~120 configurations): refusals rarely ask again.
        of_leaf = self._triggers_of_leaf
        per_leaf = []
        for leaf in _leaves(rollout.state):
            found = of_leaf.get(leaf)
            if found is None:
                found = of_leaf[leaf] = tuple(self._machine.get_triggers(leaf))
            per_leaf.append(found)
        names = dict.fromkeys(chain.from_iterable(per_leaf))
        result = []
        for name in names:
            action, step = self._trigger_to_event[name]
            if action is Action.START and step is not None and not self._needs_met[step](rollout):
                continue
            if action is Action.FINISH and not self.can_finish(rollout):
                continue
            result.append(describe_event(action, step))
        return result

    def describe(self, rollout: Rollout) -> str:
        status = self.status(rollout)
        if status != ACTIVE:
            return status
        parts = [f"{step}={phase.value}" for step, phase in self.phases(rollout).items()]
        return f"active({', '.join(parts)})"

    # -- introspection (diagrams are drawn from this, not from a template) -------------------
    def definition(self) -> list[TransitionInfo]:
        """Every transition of the compiled machine, read back from `transitions` itself."""
        found = []
        for name, event in self._machine.events.items():
            action, step = self._trigger_to_event[name]
            for source, rows in event.transitions.items():
                for row in rows:
                    found.append(
                        TransitionInfo(action, step, source, str(row.dest), bool(row.conditions))
                    )
        return found

    def states(self) -> list[str]:
        """Every state path of the compiled machine (``active.<step>.<phase>``, ``done``...)."""
        return list(self._machine.get_nested_state_names())

    def joined(self, step: str) -> tuple[str, ...]:
        """The steps whose success guards ``start`` of ``step`` (its join; empty for none)."""
        return self._steps[step].needs

    # -- refusals ---------------------------------------------------------------------------
    def _refusal(self, rollout: Rollout, action: Action, step: str | None,
                 data: Mapping[str, Any]) -> EventRefused:
        return EventRefused(describe_event(action, step), self.describe(rollout),
                            self.allowed(rollout), self._why(rollout, action, step, data))

    def _why(self, rollout: Rollout, action: Action, step: str | None,
             data: Mapping[str, Any]) -> str:
        if self.status(rollout) != ACTIVE:
            return f"the rollout is {self.status(rollout)}, which is final"
        if action in ROLLOUT_ACTIONS:
            if step is not None:
                return f"{action.value} applies to the whole rollout, not to a step"
            if action is Action.ABORT:
                return "an abort needs a reason"
            waiting = [s for s, p in self.phases(rollout).items()
                       if p is not Phase.SUCCEEDED and s not in self.optional]
            if not waiting:
                return "dry runs are still running or can still start"
            return f"steps not yet succeeded: {', '.join(waiting)}"
        if step is None:
            return f"{action.value} needs a step"
        if step not in self._steps:
            return f"unknown step {step!r}; steps: {', '.join(self._steps)}"
        spec_step = self._steps[step]
        if (action, step) not in self._triggers:
            return f"{action.value} does not apply to a {spec_step.kind.value} step"
        phase = self.phase(rollout, step)
        sources = [src for act, src, _ in (*STEP_TRANSITIONS, BAKE_SKIP) if act is action]
        if phase not in sources:
            return f"{step} is {phase.value if phase else '?'}"
        if action is Action.START:
            unmet = [n for n in spec_step.needs if self.phase(rollout, n) is not Phase.SUCCEEDED]
            return f"{step} needs {', '.join(unmet)} to succeed first"
        if action is Action.SUCCEED and spec_step.kind is StepKind.BAKE:
            return (f"the bake lasts {spec_step.duration_s}s; elapsed_s="
                    f"{data.get('elapsed_s')!r} (skip it with a reason instead)")
        if action is Action.SUCCEED and spec_step.kind is StepKind.PROMOTION:
            return "a promotion needs who promoted (by)"
        if action is Action.SKIP:
            return "skipping a bake needs a reason and who decided (by)"
        return "a guard refused it"


@attrs.frozen
class TransitionInfo:
    action: Action
    step: str | None
    source: str
    dest: str
    guarded: bool


def _leaves(state: str | list[str] | tuple[str, ...]) -> tuple[str, ...] | list[str]:
    """The active leaf states.  transitions stores a list for several regions, but a bare string
    when the parallel state has a single region (a one-step spec)."""
    if isinstance(state, list | tuple):
        return state
    return (state,) if state.startswith(ACTIVE + SEPARATOR) else ()


def needs_reason(data: Mapping[str, Any]) -> bool:
    """The abort's data guard: a reason."""
    return is_text(data.get("reason"))


def event_data_guard(step: Step, action: Action) -> Callable[[Mapping[str, Any]], bool] | None:
    """The check an event's data must pass, if any (who promoted, why a bake was skipped...).

    Public so that other engines can be given exactly the same guards (benchmarks/bench_machine.py).
    """
    if action is Action.SUCCEED and step.kind is StepKind.BAKE:
        duration = step.duration_s or 0
        return lambda data: _number(data.get("elapsed_s")) >= duration
    if action is Action.SUCCEED and step.kind is StepKind.PROMOTION:
        return lambda data: is_text(data.get("by"))
    if action is Action.SKIP:
        return lambda data: is_text(data.get("reason")) and is_text(data.get("by"))
    return None


def describe_event(action: Action | str, step: str | None) -> str:
    name = action.value if isinstance(action, Action) else action
    return name if step is None else f"{name} {step}"


def is_text(value: object) -> bool:
    """Non-empty text (who, why)."""
    return isinstance(value, str) and bool(value.strip())


def _number(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float("-inf")


def _in_order(spec: Spec) -> list[Step]:
    """The steps, each after every step it needs."""
    placed: dict[str, Step] = {}
    steps = list(spec.steps)
    while len(placed) < len(steps):
        for step in steps:
            if step.name not in placed and all(n in placed for n in step.needs):
                placed[step.name] = step
    return list(placed.values())

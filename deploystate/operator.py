"""What a person's command records: promote, skip the bake, retry a step, abort.

Each is a pure function of the rollout and the time, returning the records to append or raising
a :class:`~deploystate.errors.DeploystateError` that says why not and what to do; nothing is
written then.  The runner appends them with the expected sequence number and, if someone wrote
meanwhile, asks again on the new state.
"""

from __future__ import annotations

from deploystate.actions import Action
from deploystate.errors import DeploystateError
from deploystate.journal import Entry
from deploystate.machine import Phase
from deploystate.rollout import RolloutView
from deploystate.spec import Spec, Step, StepKind


def promote(view: RolloutView, by: str, reason: str | None, now: float) -> list[Entry]:
    gates = [s.name for s in view.spec.steps if s.kind is StepKind.PROMOTION]
    waiting = [g for g in gates if view.steps[g].phase is Phase.RUNNING]
    if not view.active or not waiting:
        states = ", ".join(f"{g} is {view.steps[g].phase}" for g in gates) or "no promotion gate"
        if not view.active:
            states = f"it is {view.status}"
        raise DeploystateError(f"rollout {view.rollout_id} is not waiting for promotion ({states}); "
                               "promote once the canary deployment has succeeded")
    data = {"by": by, **({"reason": reason} if reason else {})}
    return [Entry(Action.SUCCEED.value, now, by, gate, data) for gate in waiting]


def skip_bake(view: RolloutView, by: str, reason: str, now: float) -> list[Entry]:
    bakes = [s.name for s in view.spec.steps
             if s.kind is StepKind.BAKE and view.steps[s.name].phase is Phase.RUNNING]
    if not view.active or not bakes:
        raise DeploystateError(f"rollout {view.rollout_id} has no bake running; nothing to skip")
    return [Entry(Action.SKIP.value, now, by, bake, {"by": by, "reason": reason}) for bake in bakes]


def retry(view: RolloutView, target: str, by: str, now: float) -> list[Entry]:
    step = resolve_target(view.spec, target)
    phase = view.steps[step.name].phase
    if not view.active:
        raise DeploystateError(f"rollout {view.rollout_id} is {view.status}; nothing can be retried")
    if phase is not Phase.FAILED:
        raise DeploystateError(f"{step.name} is {phase}, not failed; only a failed step can be retried")
    return [Entry(Action.RETRY.value, now, by, step.name, {"by": by})]


def abort(view: RolloutView, by: str, reason: str, now: float, *, leave_running: bool = False) -> list[Entry]:
    if not view.active:
        raise DeploystateError(f"rollout {view.rollout_id} is already {view.status}; nothing to abort")
    data: dict[str, object] = {"by": by, "reason": reason}
    if leave_running:
        data["leave_running"] = True  # a runner finishing a trigger in flight leaves it alone too
    return [Entry(Action.ABORT.value, now, by, None, data)]


def resolve_target(spec: Spec, target: str) -> Step:
    """The step named ``target``, or the one deploying environment ``target``."""
    # An environment means its own deployment first (not a multi-environment step that also
    # lists it); a multi-environment step only when it is the sole one.
    for matches in ((lambda s: s.name == target), (lambda s: s.targets == (target,)),
                    (lambda s: target in s.targets)):
        found = [step for step in spec.steps if matches(step)]
        if len(found) == 1:
            return found[0]
        if found:
            raise DeploystateError(f"{target!r} is deployed by several steps "
                                   f"({', '.join(s.name for s in found)}); name the step to retry")
    names = ", ".join(s.name for s in spec.steps)
    envs = ", ".join(sorted({e for s in spec.steps for e in s.targets}))
    raise DeploystateError(f"no step or environment {target!r} in spec {spec.name!r}; steps: {names}; "
                           f"environments: {envs}")

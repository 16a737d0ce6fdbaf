"""deploystate: multi-environment rollouts as explicit, durable state machines.

The pieces most users need are importable from here; adapters live in ``deploystate_backends``
and property-test rules in ``deploystate.testing`` (which needs hypothesis).
"""

from deploystate.actions import Action
from deploystate.errors import DeploystateError, EventRefused, SpecError
from deploystate.machine import Phase, Rollout, RolloutMachine
from deploystate.spec import Spec, Step, StepKind, builtin_spec, default_spec, load_spec

__all__ = [
    "Action",
    "DeploystateError",
    "EventRefused",
    "Phase",
    "Rollout",
    "RolloutMachine",
    "Spec",
    "SpecError",
    "Step",
    "StepKind",
    "builtin_spec",
    "default_spec",
    "load_spec",
]

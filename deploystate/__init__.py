"""deploystate: multi-environment rollouts as explicit, durable state machines.

What an embedder needs is importable from here (see README, "Use it as a library"):

- the shape of a rollout: :class:`Spec`, :class:`Step`, :class:`StepKind`, :func:`load_spec`,
  :func:`default_spec`, :func:`builtin_spec`;
- running it: :class:`Runner`, :class:`RunnerConfig`, :class:`RunResult`, :class:`Stop`,
  :class:`Strategy`, :class:`WaitPolicy`;
- its record: :class:`MemoryStore`, :class:`SQLiteStore`, :class:`Entry`, :class:`Record`;
- what it is: :class:`RolloutView`, :class:`StepState`, :class:`Standing`, :class:`Where`,
  :class:`Phase`, :class:`Action`, :func:`rebuild`;
- deciding without acting: :func:`decide`, :class:`Decision`, :class:`Outside`;
- the ports a backend implements (:mod:`deploystate.ports`) and doubles for tests
  (:mod:`deploystate.doubles`).

Adapters live in ``deploystate_backends``; property-test rules in ``deploystate.testing`` (which
needs hypothesis).  Names are imported on first use (PEP 562), so that ``deploystate --help``
does not pay for the machine and ``transitions``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploystate.actions import Action
    from deploystate.config import Config, RunnerConfig, load_config
    from deploystate.decide import Decision, Outside, Stop, decide
    from deploystate.errors import DeploystateError, EventRefused, SpecError
    from deploystate.journal import Entry, JournalConflict, JournalCorrupt, MemoryStore, Record
    from deploystate.machine import Phase, Rollout, RolloutMachine
    from deploystate.ports import (
        BackendError,
        Backends,
        Clock,
        Deployer,
        Deployment,
        Notice,
        Notifier,
        Outcome,
        PackageBuild,
        PackageWatcher,
        Store,
        TriggerRequest,
    )
    from deploystate.rollout import RolloutView, StepState, rebuild
    from deploystate.runner import Runner, RunResult
    from deploystate.spec import Spec, Step, StepKind, builtin_spec, default_spec, load_spec
    from deploystate.sqlite_store import SQLiteStore
    from deploystate.standing import Standing, Where
    from deploystate.strategy import Strategy
    from deploystate.waiting import WaitPolicy

_HOMES = {
    "deploystate.actions": ("Action",),
    "deploystate.config": ("Config", "RunnerConfig", "load_config"),
    "deploystate.decide": ("Decision", "Outside", "Stop", "decide"),
    "deploystate.errors": ("DeploystateError", "EventRefused", "SpecError"),
    "deploystate.journal": ("Entry", "JournalConflict", "JournalCorrupt", "MemoryStore", "Record"),
    "deploystate.machine": ("Phase", "Rollout", "RolloutMachine"),
    "deploystate.ports": ("BackendError", "Backends", "Clock", "Deployer", "Deployment", "Notice", "Notifier",
                          "Outcome", "PackageBuild", "PackageWatcher", "Store", "TriggerRequest"),
    "deploystate.rollout": ("RolloutView", "StepState", "rebuild"),
    "deploystate.runner": ("RunResult", "Runner"),
    "deploystate.spec": ("Spec", "Step", "StepKind", "builtin_spec", "default_spec", "load_spec"),
    "deploystate.sqlite_store": ("SQLiteStore",),
    "deploystate.standing": ("Standing", "Where"),
    "deploystate.strategy": ("Strategy",),
    "deploystate.waiting": ("WaitPolicy",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "Action", "BackendError", "Backends", "Clock", "Config", "Decision", "Deployer", "Deployment",
    "DeploystateError", "Entry", "EventRefused", "JournalConflict", "JournalCorrupt", "MemoryStore",
    "Notice", "Notifier", "Outcome", "Outside", "PackageBuild", "PackageWatcher", "Phase", "Record",
    "Rollout", "RolloutMachine", "RolloutView", "RunResult", "Runner", "RunnerConfig", "SQLiteStore",
    "Spec", "SpecError", "Standing", "Step", "StepKind", "StepState", "Stop", "Store", "Strategy",
    "TriggerRequest", "WaitPolicy", "Where", "builtin_spec", "decide", "default_spec", "load_config",
    "load_spec", "rebuild",
]


def __getattr__(name: str) -> Any:
    home = _HOME_OF.get(name)
    if home is None:
        raise AttributeError(f"module 'deploystate' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME_OF])

"""What the command line needs of a simulated backend beyond the ports.

The core never imports an adapter: a simulated backend is found by name in the registry like any
other, and its versions, clock and files are its own business (``Backends.check_version``,
``prepare`` and ``close``).  What is left here is the command line's side:

- a simulated world lives in a file beside the journal, so both survive a killed process
  (:func:`world_beside`, :func:`settings_for_store`); ``simulate``'s flags become settings
  (:func:`settings_for_simulate`);
- a deployer that keeps a record of every trigger (:class:`~deploystate.ports.TriggerLog`; the
  simulated one does, through its world) lets a summary compare the journal's count of triggers
  with the deployer's own (:func:`deployer_triggers`, :func:`triggers_by_step`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploystate.errors import DeploystateError
from deploystate.ports import Backends, TriggerLike, TriggerLog
from deploystate.spec import Spec

SIMULATED = "simulated"
WORLD_SUFFIX = ".sim"
WORLD = "world"  # the simulated backend's setting: its world's file (in memory without one)


def world_beside(store: Path) -> Path:
    """Where a simulated world lives next to a journal file, so both survive a killed process.

    Beside the journal itself, whatever symbolic link it is reached through: a world beside the
    link would be a second, empty one, and the rollout would go on there (pipeline numbers from 1
    again, a clock hours behind).  A world an older deploystate made beside the link (and none
    beside the journal) is kept: it is the one that rollout ran in.
    """
    given = store.with_name(store.name + WORLD_SUFFIX)
    real = Path(os.path.realpath(store))
    if real == Path(os.path.abspath(store)):
        return given  # no link on the way: the path as given
    beside = real.with_name(real.name + WORLD_SUFFIX)
    return given if given.exists() and not beside.exists() else beside


def settings_for_simulate(base: Mapping[str, Any], *, spec: Spec, store: Path | None, seed: int | None,
                          fail: Sequence[str], retry_fixes: Sequence[str],
                          hang: Sequence[str], failing_checks: Sequence[str] = ()) -> dict[str, Any]:
    """Simulated backend settings: the configured ones, then the command line's."""
    known = sorted({env for step in spec.steps for env in step.targets})
    for flag, environments in (("--fail", fail), ("--retry-fixes", retry_fixes), ("--hang", hang)):
        for environment in environments:
            if environment not in known:
                raise DeploystateError(f"{flag} {environment}: spec {spec.name!r} deploys no environment "
                                       f"{environment!r}; environments: {', '.join(known)}")
    # A simulation's world lives exactly as long as its journal: a world kept from an earlier run
    # would answer the new journal's idempotency keys with that run's deployments.
    settings = without_files(base)
    if store is not None:
        settings[WORLD] = str(world_beside(store))
    if seed is not None:
        settings["seed"] = seed
    for name, given in (("fail", fail), ("retry_fixes", retry_fixes), ("hang", hang),
                        ("failing_checks", failing_checks)):
        if given:
            settings[name] = sorted(set(given))
    return settings


def settings_for_store(base: Mapping[str, Any], store: Path) -> dict[str, Any]:
    """The configured simulated settings; the world defaults to a file beside the journal."""
    settings = dict(base)
    settings.setdefault(WORLD, str(world_beside(store)))
    return settings


def without_files(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The same settings with no world file (a simulated world then lives in memory).

    Other backends have no such setting and get theirs unchanged.  The command line opens such a
    backend to check a new rollout's version before it makes any file.
    """
    return {name: value for name, value in settings.items() if name != WORLD}


def deployer_triggers(backends: Backends) -> Sequence[TriggerLike] | None:
    """Every trigger the deployer itself recorded, if it keeps such a record (simulations do).

    The record is the deployer's own (a :class:`TriggerLog`), or its ``world``'s.
    """
    deployer = backends.deployer
    for keeper in (deployer, getattr(deployer, "world", None)):
        if isinstance(keeper, TriggerLog):
            return keeper.triggers()
    return None


def triggers_by_step(step_of_key: Mapping[str, str], triggers: Sequence[TriggerLike]) -> dict[str, int]:
    """Count the deployer's triggers per step, matched by the idempotency keys the journal wrote."""
    counts: dict[str, int] = {}
    for trigger in triggers:
        step = step_of_key.get(trigger.key)
        if step is not None:
            counts[step] = counts.get(step, 0) + 1
    return counts

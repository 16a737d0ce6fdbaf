"""How the command line uses a simulated backend, known only through small protocols.

The core never imports an adapter.  A simulated backend is found by name in the registry like
any other; what the command line needs beyond the standard protocols is duck-typed here:

- a clock that can jump forward (``advance_to``): a simulated world is moved to the time its
  version was tagged, so the package builds of any auto-deploy tag appear right away;
- a deployer with a ``world`` that lists every trigger it received: the simulation's summary
  compares the journal's count with the deployer's own record.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from deploystate.errors import DeploystateError
from deploystate.ports import Backends
from deploystate.spec import Spec
from deploystate.version import AUTO_DEPLOY_TAG

SIMULATED = "simulated"
WORLD_SUFFIX = ".sim"


@runtime_checkable
class JumpingClock(Protocol):
    def advance_to(self, at: float) -> float:
        ...


class TriggerLike(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def environments(self) -> tuple[str, ...]: ...


@runtime_checkable
class TriggerLog(Protocol):
    def triggers(self) -> Sequence[TriggerLike]:
        ...


def world_beside(store: Path) -> Path:
    """Where a simulated world lives next to a journal file, so both survive a killed process."""
    return store.with_name(store.name + WORLD_SUFFIX)


def settings_for_simulate(base: Mapping[str, Any], *, spec: Spec, store: Path | None, seed: int | None,
                          fail: Sequence[str], retry_fixes: Sequence[str],
                          hang: Sequence[str]) -> dict[str, Any]:
    """Simulated backend settings: the configured ones, then the command line's."""
    known = sorted({env for step in spec.steps for env in step.targets})
    for flag, environments in (("--fail", fail), ("--retry-fixes", retry_fixes), ("--hang", hang)):
        for environment in environments:
            if environment not in known:
                raise DeploystateError(f"{flag} {environment}: spec {spec.name!r} deploys no environment "
                                       f"{environment!r}; environments: {', '.join(known)}")
    settings = dict(base)
    # A simulation's world lives exactly as long as its journal: a world kept from an earlier run
    # would answer the new journal's idempotency keys with that run's deployments.
    settings.pop("world", None)
    if store is not None:
        settings["world"] = str(world_beside(store))
    if seed is not None:
        settings["seed"] = seed
    for name, given in (("fail", fail), ("retry_fixes", retry_fixes), ("hang", hang)):
        if given:
            settings[name] = sorted(set(given))
    return settings


def settings_for_store(base: Mapping[str, Any], store: Path) -> dict[str, Any]:
    """The configured simulated settings; the world defaults to a file beside the journal."""
    settings = dict(base)
    settings.setdefault("world", str(world_beside(store)))
    return settings


def tag_time(version: str) -> float | None:
    match = AUTO_DEPLOY_TAG.match(version)
    if not match:
        return None
    moment = dt.datetime.strptime(match.group(3), "%Y%m%d%H%M").replace(tzinfo=dt.UTC)
    return moment.timestamp()


def catch_up_to_tag(backends: Backends, version: str) -> None:
    """Move a virtual clock to when ``version`` was tagged (never back); real clocks are left alone."""
    at = tag_time(version)
    clock = backends.clock
    if at is not None and isinstance(clock, JumpingClock):
        clock.advance_to(at)


def deployer_triggers(backends: Backends) -> Sequence[TriggerLike] | None:
    """Every trigger the deployer itself recorded, if it keeps such a record (simulations do)."""
    world = getattr(backends.deployer, "world", None)
    if isinstance(world, TriggerLog):
        return world.triggers()
    return None


def triggers_by_step(step_of_key: Mapping[str, str], triggers: Sequence[TriggerLike]) -> dict[str, int]:
    """Count the deployer's triggers per step, matched by the idempotency keys the journal wrote."""
    counts: dict[str, int] = {}
    for trigger in triggers:
        step = step_of_key.get(trigger.key)
        if step is not None:
            counts[step] = counts.get(step, 0) + 1
    return counts


def release(backends: Backends) -> None:
    """Close what a backend holds open (a simulated world's file), if it can be closed."""
    world = getattr(backends.deployer, "world", None)
    close = getattr(world, "close", None)
    if callable(close):
        close()

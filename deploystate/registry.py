"""Finding backends by name: the ``deploystate.backends`` entry-point group.

A backend package (ours in ``backends/``, or a third party's) declares, in its pyproject::

    [project.entry-points."deploystate.backends"]
    mine = "my_package.module:create"

where ``create(settings: Mapping[str, object]) -> deploystate.ports.Backends`` checks its
settings and raises a :class:`~deploystate.errors.DeploystateError` naming what is missing.
Whoever calls :func:`create` closes what it returns (``with registry.create(...) as backends:``).

A package adds commands to the command line through another group, ``deploystate.commands``
(:mod:`deploystate.commands`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from deploystate.errors import DeploystateError
from deploystate.ports import Backends

GROUP = "deploystate.backends"
BackendFactory = Callable[[Mapping[str, Any]], Backends]


def available() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


@functools.cache  # scanning installed packages and loading costs ~2 ms, more than a simulated rollout
def factory(name: str) -> BackendFactory:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        known = ", ".join(available()) or "none (is deploystate installed?)"
        raise DeploystateError(f"no backend named {name!r}; installed backends: {known}")
    try:
        loaded = found[0].load()
    except ImportError as error:
        raise DeploystateError(f"backend {name!r} cannot be loaded ({error}); install its extra, e.g. "
                               f"pip install 'deploystate[{name}]'") from None
    if not callable(loaded):
        raise DeploystateError(f"backend {name!r} entry point is not callable")
    return loaded  # type: ignore[no-any-return]


def create(name: str, settings: Mapping[str, Any]) -> Backends:
    backends = factory(name)(settings)
    if not isinstance(backends, Backends):
        raise DeploystateError(f"backend {name!r} returned {type(backends).__name__}, not Backends")
    return backends

"""Finding journal stores by URL: the ``deploystate.stores`` entry-point group.

A journal is a SQLite file (a path) or, given as a URL ``SCHEME://...``, a store that a package
declares for that scheme in its pyproject::

    [project.entry-points."deploystate.stores"]
    myscheme = "my_package.module:open_store"

where ``open_store(url: str, *, create: bool) -> deploystate.ports.Store`` opens the journal the
URL names (``create``: it may make an empty one; otherwise an empty one is "no journal") and raises
a :class:`~deploystate.errors.DeploystateError` saying what is wrong and what to do.  Its store
should also have ``check() -> list[str]`` for ``deploystate check-store``.  Whoever opens one
closes it.

URLs are kept as text (a ``Path`` would fold their ``//``), and :func:`shown` is what messages
print of them: never a password, should one have been written into the URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from deploystate.errors import DeploystateError
from deploystate.ports import Store

GROUP = "deploystate.stores"
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class CheckedStore(Store, Protocol):
    """What a command opens: a store, with the full check of ``deploystate check-store``."""

    def check(self) -> list[str]: ...

    def __enter__(self) -> CheckedStore: ...

    def __exit__(self, *exc_info: object) -> None: ...


StoreFactory = Callable[..., CheckedStore]


def is_url(location: str) -> bool:
    """True for ``scheme://...`` (a store found by its scheme), False for a path (a SQLite file)."""
    return _URL.match(location) is not None


def shown(url: str) -> str:
    """``url`` as messages show it: a password in its user info replaced by ``***``."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", url)


def available() -> list[str]:
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group=GROUP))


def factory(scheme: str) -> StoreFactory:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=GROUP) if ep.name == scheme]
    if not found:
        known = ", ".join(f"{name}://" for name in available()) or "none"
        raise DeploystateError(f"no journal store for URLs of scheme {scheme}:// (stores installed for: "
                               f"{known}); give a SQLite file path, or install the package that provides "
                               "it (for PostgreSQL: pip install 'deploystate[postgres]')")
    try:
        loaded = found[0].load()
    except ImportError as error:
        raise DeploystateError(f"the {scheme}:// journal store cannot be loaded ({error}); install its "
                               f"extra, e.g. pip install 'deploystate[{scheme}]'") from None
    if not callable(loaded):
        raise DeploystateError(f"the {scheme}:// journal store's entry point is not callable")
    return loaded  # type: ignore[no-any-return]


def open_url(url: str, *, create: bool) -> CheckedStore:
    """The store ``url`` names, opened by its scheme's factory (the caller closes it)."""
    found = _URL.match(url)
    if found is None:
        raise DeploystateError(f"{shown(url)} is not a store URL (SCHEME://...)")
    store = factory(found.group(1).lower())(url, create=create)
    return store

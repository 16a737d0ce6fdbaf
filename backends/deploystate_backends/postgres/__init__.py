"""A journal store in PostgreSQL, for runners on many hosts (CI jobs) sharing one journal.

Chosen by URL: ``store = "postgresql://USER@HOST:PORT/DB"`` (or ``postgres://``) in
``deploystate.toml``, ``DEPLOYSTATE_STORE`` or ``--store``; the core finds :func:`open_store`
through the ``deploystate.stores`` entry point of the URL's scheme.  Needs the ``postgres`` extra
(psycopg 3).  See :mod:`deploystate_backends.postgres.store` for the tables, the locks and the
races, and :mod:`deploystate_backends.postgres.url` for where the password comes from.
"""

from __future__ import annotations

from deploystate_backends.postgres.store import SCHEMA_VERSION, PostgresStore, lock_key
from deploystate_backends.postgres.url import parse, shown

__all__ = ["SCHEMA_VERSION", "PostgresStore", "lock_key", "open_store", "parse", "shown"]


def open_store(url: str, *, create: bool = True) -> PostgresStore:
    """The ``deploystate.stores`` factory: the journal at ``url`` (its schema made if ``create``)."""
    return PostgresStore(url, create=create)

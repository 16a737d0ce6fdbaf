"""A PostgreSQL store URL: where it points, and where its password comes from (never the URL itself).

``postgresql://USER@HOST:PORT/DB?password_env=NAME&sslmode=...``: every query parameter but
``password_env`` is libpq's own and passed on as given.  The password is libpq's business
(``PGPASSWORD``, ``PGPASSFILE``, ``PGSERVICE``, a client certificate) or, with ``password_env``,
the value of the environment variable it names.  A password written into the URL is refused:
settings live in files (``deploystate.toml``) and are printed in messages; the refusal shows the
URL with the password replaced by ``***``.  Nothing here imports psycopg, so a URL is checked
before the driver is loaded.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping

import attrs

from deploystate.errors import DeploystateError

SCHEMES = ("postgresql", "postgres")
PASSWORD_ENV = "password_env"
HIDDEN = "***"


@attrs.frozen
class Target:
    """A store URL taken apart: ``conninfo`` for libpq (no password in it, no ``password_env``),
    the password to give separately (None: libpq finds its own), and ``where`` for messages."""

    conninfo: str
    password: str | None = attrs.field(repr=False)
    where: str  # HOST:PORT/DB, for messages
    shown: str  # the URL as messages show it

    def scrub(self, text: str) -> str:
        """``text`` with the password (if any) replaced by ``***``: for every message that may
        quote what the server or libpq said."""
        return text.replace(self.password, HIDDEN) if self.password else text


def shown(url: str) -> str:
    """``url`` with any password in it (user info, or a ``password`` parameter) replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return re.sub(r"//[^@/]*@", f"//{HIDDEN}@", url)
    netloc = parts.netloc
    user, at, hosts = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:{HIDDEN}@{hosts}"
    query = "&".join(f"password={HIDDEN}" if pair.partition("=")[0] == "password" else pair
                     for pair in parts.query.split("&"))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse(url: str, env: Mapping[str, str] | None = None) -> Target:
    """``url`` as a :class:`Target`; ``DeploystateError`` saying what is wrong with it."""
    env = os.environ if env is None else env
    seen = shown(url)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as error:
        raise DeploystateError(f"store {seen} is not a URL ({error}); write it as "
                               "postgresql://USER@HOST:PORT/DATABASE") from None
    if parts.scheme.lower() not in SCHEMES:
        raise DeploystateError(f"store {seen} is not a PostgreSQL URL; write it as "
                               "postgresql://USER@HOST:PORT/DATABASE")
    user, at, _hosts = parts.netloc.rpartition("@")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if (at and ":" in user) or any(key == "password" for key, _ in query):
        raise DeploystateError(
            f"store {seen} has a password in it; deploystate never takes a password from its settings "
            "(they are files, and shown in messages); nothing was done. Remove it from the URL and put it "
            f"in PGPASSWORD (or a PGPASSFILE, or a PGSERVICE), or name the variable holding it with "
            f"?{PASSWORD_ENV}=NAME")
    password = None
    names = [value for key, value in query if key == PASSWORD_ENV]
    if len(names) > 1:
        raise DeploystateError(f"store {seen} names {PASSWORD_ENV} {len(names)} times; name one variable")
    if names:
        name = names[0]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise DeploystateError(f"store {seen}: {PASSWORD_ENV}={name!r} is not the name of an environment "
                                   "variable; give a name such as DEPLOYSTATE_PG_PASSWORD")
        password = env.get(name)
        if not password:
            raise DeploystateError(f"store {seen}: {PASSWORD_ENV} names {name}, which is "
                                   f"{'empty' if name in env else 'not set'}; set {name} to the database "
                                   "password (nothing was done)")
    kept = urllib.parse.urlencode([(k, v) for k, v in query if k != PASSWORD_ENV])
    # libpq takes both postgres:// and postgresql://; the scheme is given on as written.
    conninfo = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, kept, ""))
    return Target(conninfo, password, _where(parts, dict(query), env), shown(conninfo))


def _where(parts: urllib.parse.SplitResult, query: Mapping[str, str], env: Mapping[str, str]) -> str:
    """HOST:PORT/DB as libpq will resolve them (the URL, then its ``host=``-style parameters, then
    libpq's variables, then its defaults), for messages."""
    hosts = parts.netloc.rpartition("@")[2]
    host, port = hosts, ""
    if hosts and not hosts.startswith("[") and hosts.count(":") == 1:
        host, _, port = hosts.partition(":")
    elif hosts.startswith("[") and "]:" in hosts:
        host, _, port = hosts.rpartition(":")
    host = urllib.parse.unquote(host) or query.get("host") or env.get("PGHOST") or "localhost"
    port = port or query.get("port") or env.get("PGPORT") or "5432"
    user = urllib.parse.unquote(parts.netloc.rpartition("@")[0]) or query.get("user") or env.get("PGUSER")
    database = (urllib.parse.unquote(parts.path.lstrip("/")) or query.get("dbname") or env.get("PGDATABASE")
                or user or "(your login name)")
    return f"{host}:{port}/{database}"

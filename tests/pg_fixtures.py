"""A throwaway PostgreSQL cluster for the tests (loaded through ``pytest_plugins`` in conftest.py).

``pg_cluster`` (session): Debian's ``postgresql`` binaries (``/usr/lib/postgresql/*/bin``, or
``pg_config --bindir``, or ``PATH``) run ``initdb`` into a temporary folder and ``pg_ctl start`` on
a free loopback port, with its unix socket in that folder; stopped and removed at the end.
PostgreSQL refuses to run as root, so as root (here and in CI) the server runs as the
``postgres`` user the package makes, else as ``deploystate-test`` (made with ``useradd`` if
missing), through ``runuser``.  Connections over the socket are trusted; over TCP (127.0.0.1) they
need a password (scram-sha-256), for the tests of where passwords come from.

``pg_url`` (per test): a new, empty schema of that cluster's database ``journals``, as a store URL
(``...&options=-csearch_path%3DNAME``); ``pg_cluster.new_database()`` makes a whole database.

Without PostgreSQL: under CI (``CI`` set) the tests FAIL (``.ci/run`` installs it); elsewhere they
skip, saying how to install it.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "deploystate"
SERVER_USERS = ("postgres", "deploystate-test")


def _bin_dir() -> Path | None:
    def version(initdb: str) -> int:
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            folder = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                         check=True).stdout.strip())
            if (folder / "initdb").exists():
                return folder
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _server_user() -> str | None:
    """Who runs the server: None (this user) unless this is root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    SERVER_USERS[-1]], check=True, capture_output=True)
    return SERVER_USERS[-1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    def __init__(self, bin_dir: Path, folder: Path, user: str | None) -> None:
        self.bin_dir, self.folder, self.user = bin_dir, folder, user
        self.data, self.socket_dir, self.log = folder / "data", folder / "socket", folder / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._journals = False

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        # The server's own environment: none of the caller's PG* settings.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=self.folder, timeout=120,
                              check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}"
                                 f"\n{log}")
        return done

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.folder, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8", "--locale=C.UTF-8",
                  "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256")
        for attempt in range(5):
            self.port = _free_port()
            options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c full_page_writes=off -c max_connections=200")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                          options, "start")
                return
            except AssertionError:
                if attempt == 4:
                    raise
                time.sleep(0.2)  # the port was taken meanwhile: another one

    def stop(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        """A store URL over the unix socket (trusted)."""
        return f"postgresql://{user}@/{database}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, database: str, user: str) -> str:
        """A store URL over TCP (a password is asked)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as connection:
            connection.execute(statement)

    def new_database(self) -> str:
        name = f"t{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def new_schema(self) -> str:
        """A store URL of a new, empty schema in the database ``journals`` (a schema costs a
        millisecond, a database a tenth of a second)."""
        if not self._journals:
            self.sql("CREATE DATABASE journals")
            self._journals = True
        name = f"s{next(self._names)}"
        self.sql(f"CREATE SCHEMA {name}", "journals")
        return f"{self.url('journals')}&options=-csearch_path%3D{name}"


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI needs it (.ci/run installs Debian's postgresql)", pytrace=False)
    pytest.skip(f"{reason} (Debian: apt-get install postgresql)")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        _missing("PostgreSQL's initdb is not installed")
    assert bin_dir is not None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg is not installed (pip install -e '.[test]')")
    user = _server_user()
    if user is not None and shutil.which("runuser") is None:
        _missing("runuser is missing: PostgreSQL cannot run as root and nothing can switch to "
                 f"user {user}")
    folder = Path(tempfile.mkdtemp(prefix="deploystate-pg-"))  # /tmp: the server's user can reach it
    cluster = Cluster(bin_dir, folder, user)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A store URL of a new, empty journal (a schema of its own)."""
    return pg_cluster.new_schema()

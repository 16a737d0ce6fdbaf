"""The PostgreSQL store beyond the shared contract (``test_store_contract.py`` runs that against it):
its schema version, what it refuses, where its password comes from and that no message shows it,
its runner lock across processes (released when a holder is killed), and races between processes
for a new rollout and for an environment: exactly one winner each time.

A real server, started by the tests (``pg_fixtures.py``).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
import time
from typing import Any

import psycopg
import pytest
from deploystate_backends.postgres import SCHEMA_VERSION, PostgresStore, lock_key, parse, shown
from pg_fixtures import Cluster

from deploystate.errors import DeploystateError
from deploystate.journal import (
    Entry,
    JournalConflict,
    JournalCorrupt,
    JournalError,
    JournalReadOnly,
    RolloutBusy,
)
from deploystate.stores import open_url

RID = "13.10.202103011220"
ENV = "gprd"
ROUNDS = 100
SECRET = "s3cret-Pa55word-do-not-show"


def entry(action: str = "created", by: str = "tester") -> Entry:
    return Entry(action, 1000.0, by, None, {"by": by})


def tables(url: str) -> list[tuple[str, ...]]:
    with psycopg.connect(parse(url).conninfo, autocommit=True) as db:
        return [tuple(str(v) for v in row) for row in db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")]


# -- the schema -----------------------------------------------------------------------------------

def test_the_schema_is_made_on_first_use_with_its_version(pg_url: str) -> None:
    assert tables(pg_url) == []
    with PostgresStore(pg_url) as store:
        store.append(RID, 0, [entry()])
    assert tables(pg_url) == [("deliveries",), ("deploystate_schema",), ("environment_records",),
                              ("environment_summaries",), ("records",), ("rollouts",)]
    with psycopg.connect(parse(pg_url).conninfo) as db:
        assert db.execute("SELECT version FROM deploystate_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused_and_left_as_it_is(pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        store.append(RID, 0, [entry()])
    with psycopg.connect(parse(pg_url).conninfo, autocommit=True) as db:
        db.execute("UPDATE deploystate_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalCorrupt, match=rf"has journal schema {SCHEMA_VERSION + 1}, newer than schema "
                                             rf"{SCHEMA_VERSION} that this deploystate reads; it was not "
                                             "changed. Use a deploystate at least as new"):
        PostgresStore(pg_url)
    with psycopg.connect(parse(pg_url).conninfo) as db:
        assert db.execute("SELECT count(*) FROM records").fetchone() == (1,)
        assert db.execute("SELECT version FROM deploystate_schema").fetchone() == (SCHEMA_VERSION + 1,)


def test_another_programs_tables_are_refused_and_left_alone(pg_url: str) -> None:
    with psycopg.connect(parse(pg_url).conninfo, autocommit=True) as db:
        db.execute("CREATE TABLE records (id INTEGER)")
    with pytest.raises(JournalCorrupt, match=r"is not a deploystate journal .*has table records but no "
                                             r"deploystate_schema.*it was not changed"):
        PostgresStore(pg_url)
    assert tables(pg_url) == [("records",)]


def test_an_empty_database_is_no_journal_unless_made(pg_url: str) -> None:
    with pytest.raises(JournalError, match=r"no journal in PostgreSQL database .*start a rollout first"):
        open_url(pg_url, create=False)
    assert tables(pg_url) == []
    open_url(pg_url, create=True).close()
    open_url(pg_url, create=False).close()


def test_two_processes_opening_an_empty_database_make_the_schema_once(pg_url: str) -> None:
    script = ("import sys\nfrom deploystate_backends.postgres import PostgresStore\n"
              "PostgresStore(sys.argv[1]).close()")
    started = [subprocess.Popen([sys.executable, "-c", script, pg_url], stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    for process in started:
        assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
    assert len(tables(pg_url)) == 6


def test_a_role_that_may_not_create_the_tables_is_told_what_to_grant(pg_cluster: Cluster) -> None:
    database = pg_cluster.new_database()  # PostgreSQL 15: only the owner may create in public
    role = f"reader{time.monotonic_ns() % 10**9}"
    pg_cluster.sql(f"CREATE ROLE {role} LOGIN")
    with pytest.raises(JournalReadOnly, match=r"refused this \(permission denied for schema public\); "
                                              r"nothing was written. Grant the role what the journal "
                                              r"needs: CREATE on the schema"):
        PostgresStore(pg_cluster.url(database, user=role))


# -- the URL and the password -----------------------------------------------------------------------

@pytest.fixture
def password_role(pg_cluster: Cluster) -> str:
    name = f"r{os.getpid()}_{time.monotonic_ns() % 10**9}"
    pg_cluster.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{SECRET}'")
    database = pg_cluster.new_database()
    pg_cluster.sql(f"ALTER DATABASE {database} OWNER TO {name}")
    return pg_cluster.tcp_url(database, name)


def test_a_password_from_the_variable_named_by_password_env(password_role: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("JOURNAL_PW", SECRET)
    with PostgresStore(f"{password_role}?password_env=JOURNAL_PW") as store:
        store.append(RID, 0, [entry()])
        assert store.last_seq(RID) == 1
        assert SECRET not in repr(store) and SECRET not in store.path


def test_a_password_from_libpqs_own_variable(password_role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", SECRET)
    with PostgresStore(password_role) as store:
        assert store.rollouts() == []


def test_without_the_password_the_login_is_refused_saying_where_it_comes_from(
        password_role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    monkeypatch.setenv("JOURNAL_PW", "wrong-" + SECRET)
    with pytest.raises(JournalError) as caught:
        PostgresStore(f"{password_role}?password_env=JOURNAL_PW")
    said = str(caught.value)
    assert "refused the login" in said and "PGPASSWORD" in said and "nothing was written" in said
    assert SECRET not in said


@pytest.mark.parametrize("url", [f"postgresql://alice:{SECRET}@127.0.0.1:1/db",
                                 f"postgresql://127.0.0.1:1/db?password={SECRET}&sslmode=disable",
                                 f"postgres://alice:{SECRET}@/db?host=/tmp"])
def test_a_password_in_the_url_is_refused_and_never_shown(url: str) -> None:
    with pytest.raises(DeploystateError) as caught:
        open_url(url, create=True)
    said = str(caught.value)
    assert "has a password in it" in said and "PGPASSWORD" in said and "password_env" in said
    assert SECRET not in said and "***" in said
    assert SECRET not in shown(url)


def test_password_env_naming_an_unset_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_PW", raising=False)
    with pytest.raises(DeploystateError, match="password_env names NO_SUCH_PW, which is not set; set "
                                               "NO_SUCH_PW to the database password"):
        PostgresStore("postgresql://alice@127.0.0.1:1/db?password_env=NO_SUCH_PW")


def test_a_server_that_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_PW", SECRET)
    with socket_port() as port, pytest.raises(JournalError) as caught:
        PostgresStore(f"postgresql://alice@127.0.0.1:{port}/journal?password_env=JOURNAL_PW&connect_timeout=5")
    said = str(caught.value)
    assert said.startswith(f"cannot reach PostgreSQL at 127.0.0.1:{port}/journal (")
    assert said.endswith("): start it or fix store; nothing was written")
    assert SECRET not in said and "\n" not in said


def test_a_broken_connection_says_so_without_the_password(password_role: str, pg_cluster: Cluster,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_PW", SECRET)
    store = PostgresStore(f"{password_role}?password_env=JOURNAL_PW")
    try:
        store.append(RID, 0, [entry()])
        user = password_role.split("//")[1].split("@")[0]
        pg_cluster.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'")
        with pytest.raises(JournalError) as caught:
            store.append(RID, 1, [entry("start")])
        said = str(caught.value)
        assert said.startswith("lost PostgreSQL at 127.0.0.1:") and "whether this last write was kept" in said
        assert SECRET not in said
        # The next call connects again (with the password from the variable) and goes on.
        assert store.last_seq(RID) == 1
        store.append(RID, 1, [entry("start")])
    finally:
        store.close()


class socket_port:
    """A loopback port with nothing listening on it (bound, not listening: refused at once)."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return int(self._socket.getsockname()[1])

    def __exit__(self, *exc_info: object) -> None:
        self._socket.close()


def test_urls_are_chosen_by_scheme_and_unknown_schemes_say_what_is_installed() -> None:
    with pytest.raises(DeploystateError, match=r"no journal store for URLs of scheme mysql:// \(stores "
                                               r"installed for: postgres://, postgresql://\)"):
        open_url("mysql://db/x", create=True)


# -- the runner lock --------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from deploystate_backends.postgres import PostgresStore
    store = PostgresStore(sys.argv[1])
    with store.hold(sys.argv[2]):
        print("held", flush=True)
        sys.stdin.readline()
""")


def test_a_hold_excludes_other_stores_and_this_ones_own_second_hold(pg_url: str) -> None:
    one, two = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        with one.hold(RID):
            with pytest.raises(RolloutBusy, match=f"rollout {RID} is being run by another process"):
                two.hold(RID).__enter__()
            with pytest.raises(RolloutBusy), one.hold(RID):
                pass
            with two.hold("other-rollout"):  # one lock per rollout
                pass
        with two.hold(RID):
            pass
    finally:
        one.close()
        two.close()


def test_the_lock_key_is_stable_and_per_schema() -> None:
    assert lock_key("public", RID) == lock_key("public", RID)
    assert lock_key("public", RID) != lock_key("s1", RID)
    assert -(2**63) <= lock_key("public", RID) < 2**63
    # The same in another Python process (hash() would not be: it is salted per process).
    other = subprocess.run([sys.executable, "-c", "from deploystate_backends.postgres import lock_key; "
                            f"print(lock_key('public', {RID!r}))"], capture_output=True, text=True,
                           check=True)
    assert int(other.stdout) == lock_key("public", RID)


def test_a_killed_holders_lock_is_released(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, pg_url, RID], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with PostgresStore(pg_url) as store:
            with pytest.raises(RolloutBusy):
                store.hold(RID).__enter__()
            holder.kill()  # SIGKILL: nothing gets to let go
            holder.wait(timeout=30)
            deadline = time.monotonic() + 10
            while True:  # the server ends the dead connection's session as soon as it reads its EOF
                try:
                    with store.hold(RID):
                        break
                except RolloutBusy:
                    assert time.monotonic() < deadline, "the killed holder's lock was never released"
                    time.sleep(0.05)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


# -- races between processes ------------------------------------------------------------------------

def _racer(url: str, name: str, barrier: Any, results: Any) -> None:
    """Every round: create a new rollout and a new environment expecting nothing, then append to
    the shared environment after the record both racers just read."""
    won: list[str] = []
    with PostgresStore(url) as store:
        for round_ in range(ROUNDS):
            barrier.wait()
            try:
                store.append(f"r-{round_}", 0, [entry(by=name)])
                won.append(f"r-{round_}")
            except JournalConflict as error:
                assert "already exists" in str(error), error
            try:
                store.env_append(f"fresh-{round_}", 0, [entry("claim", name)])
                won.append(f"fresh-{round_}")
            except JournalConflict as error:
                assert "expected record 0, found 1" in str(error), error
            barrier.wait()
            last = len(store.env_read(ENV))
            barrier.wait()
            try:
                store.env_append(ENV, last, [entry("claim", name)])
                won.append(f"{ENV}@{last + 1}")
            except JournalConflict as error:
                assert f"expected record {last}, found {last + 1}" in str(error), error
    results.put((name, won))


def test_of_processes_racing_exactly_one_wins_each_race(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    spawn = multiprocessing.get_context("spawn")
    names = ("a", "b", "c")
    barrier, results = spawn.Barrier(len(names), timeout=60), spawn.Queue()
    racers = [spawn.Process(target=_racer, args=(pg_url, name, barrier, results)) for name in names]
    for racer in racers:
        racer.start()
    won = dict(results.get(timeout=180) for _ in racers)
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    contested = ({f"r-{i}" for i in range(ROUNDS)} | {f"fresh-{i}" for i in range(ROUNDS)}
                 | {f"{ENV}@{i}" for i in range(1, ROUNDS + 1)})
    every = [race for name in names for race in won[name]]
    assert len(every) == len(set(every)) and set(every) == contested  # one winner, never two, never none
    assert sum(1 for name in names if won[name]) >= 2, "one process won every race: nothing was contended"
    with PostgresStore(pg_url) as store:
        shared = store.env_read(ENV)
        assert [r.seq for r in shared] == list(range(1, ROUNDS + 1))
        assert all(f"{ENV}@{r.seq}" in won[r.actor] for r in shared)  # the record is the winner's
        for i in range(ROUNDS):
            (only,) = store.read(f"r-{i}")
            assert f"r-{i}" in won[only.actor]
        assert store.check() == []


# -- check-store --------------------------------------------------------------------------------

def test_check_finds_what_sqlite_check_finds(pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        store.append(RID, 0, [entry(), entry("start"), entry("succeed")], summary={"status": "running"})
        store.append("other", 0, [entry()])
        store.set_delivered(RID, "slack", 2)
        store.env_append(ENV, 0, [entry("claim"), entry("release")])
        assert store.check() == []
    with psycopg.connect(parse(pg_url).conninfo, autocommit=True) as db:
        db.execute("DELETE FROM records WHERE rollout_id = %s AND seq = 2", (RID,))
        db.execute("UPDATE records SET data = 'not json' WHERE rollout_id = 'other'")
        db.execute("UPDATE deliveries SET seq = 9")
        db.execute("DELETE FROM environment_records WHERE seq = 1")
    with PostgresStore(pg_url) as store:
        problems = store.check()
    assert problems == [
        f"rollout {RID}: record 2 is missing (2 records numbered 1 to 3)",
        f"environment {ENV}: record 1 is missing (1 records numbered 2 to 2)",
        f"rollout {RID}: notifier slack is at record 9, beyond its last record 3",
        "rollout other: record 1's data is not a JSON object",
    ]
    assert all(re.match(r"^(rollout|environment) ", p) for p in problems)

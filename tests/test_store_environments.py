"""Environment journals and delivery positions in a SQLite file: races between processes, upgrades
of older files in place, read-only older files, and what ``check-store`` finds in the new tables.

The contract shared with the memory store is in ``test_store_contract.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_journal import make_v1_journal, tamper
from test_store_readonly import Run, as_a_user, files, modes, read_only  # noqa: F401 (a fixture)

from deploystate.journal import Entry, JournalConflict, JournalCorrupt, Summary
from deploystate.sqlite_store import APPLICATION_ID, SCHEMA_VERSION, SQLiteStore

RID = "13.10.202103011220"
OTHER = "13.10.202103021340"
ENV = "gprd"
ROUNDS = 150


def claim(by: str, action: str = "claim") -> Entry:
    return Entry(action, 2000.0, by, None, {"by": by})


# -- two processes racing for one environment --------------------------------------------------------

def _racer(path: str, name: str, barrier: Any, results: Any) -> None:
    """In a process of its own: every round, claim a new environment expecting nothing, then claim
    the shared one after the record both racers just read.  Puts what it won in ``results``."""
    won: list[str] = []
    with SQLiteStore(path) as store:
        for round_ in range(ROUNDS):
            barrier.wait()
            try:
                store.env_append(f"fresh-{round_}", 0, [claim(name)])
                won.append(f"fresh-{round_}")
            except JournalConflict as error:
                assert "expected record 0, found 1" in str(error), error
            barrier.wait()  # every append of the round done: both read the same last record
            last = len(store.env_read(ENV))
            barrier.wait()
            try:
                store.env_append(ENV, last, [claim(name)])
                won.append(f"{ENV}@{last + 1}")
            except JournalConflict as error:
                assert f"expected record {last}, found {last + 1}" in str(error), error
    results.put((name, won))


def test_of_two_processes_racing_for_an_environment_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    SQLiteStore(path).close()
    spawn = multiprocessing.get_context("spawn")  # no SQLite state or locks inherited by a fork
    barrier, results = spawn.Barrier(2, timeout=60), spawn.Queue()
    racers = [spawn.Process(target=_racer, args=(str(path), name, barrier, results)) for name in ("a", "b")]
    for racer in racers:
        racer.start()
    won = dict(results.get(timeout=120) for _ in racers)
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    a, b = set(won["a"]), set(won["b"])
    contested = {f"fresh-{i}" for i in range(ROUNDS)} | {f"{ENV}@{i}" for i in range(1, ROUNDS + 1)}
    assert not a & b and a | b == contested  # each race: one winner, never two, never none
    assert a and b, "one process won every race: nothing was contended"
    with SQLiteStore(path) as store:
        shared = store.env_read(ENV)
        assert [r.seq for r in shared] == list(range(1, ROUNDS + 1))
        assert all(f"{ENV}@{r.seq}" in won[r.actor] for r in shared)  # the record is the winner's
        for i in range(ROUNDS):
            (only,) = store.env_read(f"fresh-{i}")
            assert f"fresh-{i}" in won[only.actor]
        assert store.check() == []


# -- upgrades -------------------------------------------------------------------------------------

# What deploystate wrote at schema 2 (sqlite_store.py at SCHEMA_VERSION = 2), verbatim.
V2_SCHEMA = """
CREATE TABLE records (
    rollout_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    action TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    step TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (rollout_id, seq)
) WITHOUT ROWID;
CREATE TABLE rollouts (
    rollout_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    summary_seq INTEGER,
    summary TEXT
) WITHOUT ROWID;
"""


def make_v2_journal(path: Path) -> None:
    """A journal as schema-2 deploystate made it: RID with 3 records (summary at 3), OTHER with 1
    (summary stale)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN IMMEDIATE")
    for statement in V2_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 2")
    rows = [(RID, seq, "created" if seq == 1 else "start", 1000.0 + seq, "old", None,
             json.dumps({"n": seq})) for seq in (1, 2, 3)]
    rows.append((OTHER, 1, "created", 1500.0, "old", None, json.dumps({"n": 1})))
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO rollouts VALUES (?, 3, 3, ?)", (RID, json.dumps({"status": "running"})))
    db.execute("INSERT INTO rollouts VALUES (?, 1, NULL, NULL)", (OTHER,))
    db.execute("COMMIT")
    db.close()  # the last connection checkpoints the WAL into the file


def schema_of(path: Path) -> tuple[int, set[str]]:
    db = sqlite3.connect(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return db.execute("PRAGMA user_version").fetchone()[0], tables
    finally:
        db.close()


ALL_TABLES = {"records", "rollouts", "environment_records", "environment_summaries", "deliveries"}


def test_a_version_2_journal_is_upgraded_in_place_keeping_its_rollouts(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    make_v2_journal(path)
    assert schema_of(path) == (2, {"records", "rollouts"})
    store = SQLiteStore(path)
    assert SCHEMA_VERSION == 3 and schema_of(path) == (3, ALL_TABLES)
    assert sorted(store.rollouts()) == [RID, OTHER]
    assert store.summaries() == {RID: (3, Summary(3, {"status": "running"})), OTHER: (1, None)}
    assert [(r.seq, r.action, r.data) for r in store.read(RID)] == [
        (1, "created", {"n": 1}), (2, "start", {"n": 2}), (3, "start", {"n": 3})]
    assert store.environments() == [] and store.env_read(ENV) == [] and store.delivered(RID) == {}
    store.env_append(ENV, 0, [claim(RID)])
    store.set_delivered(RID, "slack", 3)
    store.append(RID, 3, [Entry("succeed", 1004.0, "new", "tag", {})])
    assert store.check() == []
    store.close()
    again = SQLiteStore(path)  # opening an upgraded file changes nothing more
    assert schema_of(path) == (3, ALL_TABLES)
    assert [r.seq for r in again.env_read(ENV)] == [1] and again.delivered(RID) == {"slack": 3}
    assert again.last_seq(RID) == 4 and again.last_seq(OTHER) == 1
    again.close()


def test_a_version_1_journal_is_upgraded_to_3_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    make_v1_journal(path, {"r1": 3, RID: 2})
    with SQLiteStore(path) as store:
        assert schema_of(path) == (3, ALL_TABLES)
        assert store.summaries() == {"r1": (3, None), RID: (2, None)}
        assert store.environments() == [] and store.delivered("r1") == {}
        store.env_append(ENV, 0, [claim("r1")])
        store.set_delivered("r1", "slack", 2)
        assert store.check() == []


def test_two_stores_opening_one_old_journal_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    make_v2_journal(path)
    with SQLiteStore(path) as one, SQLiteStore(path) as two:
        one.env_append(ENV, 0, [claim(RID)])
        assert [r.actor for r in two.env_read(ENV)] == [RID]
    assert schema_of(path) == (3, ALL_TABLES)


# Opens the journal, reads it every way (environments and deliveries too), then tries every write.
USER = textwrap.dedent("""
    import json, sys
    from deploystate.journal import Entry, JournalError
    from deploystate.sqlite_store import SQLiteStore
    seen = {}
    store = SQLiteStore(sys.argv[1])
    rid = sys.argv[2]
    seen["rollouts"] = sorted(store.rollouts())
    seen["actions"] = [r.action for r in store.read(rid)]
    seen["environments"] = store.environments()
    seen["env_read"] = [r.seq for r in store.env_read("gprd")]
    seen["delivered"] = store.delivered(rid)
    seen["check"] = store.check()
    last_env = len(seen["env_read"])
    writes = {"append": lambda: store.append(rid, store.last_seq(rid), [Entry("abort", 1.0, "u")]),
              "env_append": lambda: store.env_append("gprd", last_env, [Entry("claim", 1.0, "u")]),
              "set_delivered": lambda: store.set_delivered(rid, "slack", 1)}
    for name, write in writes.items():
        try:
            write()
            seen[name] = "written"
        except JournalError as error:
            seen[name] = f"{type(error).__name__}: {error}"
    store.close()
    print(json.dumps(seen))
""")


def use(run: Run, path: Path) -> dict[str, object]:
    done = run("-c", USER, str(path), RID, cwd=path.parent)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("case", ["file", "file and folder"])
def test_a_read_only_journal_of_schema_2_is_read_as_it_is(as_a_user: Run, tmp_path: Path,  # noqa: F811
                                                          case: str) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    path = folder / "journal.sqlite"
    make_v2_journal(path)
    before = files(folder)
    with modes((path, 0o444), *([(folder, 0o555)] if "folder" in case else [])):
        seen = use(as_a_user, path)
    why = "permission denied"
    assert seen == {
        "rollouts": [RID, OTHER], "actions": ["created", "start", "start"],
        "environments": [], "env_read": [], "delivered": {}, "check": [],
        "append": read_only(path, why), "env_append": read_only(path, why),
        "set_delivered": read_only(path, why),
    }
    after = files(folder)
    assert {name: after[name] for name in before} == before  # not upgraded, not changed
    assert schema_of(path) == (2, {"records", "rollouts"})


def test_a_read_only_journal_of_schema_3_refuses_every_write(as_a_user: Run, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "journal.sqlite"
    with SQLiteStore(path) as store:
        store.append(RID, 0, [Entry("created", 1.0, "t")])
        store.env_append(ENV, 0, [claim(RID)])
        store.set_delivered(RID, "slack", 1)
    with modes((path, 0o444)):
        seen = use(as_a_user, path)
    refused = read_only(path, "permission denied")
    assert seen == {"rollouts": [RID], "actions": ["created"], "environments": [ENV], "env_read": [1],
                    "delivered": {"slack": 1}, "check": [],
                    "append": refused, "env_append": refused, "set_delivered": refused}


# -- the full check ---------------------------------------------------------------------------------

def test_check_finds_damage_in_environment_journals_and_deliveries(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with SQLiteStore(path) as store:
        for rollout_id in (RID, OTHER, "gone"):
            store.append(rollout_id, 0, [Entry("created", 1.0, "t"), Entry("start", 2.0, "t", "tag")])
        for environment in ("gap", "first", "badjson", "fine"):
            store.env_append(environment, 0, [claim(RID), claim(RID, "succeeded"), claim(RID, "release")])
        store.set_delivered(RID, "slack", 2)
        store.set_delivered(OTHER, "slack", 1)
        store.set_delivered("gone", "slack", 2)
        assert store.check() == []
    tamper(path,
           "DELETE FROM environment_records WHERE environment = 'gap' AND seq = 2",
           "DELETE FROM environment_records WHERE environment = 'first' AND seq = 1",
           "UPDATE environment_records SET data = '[1' WHERE environment = 'badjson' AND seq = 3",
           f"UPDATE deliveries SET seq = 5 WHERE rollout_id = '{RID}'",
           f"UPDATE deliveries SET seq = 0 WHERE rollout_id = '{OTHER}'",
           "DELETE FROM records WHERE rollout_id = 'gone'", "DELETE FROM rollouts WHERE rollout_id = 'gone'")
    with SQLiteStore(path) as store:
        assert store.check() == [
            "environment first: record 1 is missing (2 records numbered 2 to 3)",
            "environment gap: record 2 is missing (2 records numbered 1 to 3)",
            f"rollout {RID}: notifier slack is at record 5, beyond its last record 2",
            f"rollout {OTHER}: notifier slack is at record 0, which no record has",
            "rollout gone: notifier slack is at record 2, but the rollout is not in the journal",
            "environment badjson: record 3's data is not a JSON object",
        ]


def test_a_damaged_environment_record_is_reported_when_read(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with SQLiteStore(path) as store:
        store.env_append(ENV, 0, [claim(RID)])
    tamper(path, "UPDATE environment_records SET data = 'nope'")
    with SQLiteStore(path) as store, pytest.raises(JournalCorrupt, match=f"record 1 of environment {ENV} "
                                                                          "is damaged"):
        store.env_read(ENV)


def test_a_journal_missing_a_new_table_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    SQLiteStore(path).close()
    tamper(path, "DROP TABLE deliveries")
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match="schema 3 without table deliveries"):
        SQLiteStore(path)
    assert path.read_bytes() == before

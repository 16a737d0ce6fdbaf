"""The journal stores: appends, conflicts, damaged and foreign files, the runner lock, schema upgrades.

The Store protocol itself, for every store, is tests/test_store_contract.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploystate import sqlite_store
from deploystate.journal import (
    Entry,
    JournalConflict,
    JournalCorrupt,
    JournalError,
    MemoryStore,
    RolloutBusy,
    Summary,
    UnknownRollout,
)
from deploystate.ports import Store
from deploystate.sqlite_store import SCHEMA_VERSION, SQLiteStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return SQLiteStore(tmp_path / "journal.sqlite")


def entry(action: str = "start", step: str | None = "tag", **data: object) -> Entry:
    return Entry(action, 1000.0, "tester", step, data)


def test_append_and_read_keep_order_and_data(store: Store) -> None:
    store.append("13.10.202103011220", 0, [entry("created", None, version="13.10.202103011220")])
    made = store.append("13.10.202103011220", 1, [entry(key="k/1"), entry("succeed")])
    assert [r.seq for r in made] == [2, 3]
    records = store.read("13.10.202103011220")
    assert [(r.seq, r.action, r.step) for r in records] == [
        (1, "created", None), (2, "start", "tag"), (3, "succeed", "tag")]
    assert records[1].data == {"key": "k/1"}
    assert store.rollouts() == ["13.10.202103011220"]
    assert store.read_all() == {"13.10.202103011220": records}


def test_stale_writer_gets_conflict_and_nothing_is_written(store: Store) -> None:
    store.append("r1", 0, [entry("created", None)])
    store.append("r1", 1, [entry()])
    with pytest.raises(JournalConflict, match="expected record 1, found 2"):
        store.append("r1", 1, [entry("fail")])
    assert [r.action for r in store.read("r1")] == ["created", "start"]


def test_creating_an_existing_rollout_is_a_conflict(store: Store) -> None:
    store.append("r1", 0, [entry("created", None)])
    with pytest.raises(JournalConflict, match="already exists"):
        store.append("r1", 0, [entry("created", None)])


def test_unknown_rollout_names_what_to_do(store: Store) -> None:
    with pytest.raises(UnknownRollout, match="deploystate start"):
        store.read("nope")


def test_entries_refuse_data_that_is_not_json() -> None:
    with pytest.raises(JournalError, match="plain JSON"):
        Entry("start", 1.0, "me", "tag", {"when": object()})
    with pytest.raises(JournalError, match="finite"):
        Entry("start", float("nan"), "me", "tag", {})


def test_hold_is_exclusive(store: Store) -> None:
    with store.hold("r1"):
        with pytest.raises(RolloutBusy, match="another process"), store.hold("r1"):
            pass
        with store.hold("r2"):
            pass
    with store.hold("r1"):
        pass


def test_sqlite_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    first = SQLiteStore(path)
    first.append("r1", 0, [entry("created", None, plan="x")])
    first.close()
    again = SQLiteStore(path)
    assert again.read("r1")[0].data == {"plan": "x"}


def test_a_file_that_is_not_sqlite_is_reported_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"these are my release notes, not a database\n" * 10)
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match="not a deploystate journal"):
        SQLiteStore(path)
    assert path.read_bytes() == before


def test_another_programs_database_is_reported_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.execute("INSERT INTO invoices VALUES (1)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match="another program"):
        SQLiteStore(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("made", [
    ["PRAGMA user_version = 7"],  # no tables, nothing but a schema number of its own
    ["CREATE VIEW answer AS SELECT 42"],  # no tables, but not empty
    ["CREATE VIEW answer AS SELECT 42", "DROP VIEW answer", "PRAGMA user_version = 2"],
])
def test_another_programs_database_without_tables_is_not_taken_over(tmp_path: Path, made: list[str]) -> None:
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    for statement in made:
        db.execute(statement)
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match=rf"^{path} is a SQLite database of another program .*"
                                             "it was not changed. Point --store at another file$"):
        SQLiteStore(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.sqlite"]


def test_an_empty_sqlite_file_becomes_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).close()  # SQLite makes no file until something is written
    path.touch()
    SQLiteStore(path).append("r1", 0, [entry("created", None)])
    assert header(path) == (SCHEMA_VERSION, sqlite_store.APPLICATION_ID)


def test_a_truncated_journal_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    for i in range(200):
        store.append(f"r{i}", 0, [entry("created", None, filler="x" * 500)])
    store.close()
    # Checkpoint the WAL into the main file, then cut the file in half.
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(JournalCorrupt):
        damaged = SQLiteStore(path)
        damaged.read_all()


def test_damaged_record_data_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    SQLiteStore(path).append("r1", 0, [entry("created", None)])
    db = sqlite3.connect(path)
    db.execute("UPDATE records SET data = '{not json'")
    db.commit()
    db.close()
    with pytest.raises(JournalCorrupt, match="not JSON"):
        SQLiteStore(path).read("r1")


def test_bad_rollout_ids_are_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "j.sqlite")
    with pytest.raises(JournalError, match="not valid"):
        store.append("../etc/passwd", 0, [entry("created", None)])


def test_sqlite_conflict_between_two_processes(tmp_path: Path) -> None:
    """Two connections (here: another process) racing for the same sequence number."""
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    store.append("r1", 0, [entry("created", None)])
    script = textwrap.dedent(f"""
        from deploystate.journal import Entry
        from deploystate.sqlite_store import SQLiteStore
        SQLiteStore({str(path)!r}).append("r1", 1, [Entry("start", 1.0, "other", "tag", {{}})])
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    with pytest.raises(JournalConflict):
        store.append("r1", 1, [entry()])
    assert [r.actor for r in store.read("r1")] == ["tester", "other"]


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    SQLiteStore(path)
    script = textwrap.dedent(f"""
        import sys, time
        from deploystate.sqlite_store import SQLiteStore
        with SQLiteStore({str(path)!r}).hold("r1"):
            print("held", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RolloutBusy), SQLiteStore(path).hold("r1"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with SQLiteStore(path).hold("r1"):
        pass


# -- schema 2: the rollouts table, upgrades, the full check, damage found in use ------------------

# What deploystate wrote until schema 2 (sqlite_store.py at schema version 1), verbatim.
V1_SCHEMA = """
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
"""


def make_v1_journal(path: Path, rollouts: dict[str, int], filler: str = "") -> None:
    """A journal as schema-1 deploystate made it: ``rollouts`` maps ids to their record counts."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN IMMEDIATE")
    db.execute(V1_SCHEMA)
    db.execute("PRAGMA application_id = 1685285484")  # 0x64736A6C
    db.execute("PRAGMA user_version = 1")
    db.execute("COMMIT")
    for rollout_id, count in rollouts.items():
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO records (rollout_id, seq, action, at, actor, step, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(rollout_id, seq, "created" if seq == 1 else "start", 1000.0 + seq, "old", None,
              json.dumps({"n": seq, "filler": f"{filler}{rollout_id}/{seq}" if filler else ""},
                         sort_keys=True))
             for seq in range(1, count + 1)])
        db.execute("COMMIT")
    db.close()  # the last connection checkpoints the WAL into the file


def header(path: Path) -> tuple[int, int]:
    """(user_version, application_id) as another connection reads them."""
    db = sqlite3.connect(path)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        return version, db.execute("PRAGMA application_id").fetchone()[0]
    finally:
        db.close()


def test_a_version_1_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    make_v1_journal(path, {"r1": 3, "r2": 1, "13.10.202103011220": 7})
    assert header(path) == (1, 0x64736A6C)
    store = SQLiteStore(path)
    assert header(path)[0] == SCHEMA_VERSION == 3
    assert store.summaries() == {"r1": (3, None), "r2": (1, None), "13.10.202103011220": (7, None)}
    assert store.last_seq("r1") == 3 and store.last_seq("13.10.202103011220") == 7
    assert sorted(store.rollouts()) == ["13.10.202103011220", "r1", "r2"]
    assert [r.data["n"] for r in store.read("r1")] == [1, 2, 3]
    assert store.read("r1", after=3) == []
    with pytest.raises(JournalConflict, match="expected record 2, found 3"):
        store.append("r1", 2, [entry()])
    store.append("r1", 3, [entry()], summary={"status": "running"})
    assert store.summaries()["r1"] == (4, Summary(4, {"status": "running"}))
    assert store.check() == []
    store.close()
    again = SQLiteStore(path)  # opening an upgraded file changes nothing more
    assert again.summaries()["r2"] == (1, None) and again.last_seq("r1") == 4


def test_a_damaged_version_1_journal_is_refused_and_not_upgraded(tmp_path: Path) -> None:
    """The upgrade is one transaction: reading the records fails, nothing of it is written."""
    path = tmp_path / "old.sqlite"
    make_v1_journal(path, {f"r{i:03}": 2 for i in range(300)}, filler="x" * 300)
    damage_page_holding(path, b"r150/1")
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match="it was not changed"):
        SQLiteStore(path)
    assert path.read_bytes() == before
    assert int.from_bytes(before[60:64], "big") == 1  # user_version, in the header itself


def test_a_journal_of_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    SQLiteStore(path).append("r1", 0, [entry("created", None)])
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match=r"journal schema 4, newer than schema 3 .*not changed"):
        SQLiteStore(path)
    assert path.read_bytes() == before


def test_opening_runs_no_full_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.sqlite"
    SQLiteStore(path).append("r1", 0, [entry("created", None)])
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", traced)
    store = SQLiteStore(path)
    assert statements and not [s for s in statements if "check" in s.lower()]
    assert store.check() == []
    assert [s for s in statements if "integrity_check" in s]


def vm_steps(store: SQLiteStore, call: Callable[[], object]) -> int:
    """SQLite virtual-machine instructions that ``call`` runs on ``store``'s connection."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store._db.set_progress_handler(count, 1)
    try:
        call()
    finally:
        store._db.set_progress_handler(None, 1)
    return steps[0]


def refused(call: Callable[[], object]) -> None:
    with pytest.raises(UnknownRollout):
        call()


def test_per_rollout_work_does_not_grow_with_the_number_of_rollouts(tmp_path: Path) -> None:
    """The runner's frequent calls (nothing new to read, the last seq, creating) cost the same
    in a journal of 1 rollout and of 400 (before the rollouts table, they scanned every record)."""
    small, big = SQLiteStore(tmp_path / "small.sqlite"), SQLiteStore(tmp_path / "big.sqlite")
    small.append("r0000", 0, [entry("created", None), entry()])
    for i in range(400):
        big.append(f"r{i:04}", 0, [entry("created", None), entry()])
    for name, call in {
        "read, nothing new": lambda s: s.read("r0000", after=2),
        "last_seq": lambda s: s.last_seq("r0000"),
        "append to a rollout": lambda s: s.append("r0000", 2, [entry("succeed")]),
        "append a new rollout": lambda s: s.append("zz-new", 0, [entry("created", None)], summary={"a": 1}),
        "unknown rollout": lambda s: refused(lambda: s.read("nope", after=3)),
    }.items():
        one, many = vm_steps(small, lambda c=call: c(small)), vm_steps(big, lambda c=call: c(big))
        assert many <= one * 1.5 + 20, (name, one, many)


def page_size(path: Path) -> int:
    size = int.from_bytes(path.read_bytes()[16:18], "big")
    return 65536 if size == 1 else size


def damage_page_holding(path: Path, marker: bytes) -> None:
    """Overwrite with 0xff the whole page of ``path`` that holds ``marker`` (never the first page)."""
    data = bytearray(path.read_bytes())
    at = data.find(marker)
    assert at > 0, "marker not in the file"
    size = page_size(path)
    start = at // size * size
    assert start > 0
    data[start:start + size] = b"\xff" * size
    path.write_bytes(bytes(data))


def filled_journal(path: Path) -> None:
    store = SQLiteStore(path)
    for i in range(300):
        store.append(f"r{i:03}", 0, [entry("created", None, filler=f"{'x' * 300}r{i:03}/1")],
                     summary={"status": "created"})
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def test_damage_found_in_use_is_journal_corrupt_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    filled_journal(path)
    damage_page_holding(path, b"r150/1")
    before = path.read_bytes()
    store = SQLiteStore(path)  # opening looks at the first pages only
    assert store.read("r000")[0].step is None
    with pytest.raises(JournalCorrupt, match=rf"{path} is damaged \(.*malformed.*\); it was not changed"):
        store.read_all()
    with pytest.raises(JournalCorrupt, match="check-store"):
        store.read("r150")
    with pytest.raises(JournalCorrupt, match="it was not changed"):
        store.append("r150", 1, [entry()], summary={"status": "running"})
    assert store.last_seq("r150") == 1
    problems = store.check()
    assert problems[0].startswith("SQLite integrity check: ")
    assert any("malformed" in p for p in problems)
    store.close()
    assert path.read_bytes() == before


def test_check_finds_nothing_in_a_healthy_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    filled_journal(path)
    store = SQLiteStore(path)
    store.append("r001", 1, [entry(), entry("succeed")])
    assert store.check() == []


def tamper(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def test_check_finds_our_own_inconsistencies(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    for rollout_id in ("gap", "first", "behind", "ghost", "unlisted", "badjson", "badsummary", "fine"):
        store.append(rollout_id, 0, [entry("created", None), entry(), entry("succeed")],
                     summary={"status": "running"})
    store.close()
    tamper(path,
           "DELETE FROM records WHERE rollout_id = 'gap' AND seq = 2",
           "DELETE FROM records WHERE rollout_id = 'first' AND seq = 1",
           "UPDATE rollouts SET last_seq = 2 WHERE rollout_id = 'behind'",
           "DELETE FROM records WHERE rollout_id = 'ghost'",
           "DELETE FROM rollouts WHERE rollout_id = 'unlisted'",
           "UPDATE records SET data = '{not json' WHERE rollout_id = 'badjson' AND seq = 3",
           "UPDATE rollouts SET summary = '[1, 2]' WHERE rollout_id = 'badsummary'")
    problems = SQLiteStore(path).check()
    assert problems == [
        "rollout first: record 1 is missing (2 records numbered 2 to 3)",
        "rollout gap: record 2 is missing (2 records numbered 1 to 3)",
        "rollout behind is listed with last record 2, its last record is 3",
        "rollout ghost is listed (last record 3) but has no records",
        "rollout unlisted has records (up to 3) but is not in the rollouts table",
        "rollout behind: its summary describes record 3, its last record is 2",
        "rollout badjson: record 3's data is not a JSON object",
        "rollout badsummary: its summary is not a JSON object",
    ]


def test_check_lists_at_most_a_hundred_problems_of_a_kind(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    store = SQLiteStore(path)
    for i in range(130):
        store.append(f"r{i:03}", 0, [entry("created", None)])
    store.close()
    tamper(path, "UPDATE records SET data = 'nope'")
    problems = SQLiteStore(path).check()
    assert len(problems) == 101
    assert problems[-1] == "... and 30 more records or summaries that are not JSON objects"


def test_a_damaged_summary_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    SQLiteStore(path).append("r1", 0, [entry("created", None)], summary={"status": "created"})
    tamper(path, "UPDATE rollouts SET summary = '{cut'")
    with pytest.raises(JournalCorrupt, match="summary of rollout r1 is damaged"):
        SQLiteStore(path).summaries()


def test_a_journal_missing_its_rollouts_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    SQLiteStore(path).append("r1", 0, [entry("created", None)])
    tamper(path, "DROP TABLE rollouts")
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match="schema 3 without table rollouts"):
        SQLiteStore(path)
    assert path.read_bytes() == before

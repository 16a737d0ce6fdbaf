"""The journal stores: appends, conflicts, damaged and foreign files, the runner lock."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploystate.journal import (
    Entry,
    JournalConflict,
    JournalCorrupt,
    JournalError,
    MemoryStore,
    RolloutBusy,
    UnknownRollout,
)
from deploystate.ports import Store
from deploystate.sqlite_store import SQLiteStore


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

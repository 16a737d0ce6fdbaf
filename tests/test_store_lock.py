"""The runner lock belongs to the journal file, whatever path each process took to it.

Every test runs the holder and the contenders as real processes (the lock is the kernel's, per
open file, and must be released when its holder dies).  A process here is a small script around
``SQLiteStore``: it opens the journal through the path it is given, from the folder it is given,
and says what happened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploystate.journal import Entry, JournalError
from deploystate.sqlite_store import SQLiteStore

RID = "13.10.202103011220"
BUSY = (f"RolloutBusy: rollout {RID} is being run by another process; nothing was done. Wait for it "
        "to stop, or check it with 'deploystate status'")

# Holds RID through argv[1] (relative to its cwd), says "held", then waits for a line on stdin
# (or to be killed), then lets go and says which rollouts it sees.
HOLDER = textwrap.dedent("""
    import sys
    from deploystate.sqlite_store import SQLiteStore
    store = SQLiteStore(sys.argv[1])
    with store.hold(sys.argv[2]):
        print("held", flush=True)
        sys.stdin.readline()
""")

# Tries to hold argv[2] through argv[1]: prints "held" or the error it got, in one line.
CONTENDER = textwrap.dedent("""
    import sys
    from deploystate.journal import JournalError
    from deploystate.sqlite_store import SQLiteStore
    try:
        with SQLiteStore(sys.argv[1]) as store, store.hold(sys.argv[2]):
            print("held")
    except JournalError as error:
        print(f"{type(error).__name__}: {error}")
""")


def contend(path: str | Path, cwd: Path, rollout_id: str = RID) -> str:
    done = subprocess.run([sys.executable, "-c", CONTENDER, str(path), rollout_id], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.strip()


@contextlib.contextmanager
def holder(path: str, cwd: Path, rollout_id: str = RID) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, path, rollout_id], cwd=cwd, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held", \
            process.communicate()[1]
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "x"
    with SQLiteStore(path) as store:
        store.append(RID, 0, [Entry("created", 1.0, "tester", None, {})])
    return path


def test_a_rollout_held_through_one_path_is_refused_through_every_other(journal: Path) -> None:
    folder = journal.parent
    other = folder / "other"
    other.mkdir()
    (other / "link").symlink_to("../x")
    (other / "link-to-link").symlink_to("link")
    (folder / "absolute-link").symlink_to(journal)
    ways = {"./x": folder, str(journal): other, "../x": other, "other/../x": folder, "link": other,
            "other/link-to-link": folder, "absolute-link": folder}
    with holder("x", cwd=folder) as held:
        for path, cwd in ways.items():
            assert contend(path, cwd) == BUSY, (path, cwd)
        # The lock is per rollout: another one in the same journal is free, through any path.
        assert contend("other/link", folder, "13.10.202103021340") == "held"
        held.kill()  # SIGKILL: the kernel lets go of the lock with the process
        held.wait()
        assert contend("link", other) == "held"
    assert sorted(p.name for p in folder.iterdir()) == ["absolute-link", "other", "x"]  # no x.locks


def test_a_stale_lock_folder_of_an_older_deploystate_bothers_nobody(journal: Path) -> None:
    # Older versions flocked x.locks/<rollout>.lock: one still held (as by an old runner left
    # behind) and a lock folder that cannot be used are both ignored.
    locks = journal.with_name("x.locks")
    locks.mkdir()
    with open(locks / f"{RID}.lock", "w") as old:
        fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (locks / "13.10.202103021340.lock").mkdir()
        assert contend("x", journal.parent) == "held"
        assert contend("x", journal.parent, "13.10.202103021340") == "held"
    locks.joinpath(f"{RID}.lock").unlink()
    locks.joinpath("13.10.202103021340.lock").rmdir()
    locks.rmdir()
    locks.write_text("not a folder")
    assert contend("x", journal.parent) == "held"


def test_two_stores_of_one_process_exclude_each_other_too(journal: Path) -> None:
    (journal.parent / "link").symlink_to("x")
    first, second = SQLiteStore(journal), SQLiteStore(journal.parent / "link")
    try:
        with first.hold(RID):
            with pytest.raises(JournalError, match="is being run by another process"), second.hold(RID):
                pass
            with pytest.raises(JournalError, match="is being run by another process"), first.hold(RID):
                pass
            SQLiteStore(journal).close()  # a third store coming and going changes nothing
            assert contend("link", journal.parent) == BUSY
        with second.hold(RID):
            assert contend("x", journal.parent) == BUSY
        assert contend("x", journal.parent) == "held"
    finally:
        first.close()
        second.close()


# A runner's store, then another store of the same process opened and closed (a status read
# by the same program, say); then the runner appends.  Closing that store's file must not drop
# the runner's SQLite locks: else the next process to close the journal believes it is the
# last, folds the write-ahead log into the file and deletes it, and what the runner appends
# after that goes to a deleted log that nobody else sees.
APPENDER = textwrap.dedent("""
    import sys
    from deploystate.journal import Entry
    from deploystate.sqlite_store import SQLiteStore
    store = SQLiteStore("x")
    SQLiteStore("x").close()
    print("opened", flush=True)
    sys.stdin.readline()
    store.append("13.10.202103021340", 0, [Entry("created", 2.0, "runner", None, {})])
    print("appended", flush=True)
    sys.stdin.readline()
""")


def rollouts_seen_by_another_process(journal: Path) -> list[str]:
    code = ("import json, sqlite3, sys; print(json.dumps(sorted(r[0] for r in sqlite3.connect(sys.argv[1])"
            ".execute('SELECT rollout_id FROM rollouts'))))")
    done = subprocess.run([sys.executable, "-c", code, str(journal)], capture_output=True, text=True,
                          timeout=60, check=True)
    return [str(name) for name in json.loads(done.stdout)]


def test_another_store_of_the_process_coming_and_going_loses_no_record(journal: Path) -> None:
    runner = subprocess.Popen([sys.executable, "-c", APPENDER], cwd=journal.parent, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert runner.stdin is not None and runner.stdout is not None
    try:
        assert runner.stdout.readline().strip() == "opened", runner.communicate()[1]
        assert rollouts_seen_by_another_process(journal) == [RID]  # that process came and went
        runner.stdin.write("\n")
        runner.stdin.flush()
        assert runner.stdout.readline().strip() == "appended", runner.communicate()[1]
        assert rollouts_seen_by_another_process(journal) == [RID, "13.10.202103021340"]
        runner.stdin.write("\n")
        runner.stdin.flush()
        assert runner.wait(60) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.communicate()


# Opens x, appends, and keeps it open (its records are still in x-wal, as a runner's are).
KEEPER = textwrap.dedent("""
    import sys
    from deploystate.journal import Entry
    from deploystate.sqlite_store import SQLiteStore
    store = SQLiteStore("x")
    store.append("13.10.202103021340", 0, [Entry("created", 2.0, "runner", None, {})])
    print("appended", flush=True)
    sys.stdin.readline()
""")

# Opens argv[1] and says what it sees.
LOOKER = textwrap.dedent("""
    import sys
    from deploystate.journal import JournalError
    from deploystate.sqlite_store import SQLiteStore
    try:
        with SQLiteStore(sys.argv[1]) as store:
            print(sorted(store.rollouts()))
    except JournalError as error:
        print(f"{type(error).__name__}: {error}")
""")


def look(path: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", LOOKER, path], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.strip()


def test_a_journal_with_a_second_name_is_refused_through_both(journal: Path) -> None:
    """SQLite keeps the write-ahead log beside the name it opened: through a hard link, another
    process saw an empty journal (and would have started the same rollouts again in a log of its
    own), so a journal with two names is refused whatever name is used."""
    folder = journal.parent
    keeper = subprocess.Popen([sys.executable, "-c", KEEPER], cwd=folder, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert keeper.stdin is not None and keeper.stdout is not None
    try:
        assert keeper.stdout.readline().strip() == "appended", keeper.communicate()[1]
        os.link(journal, folder / "y")
        for name in ("y", "x"):
            assert look(name, folder) == (
                f"JournalError: journal {name} has 2 names (hard links); SQLite keeps a journal's "
                "write-ahead log beside the name it is opened by, so each name would be a journal of "
                "its own; nothing was done. Keep one name (remove the other hard links; a symbolic "
                "link is fine)")
            assert contend(name, folder) == look(name, folder)
        (folder / "y").unlink()
        assert look("x", folder) == str(sorted(["13.10.202103021340", RID]))
        keeper.stdin.write("\n")
        keeper.stdin.flush()
        assert keeper.wait(60) == 0
    finally:
        if keeper.poll() is None:
            keeper.kill()
        keeper.communicate()
    assert sorted(p.name for p in folder.iterdir()) == ["x"]


def test_a_platform_without_open_file_locks_is_refused_clearly(journal: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(fcntl, "F_OFD_SETLK", raising=False)
    with SQLiteStore(journal) as store:
        with pytest.raises(JournalError, match=r"^cannot hold rollout .* needs open file description "
                                               r"locks \(fcntl F_OFD_SETLK, Linux 3\.15 or later\)"), \
                store.hold(RID):
            pass
        assert store.rollouts() == [RID]  # reading needs no lock


def test_the_lock_is_not_one_of_sqlites(journal: Path) -> None:
    """The runner's lock bytes lie far past SQLite's own (at 1 GiB) and past any journal's end."""
    with SQLiteStore(journal) as store, store.hold(RID):
        db = sqlite3.connect(journal, timeout=0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")  # SQLite's write lock, taken by another connection
            db.execute("ROLLBACK")
        finally:
            db.close()
        assert store.rollouts() == [RID]

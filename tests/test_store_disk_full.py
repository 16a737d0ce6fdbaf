"""A full disk during an append: one clear line, nothing written, and the journal goes on afterwards.

For real where root can mount a small tmpfs (here and on CI; elsewhere that test skips, except on CI
where it fails); everywhere with SQLite's own page limit, which makes SQLite report SQLITE_FULL
exactly as a full disk does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploystate.journal import Entry, JournalError
from deploystate.sqlite_store import SQLiteStore

RID = "13.10.202103011220"


def entry(size: int = 0) -> Entry:
    return Entry("start", 2.0, "runner", "tag", {"filler": "x" * size})


def full(path: Path) -> str:
    return f"the disk holding {path} is full; nothing was written for this step; free space and run again"


def seen_by_another_process(path: Path) -> int:
    code = ("import sys; from deploystate.sqlite_store import SQLiteStore; "
            "print(SQLiteStore(sys.argv[1]).last_seq(sys.argv[2]))")
    done = subprocess.run([sys.executable, "-c", code, str(path), RID], capture_output=True, text=True,
                          timeout=60, check=True)
    return int(done.stdout)


def test_a_full_journal_is_said_full_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with SQLiteStore(path) as store:
        store.append(RID, 0, [Entry("created", 1.0, "tester", None, {})], summary={"status": "created"})
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's SQLITE_FULL, for real
        with pytest.raises(JournalError) as raised:
            store.append(RID, 1, [entry(size=200_000)], summary={"status": "running"})
        assert str(raised.value) == full(path)
        assert store.last_seq(RID) == 1 and seen_by_another_process(path) == 1
        store._db.execute("PRAGMA max_page_count = 1073741823")
        assert [r.seq for r in store.append(RID, 1, [entry(size=200_000)])] == [2]
    assert seen_by_another_process(path) == 2


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[None]:
    if os.geteuid() != 0:
        reason = "only root can mount a small disk"
    else:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True, check=False)
        reason = mounted.stderr.strip()
    if os.geteuid() != 0 or mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs ({reason}); CI must run this test")
        pytest.skip(f"cannot mount a tmpfs: {reason}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def test_a_full_disk_during_an_append(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    with small_disk(disk, "512k"):
        path = disk / "journal.sqlite"
        with SQLiteStore(path) as store:
            store.append(RID, 0, [Entry("created", 1.0, "tester", None, {})], summary={"status": "created"})
            fill(disk / "filler")
            with pytest.raises(JournalError) as raised:
                store.append(RID, 1, [entry(size=50_000)], summary={"status": "running"})
            assert str(raised.value) == full(path)
            assert store.last_seq(RID) == 1 and seen_by_another_process(path) == 1
            (disk / "filler").unlink()
            assert [r.seq for r in store.append(RID, 1, [entry(size=50_000)])] == [2]
        assert seen_by_another_process(path) == 2

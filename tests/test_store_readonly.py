"""A journal that cannot be written: it is said to be read-only (never "damaged"), reads still work.

The kernel's permission checks must really apply, and root (which runs these tests here and on CI)
bypasses them.  So every check runs in a child process that is denied the bypass: as root, the
child starts without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER (dropped from its
capability bounding set before it runs Python), so it is held to the file modes like any user
(it still owns the files, and reads the source tree as root).  Any other user needs nothing.
A probe proves the denial works before a test relies on it; without it the tests skip, except on
CI (``CI`` set), where they fail.

A read-only mount is checked too, where this machine lets root mount (it does here and on CI).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

RID = "13.10.202103011220"
OTHER = "13.10.202103021340"
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
ON_CI = bool(os.environ.get("CI"))
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC")


def skip_or_fail(why: str) -> None:
    if ON_CI:
        pytest.fail(f"{why}; CI must run this test")
    pytest.skip(why)


def _drop_overrides() -> None:  # in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def as_a_user(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Runs ``[python, *args]`` in a process held to file permissions."""
    preexec = _drop_overrides if os.geteuid() == 0 else None
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120, check=False, preexec_fn=preexec)

    probe = tmp_path_factory.mktemp("probe") / "read-only"
    probe.write_text("")
    probe.chmod(0o444)
    try:
        tried = run("-c", "import sys; open(sys.argv[1], 'a')", str(probe), cwd=probe.parent)
    except OSError as error:
        skip_or_fail(f"cannot start a process without root's permission bypass: {error}")
    if "PermissionError" not in tried.stderr:
        skip_or_fail("a child process could still write a read-only file: cannot test read-only journals "
                     f"here ({tried.stderr.strip() or 'it wrote'})")
    return run


# Opens the journal, reads it every way, then tries to write it (append, hold): one JSON line.
USER = textwrap.dedent("""
    import json, sys
    from deploystate.journal import Entry, JournalError
    from deploystate.sqlite_store import SQLiteStore
    seen = {}
    try:
        store = SQLiteStore(sys.argv[1])
    except JournalError as error:
        print(json.dumps({"open": f"{type(error).__name__}: {error}"}))
        raise SystemExit(0)
    seen["rollouts"] = sorted(store.rollouts())
    seen["actions"] = [r.action for r in store.read(sys.argv[2])]
    seen["summaries"] = {k: s is not None and s.seq == last for k, (last, s) in store.summaries().items()}
    seen["all"] = {k: len(v) for k, v in store.read_all().items()}
    try:
        store.append(sys.argv[2], store.last_seq(sys.argv[2]), [Entry("abort", 1.0, "user", None, {})])
        seen["append"] = "written"
    except JournalError as error:
        seen["append"] = f"{type(error).__name__}: {error}"
    try:
        with store.hold(sys.argv[2]):
            seen["hold"] = "held"
    except JournalError as error:
        seen["hold"] = f"{type(error).__name__}: {error}"
    store.close()
    print(json.dumps(seen))
""")


def use(run: Run, path: Path) -> dict[str, object]:
    done = run("-c", USER, str(path), RID, cwd=path.parent)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return dict(json.loads(done.stdout))


def make_journal(path: Path, *, killed: bool = False) -> None:
    """A journal holding RID, made by ``deploystate start``.  With ``killed``, then OTHER, by a
    process killed before it closed the journal: OTHER is only in the -wal file it left."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    subprocess.run([sys.executable, "-m", "deploystate", "start", RID, "--store", str(path)], env=env,
                   cwd=path.parent, check=True, capture_output=True)
    if killed:
        code = textwrap.dedent("""
            import os, signal, sys
            from deploystate.cli import main
            from deploystate.sqlite_store import SQLiteStore
            kept = SQLiteStore(sys.argv[1])  # open until killed: the command's close folds nothing
            assert main(["start", sys.argv[2], "--store", sys.argv[1]]) == 0
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        done = subprocess.run([sys.executable, "-c", code, str(path), OTHER], env=env, cwd=path.parent,
                              check=False, capture_output=True)
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert path.with_name(path.name + "-wal").stat().st_size > 0


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@contextlib.contextmanager
def modes(*changes: tuple[Path, int]) -> Iterator[None]:
    before = [(path, path.stat().st_mode & 0o7777) for path, _ in changes]
    for path, mode in changes:
        path.chmod(mode)
    try:
        yield
    finally:
        for path, mode in reversed(before):
            path.chmod(mode)


def read_only(path: Path, why: str) -> str:
    return (f"JournalReadOnly: journal {path} is read-only ({why}); nothing was written. Make it "
            f"writable (chmod u+w {path} and its folder) or point --store at a writable copy")


@pytest.mark.parametrize("case", ["file", "folder", "file and folder", "file, after a killed runner"])
def test_a_read_only_journal_is_read_and_said_read_only(as_a_user: Run, tmp_path: Path, case: str) -> None:
    folder = tmp_path / "journals"
    folder.mkdir()
    path = folder / "journal.sqlite"
    killed = case.endswith("killed runner")
    make_journal(path, killed=killed)
    left = sorted(folder.glob("journal.sqlite-*"))  # the killed runner's -wal and -shm
    changes = [(p, 0o444) for p in [path, *left] if case.startswith("file")]
    changes += [(folder, 0o555)] if "folder" in case else []
    before = files(folder)
    with modes(*changes):
        seen = use(as_a_user, path)
        why = "permission denied" if case.startswith("file") else (
            f"permission denied on its folder {folder}, where SQLite keeps the journal's write-ahead log")
        every = [RID, OTHER] if killed else [RID]
        assert seen == {
            "rollouts": every,
            "actions": ["created"],
            "summaries": dict.fromkeys(every, True),
            "all": dict.fromkeys(every, 1),
            "append": read_only(path, why),
            "hold": read_only(path, why),
        }
        for command in (["status"], ["status", every[-1]], ["history", every[-1]]):
            shown = as_a_user("-m", "deploystate", *command, "--store", str(path), cwd=tmp_path)
            assert shown.returncode == 0 and every[-1] in shown.stdout and not shown.stderr, shown.stderr
    after = files(folder)
    # Nothing written: a reader in a writable folder may leave SQLite's -wal and -shm there.
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) <= {"journal.sqlite-wal", "journal.sqlite-shm"}
    if "journal.sqlite-wal" not in before:
        assert after.get("journal.sqlite-wal", b"") == b""


def test_a_journal_is_not_created_in_a_read_only_folder(as_a_user: Run, tmp_path: Path) -> None:
    folder = tmp_path / "journals"
    folder.mkdir()
    path = folder / "journal.sqlite"
    with modes((folder, 0o555)):
        assert use(as_a_user, path) == {"open": (
            f"JournalReadOnly: cannot create journal {path}: its folder {folder} is read-only "
            f"(permission denied); nothing was written. Make the folder writable (chmod u+w {folder}) or "
            "point --store at a writable folder")}
    assert list(folder.iterdir()) == []


def test_a_journal_that_cannot_be_read_says_so(as_a_user: Run, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    make_journal(path)
    before = path.read_bytes()
    with modes((path, 0o200)):
        assert use(as_a_user, path) == {"open": (
            f"JournalError: cannot read journal {path} (permission denied); it was not changed. Make it "
            f"readable (chmod u+rw {path}) or point --store at another file")}
    assert path.read_bytes() == before


@contextlib.contextmanager
def read_only_mount(folder: Path) -> Iterator[None]:
    """``folder`` mounted over itself, read-only (root only)."""
    if os.geteuid() != 0:
        skip_or_fail("only root can mount a read-only file system")
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True,
                           check=False)
    if bound.returncode != 0:
        skip_or_fail(f"cannot bind-mount: {bound.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_journal_on_a_read_only_file_system(tmp_path: Path) -> None:
    folder = tmp_path / "journals"
    folder.mkdir()
    path = folder / "journal.sqlite"
    make_journal(path)
    before = files(folder)
    with read_only_mount(folder):
        # Root, with every privilege: only the file system refuses.
        done = subprocess.run([sys.executable, "-c", USER, str(path), RID], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0 and not done.stderr, done.stderr
        refused = (f"JournalReadOnly: journal {path} is read-only (its file system is mounted read-only); "
                   "nothing was written. Remount it read-write or point --store at a writable copy")
        assert json.loads(done.stdout) == {"rollouts": [RID], "actions": ["created"],
                                           "summaries": {RID: True}, "all": {RID: 1},
                                           "append": refused, "hold": refused}
    assert files(folder) == before


def test_a_read_only_journal_of_schema_1_is_read_as_it_is(as_a_user: Run, tmp_path: Path) -> None:
    """An old journal (schema 1: records only) cannot be upgraded when read-only: read it anyway."""
    import sqlite3

    from test_journal import V1_SCHEMA

    from deploystate.sqlite_store import APPLICATION_ID

    made = tmp_path / "made" / "journal.sqlite"
    made.parent.mkdir()
    make_journal(made)
    folder = tmp_path / "old"
    folder.mkdir()
    path = folder / "journal.sqlite"
    new, old = sqlite3.connect(made), sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")  # as the old code made its journals
    old.executescript(V1_SCHEMA)
    old.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                    new.execute("SELECT rollout_id, seq, action, at, actor, step, data FROM records"))
    old.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    old.execute("PRAGMA user_version = 1")
    old.commit()
    new.close()
    old.close()  # the last connection: its -wal is folded in and removed
    before = files(folder)
    with modes((path, 0o444), (folder, 0o555)):
        seen = use(as_a_user, path)
    assert "open" not in seen, seen
    assert seen["rollouts"] == [RID] and seen["actions"] == ["created"]
    assert seen["summaries"] == {RID: False}  # none kept: a listing rebuilds it
    assert str(seen["append"]).startswith(f"JournalReadOnly: journal {path} is read-only")
    assert files(folder) == before  # not upgraded, not changed

"""Exit codes: 0 done, 1 stopped short (a person is needed), 2 bad input or refused, 3 internal error,
130 interrupted; every failure is one line on stderr, a traceback only with ``--debug``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploystate import cli
from deploystate.cli import EXIT_INTERNAL, EXIT_INTERRUPTED, main
from deploystate.spec import Spec, Step, StepKind

INTERNAL = ("deploystate: internal error: RuntimeError: the renderer broke (run again with --debug for "
            "the traceback; please report it)")


def _dev_full(function: Any) -> Any:
    """A test writing to Linux's /dev/full: skipped elsewhere, but CI (Linux) must run it."""
    if os.path.exists("/dev/full") or os.environ.get("CI"):
        return function
    return pytest.mark.skip(reason="needs Linux's /dev/full")(function)


NEEDS_DEV_FULL = _dev_full


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def _broken_render(error: BaseException):  # type: ignore[no-untyped-def]
    def render(*args: object, **kwargs: object) -> str:
        raise error
    return render


def test_the_codes_are_distinct() -> None:
    codes = (cli.EXIT_OK, cli.EXIT_STOPPED, cli.EXIT_USER_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED)
    assert codes == (0, 1, 2, 3, 130)


def test_an_internal_error_is_one_line_and_exit_3(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("deploystate.diagram.render", _broken_render(RuntimeError("the renderer broke")))
    assert main(["diagram"]) == EXIT_INTERNAL
    captured = capsys.readouterr()
    assert captured.err == INTERNAL + "\n"
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback(where: str, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("deploystate.diagram.render", _broken_render(RuntimeError("the renderer broke")))
    argv = ["--debug", "diagram"] if where == "before" else ["diagram", "--debug"]
    assert main(argv) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "RuntimeError: the renderer broke" in err
    assert err.rstrip("\n").splitlines()[-1] == INTERNAL.replace(" (run again with --debug for the "
                                                                  "traceback; please report it)",
                                                                  " (please report it)")


def test_debug_shows_where_a_refusal_came_from(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "diagram", "--spec", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback")
    assert err.splitlines()[-1].startswith("deploystate: error: no built-in spec")


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("deploystate.diagram.render", _broken_render(KeyboardInterrupt()))
    assert main(["diagram"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "deploystate: interrupted\n"


def test_ctrl_c_in_a_real_process(tmp_path: Path) -> None:
    # The stand-in serves until interrupted: SIGINT once it has said it listens.
    process = subprocess.Popen([sys.executable, "-m", "deploystate", "sim-gitlab", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert process.stdout is not None
        assert "GitLab stand-in on" in process.stdout.readline()
        process.send_signal(2)
        _out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert "Traceback" not in err
    assert process.returncode in (0, EXIT_INTERRUPTED), err


def test_an_os_error_on_a_users_path_is_exit_2(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def full(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device", "/data/journal.sqlite.log")
    monkeypatch.setattr("deploystate.diagram.render", full)
    assert main(["diagram"]) == 2
    assert capsys.readouterr().err == ("deploystate: error: /data/journal.sqlite.log: No space left on "
                                       "device (ENOSPC)\n")


def test_an_os_error_of_no_path_of_ours_is_internal(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("deploystate.diagram.render", _broken_render(OSError(71, "Protocol error")))
    assert main(["diagram"]) == EXIT_INTERNAL
    assert capsys.readouterr().err == ("deploystate: internal error: OSError: [Errno 71] Protocol error (run "
                                       "again with --debug for the traceback; please report it)\n")


@NEEDS_DEV_FULL
def test_a_full_disk_under_stdout_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "deploystate", "diagram", "--detail"], stdout=full,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "deploystate: error: cannot write the output: No space left on device (ENOSPC)\n"


def test_sim_gitlab_with_a_port_out_of_range_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim-gitlab", "--port", "99999"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and code == 2
    assert err.splitlines()[-1] == ("deploystate sim-gitlab: error: argument --port: 99999 is not a port; "
                                    "give 0 to 65535 (0 picks a free one)")


def test_sim_gitlab_refuses_a_busy_port_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["sim-gitlab", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), err
    assert "Traceback" not in err


def chain(length: int) -> Spec:
    # Listed last step first: each step's needs lead all the way back.
    steps = [Step(f"s{i}", StepKind.TAG, needs=(f"s{i - 1}",) if i else ()) for i in range(length)]
    return Spec(name="chain", steps=tuple(reversed(steps)))


def test_a_long_chain_draws_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ['name = "chain"']
    for i in reversed(range(1200)):
        lines += ["[[steps]]", f'name = "s{i}"', 'kind = "tag"'] + ([f'needs = ["s{i - 1}"]'] if i else [])
    spec = tmp_path / "chain.toml"
    spec.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(["diagram", "--spec", str(spec)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert code == 2
    assert captured.err == (f"deploystate: error: {spec}: spec 'chain' has 1200 steps; a spec may have at "
                            "most 500\n")


@NEEDS_DEV_FULL
def test_a_full_disk_under_the_structured_log_is_one_warning_and_the_rollout_goes_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "journal.sqlite"
    (tmp_path / "journal.sqlite.log").symlink_to("/dev/full")
    assert main(["simulate", "13.10.202103011220", "--store", str(store), "--json"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    warnings = [line for line in err.splitlines() if line.startswith("deploystate:")]
    assert warnings == [f"deploystate: warning: cannot write the structured log {store}.log: No space left "
                        "on device (ENOSPC); the journal still records everything, the log has stopped"]

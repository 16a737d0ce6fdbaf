"""Commands from other packages (entry-point group ``deploystate.commands``), and what commands import.

``sim-gitlab`` is the real one: the stand-in registers it, the core does not know it.  Import
checks run a fresh interpreter and look at its ``sys.modules`` after the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from deploystate import commands
from deploystate.cli import main

VERSION = "13.10.202103011220"
BACKENDS = "deploystate_backends"
STANDIN = "deploystate_backends.gitlab_standin"
# What only running a rollout, drawing, or reporting needs.
HEAVY = ("deploystate.runner", "deploystate.report", "deploystate.diagram", "deploystate.rollout",
         "deploystate.registry", "deploystate.sqlite_store", "deploystate.config")

# Runs main(argv) in this interpreter and writes the exit code and sys.modules to a file.
_PROBE = textwrap.dedent("""
    import json, sys
    out, argv, bare = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "bare"
    if bare:
        # The package without its __init__: what the command line itself imports.
        import importlib.util, types
        found = importlib.util.find_spec("deploystate")
        package = types.ModuleType("deploystate")
        package.__path__ = list(found.submodule_search_locations)
        sys.modules["deploystate"] = package
    if argv == ["--import-only"]:
        import deploystate
        code = 0
    else:
        from deploystate.cli import main
        code = main(argv)
    sys.stdout.flush()
    with open(out, "w") as file:
        json.dump({"code": code, "modules": sorted(sys.modules)}, file)
""")


def probe(tmp_path: Path, *argv: str, bare: bool = False) -> tuple[int, set[str], str]:
    out = tmp_path / "probe.json"
    done = subprocess.run([sys.executable, "-c", _PROBE, str(out), json.dumps(argv), "bare" if bare else "-"],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert out.exists(), done.stderr
    result = json.loads(out.read_text())
    return result["code"], set(result["modules"]), done.stdout


def loaded(modules: set[str], *names: str) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def ds(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploystate", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd)


# -- the real plugin: sim-gitlab ----------------------------------------------------------------


def test_sim_gitlab_is_listed_in_help_from_its_entry_point(tmp_path: Path) -> None:
    done = ds("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sim-gitlab" in done.stdout and "deploystate sim-gitlab --help" in done.stdout
    assert "sim-gitlab" in commands.installed()


def test_sim_gitlab_runs_its_own_parser(tmp_path: Path) -> None:
    helped = ds("sim-gitlab", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: deploystate sim-gitlab ")
    assert "--auto-deploy VERSION" in helped.stdout
    wrong = ds("sim-gitlab", "--script", "gprd", cwd=tmp_path)
    assert wrong.returncode == 2 and "--script must look like NAME=VALUE" in wrong.stderr


def test_the_stand_in_is_imported_only_when_its_command_runs(tmp_path: Path) -> None:
    code, modules, out = probe(tmp_path, "--help")
    assert code == 0 and "sim-gitlab" in out
    assert loaded(modules, BACKENDS) == []
    code, modules, out = probe(tmp_path, "sim-gitlab", "--help")
    assert code == 0 and out.startswith("usage: deploystate sim-gitlab")
    assert STANDIN in modules


# -- what --help and status import ---------------------------------------------------------------


def test_help_imports_no_backend_and_nothing_a_command_needs(tmp_path: Path) -> None:
    code, modules, _ = probe(tmp_path, "--help")
    assert code == 0
    assert loaded(modules, BACKENDS, *HEAVY) == []


def test_help_imports_no_transitions(tmp_path: Path) -> None:
    code, modules, _ = probe(tmp_path, "--help")
    assert code == 0
    assert loaded(modules, "transitions", "asyncio", "deploystate.machine") == []


def test_the_command_line_itself_imports_only_itself_for_help(tmp_path: Path) -> None:
    code, modules, out = probe(tmp_path, "--help", bare=True)
    assert code == 0 and "sim-gitlab" in out
    assert loaded(modules, "deploystate") == ["deploystate", "deploystate.cli", "deploystate.commands",
                                              "deploystate.errors", "deploystate.terminal"]
    assert loaded(modules, "transitions", "asyncio", "attr", "attrs", BACKENDS) == []


def test_status_of_a_rollout_opens_no_backend_and_draws_nothing(tmp_path: Path) -> None:
    store = tmp_path / "journal.sqlite"
    made = ds("simulate", VERSION, "--store", str(store), "--json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    code, modules, out = probe(tmp_path, "status", VERSION, "--store", str(store))
    assert code == 0 and out.startswith(f"rollout {VERSION}: done")
    assert loaded(modules, BACKENDS, "deploystate.registry", "deploystate.runner", "deploystate.diagram",
                  "deploystate.commands", "deploystate.notices") == []


# -- the group's contract, with a command made here ------------------------------------------------

_PLUGIN = textwrap.dedent("""
    from deploystate.errors import DeploystateError

    def hello(argv, prog):
        print(prog, argv)
        return 3

    def refuse(argv, prog):
        raise DeploystateError("refused by the plugin")

    def quiet(argv, prog):
        return None

    NOT_A_FUNCTION = 42
""")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ds_plugin_probe.py").write_text(_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ds_plugin_probe", raising=False)
    made = [EntryPoint(name, value, commands.GROUP) for name, value in (
        ("hello", "ds_plugin_probe:hello"), ("refuse", "ds_plugin_probe:refuse"),
        ("quiet", "ds_plugin_probe:quiet"), ("number", "ds_plugin_probe:NOT_A_FUNCTION"),
        ("missing", "ds_no_such_module:main"), ("status", "ds_plugin_probe:hello"))]

    def entry_points(**selection: Any) -> list[EntryPoint]:
        return made if selection == {"group": commands.GROUP} else []

    monkeypatch.setattr(commands, "entry_points", entry_points)


@pytest.mark.usefixtures("plugins")
def test_installed_commands_are_listed_and_run_with_the_rest_of_the_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert "hello" in listed and "an installed command; see `deploystate hello --help`" in listed
    assert main(["hello", "a", "--b", "--help"]) == 3
    assert capsys.readouterr().out == "deploystate hello ['a', '--b', '--help']\n"
    assert main(["quiet"]) == 0


@pytest.mark.usefixtures("plugins")
def test_a_core_name_stays_the_cores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "no journal at" in capsys.readouterr().err


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize(("name", "fragment"), [
    ("refuse", "refused by the plugin"),
    ("missing", "command 'missing' cannot be loaded"),
    ("number", "is not a function"),
])
def test_plugin_errors_are_one_line(name: str, fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("deploystate: error: ") and fragment in err[0]


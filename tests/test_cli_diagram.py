"""`deploystate diagram`, run for real (a subprocess) and in-process through main()."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from deploystate.cli import main
from deploystate.diagram import committed_diagrams, render
from deploystate.machine import RolloutMachine
from deploystate.spec import builtin_spec, load_spec

CUSTOM_SPEC = """\
name = "tiny"
description = "build, then dev and qa side by side, then prod"

[[steps]]
name = "build"
kind = "tag"

[[steps]]
name = "deploy_dev"
kind = "deployment"
environment = "dev"
needs = ["build"]

[[steps]]
name = "deploy_qa"
kind = "deployment"
environment = "qa"
needs = ["build"]

[[steps]]
name = "deploy_prod"
kind = "deployment"
environment = "prod"
needs = ["deploy_dev", "deploy_qa"]
"""

BAD_SPEC = CUSTOM_SPEC.replace('needs = ["deploy_dev", "deploy_qa"]', 'needs = ["deploy_stage"]')


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploystate", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd)


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("deploystate: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def custom_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CUSTOM_SPEC, encoding="utf-8")
    return path


# -- the real entry point, as a subprocess -----------------------------------------------------------


def test_default_output_is_the_seeds_mermaid_diagram() -> None:
    done = run("diagram")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == render(RolloutMachine(builtin_spec("seed")))
    assert "stateDiagram-v2" in done.stdout.splitlines()


def test_dot_format_for_a_builtin_spec() -> None:
    done = run("diagram", "--format", "dot", "--spec", "reordered")
    assert done.returncode == 0, done.stderr
    assert done.stdout == render(RolloutMachine(builtin_spec("reordered")), "dot")
    if shutil.which("dot"):
        parsed = subprocess.run(["dot", "-Tsvg"], input=done.stdout, capture_output=True, text=True,
                                check=False)
        assert parsed.returncode == 0, parsed.stderr


def test_spec_from_a_toml_file(custom_spec: Path) -> None:
    done = run("diagram", "--spec", str(custom_spec), "--detail")
    assert done.returncode == 0, done.stderr
    assert done.stdout == render(RolloutMachine(load_spec(custom_spec)), detail=True)
    assert "deploy_qa_Running" in done.stdout
    assert "trigger_gstg" not in done.stdout


def test_bad_spec_file_gives_exit_2_and_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_SPEC, encoding="utf-8")
    done = run("diagram", "--spec", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    assert_one_line_error(done.stderr, str(path), "deploy_prod", "deploy_stage")


def test_installed_console_script_runs_too() -> None:
    script = Path(sys.executable).parent / "deploystate"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}; the package is not installed there")
    done = subprocess.run([str(script), "diagram", "--spec", "nowhere"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "nowhere", "seed", "reordered")


def test_write_refreshes_the_committed_files(tmp_path: Path) -> None:
    target = tmp_path / "diagrams"
    done = run("diagram", "--write", str(target))
    assert done.returncode == 0, done.stderr
    expected = committed_diagrams()
    assert sorted(p.name for p in target.iterdir()) == sorted(expected)
    for name, content in expected.items():
        assert (target / name).read_bytes() == content
    assert f"wrote {target / 'seed.mmd'}" in done.stdout
    again = run("diagram", "--write", str(target))
    assert again.returncode == 0
    assert f"unchanged {target / 'seed.mmd'}" in again.stdout
    assert "wrote" not in again.stdout


# -- in-process main() -------------------------------------------------------------------------------


def test_main_prints_the_diagram(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--format", "dot", "--detail"]) == 0
    out, err = capsys.readouterr()
    assert out == render(RolloutMachine(builtin_spec("seed")), "dot", detail=True)
    assert err == ""


def test_main_with_a_toml_spec(custom_spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--spec", str(custom_spec)]) == 0
    out, _ = capsys.readouterr()
    assert out == render(RolloutMachine(load_spec(custom_spec)))


@pytest.mark.parametrize(("args", "fragments"), [
    (["diagram", "--spec", "sead"], ["'sead'", "seed, reordered"]),
    (["diagram", "--spec", "missing/spec.toml"], ["missing/spec.toml", "check the path"]),
    (["diagram", "--format", "svg"], ["--format", "mermaid", "dot"]),
    (["diagram", "--write", "out", "--spec", "seed"], ["--write", "--spec"]),
    (["diagrams"], ["diagrams"]),
    ([], ["COMMAND"]),
])
def test_main_reports_user_mistakes_in_one_line(args: list[str], fragments: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, *fragments)


def test_main_reports_an_unreadable_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = [\n", encoding="utf-8")
    assert main(["diagram", "--spec", str(path)]) == 2
    assert_one_line_error(capsys.readouterr().err, str(path), "TOML")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"deploystate {metadata.version('deploystate')}"


def test_write_without_graphviz_writes_text_and_says_why_no_svg(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no `dot` to be found
    target = tmp_path / "out"
    assert main(["diagram", "--write", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(committed_diagrams(svg=False))
    err = capsys.readouterr().err
    assert "Graphviz" in err and "--write diagrams" in err


def test_write_onto_a_file_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "diagrams"
    blocker.write_text("not a directory", encoding="utf-8")
    assert main(["diagram", "--write", str(blocker)]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot write diagrams", str(blocker))

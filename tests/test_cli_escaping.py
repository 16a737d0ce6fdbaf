"""User-given text (``--by``, ``--reason``, spec names, paths) is shown escaped wherever it is printed:
a line break or an escape code can neither forge a row nor reach the terminal.  The journal and
``--json`` keep it exactly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from deploystate import report
from deploystate.cli import main

VERSION = "13.10.202103011220"
# A name that would forge a history row, and a reason that would paint the terminal red and set
# its title.
FORGED_BY = "mallory\n99  2021-03-01 12:20:00 UTC  release-manager  promote"
PAINTED = "\x1b[31mall good\x1b]0;pwned\x07 \u202eevil"
CONTROL = set(map(chr, range(32))) - {"\n"} | {"\x7f", "\u202e"}


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def assert_clean(text: str) -> None:
    assert not CONTROL & set(text), [c for c in text if c in CONTROL]


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, with ünïcode", "plain text, with ünïcode"),
    ("a\nb", "a\\nb"),
    ("tab\there", "tab\\there"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("bell\x07", "bell\\x07"),
    ("\u202eevil", "\\u202eevil"),
    ("del\x7f", "del\\x7f"),
    ("surrogate \udcff", "surrogate \\udcff"),
    ("back\\slash", "back\\slash"),
])
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert report.printable(raw) == shown


def test_by_and_reason_are_escaped_in_text_and_exact_in_the_journal_and_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "journal.sqlite")
    assert main(["simulate", VERSION, "--store", store, "--no-auto-promote"]) == 1
    capsys.readouterr()
    assert main(["promote", VERSION, "--by", FORGED_BY, "--reason", PAINTED, "--store", store]) == 0
    out = capsys.readouterr().out
    assert_clean(out.replace("\n", ""))
    # The production checks' progress line, the promotion's, then what was done.
    lines = out.splitlines()
    assert lines[0].startswith("[+") and "production checks for the promotion: all" in lines[0]
    assert lines[1].startswith("[+") and "(promoted by mallory\\n99  2021-03-01" in lines[1]
    assert "\\x1b[31mall good" in lines[1]
    assert lines[2].startswith("promoted by mallory\\n99  2021-03-01")

    assert main(["run", VERSION, "--store", store]) == 0
    assert_clean(capsys.readouterr().out)

    assert main(["history", VERSION, "--store", store]) == 0
    history = capsys.readouterr().out
    assert_clean(history)
    with sqlite3.connect(store) as db:
        count = db.execute("SELECT count(*) FROM records").fetchone()[0]
    assert len(history.splitlines()) == count + 1  # no forged row
    assert not any(line.startswith("99 ") for line in history.splitlines())
    assert "mallory\\n99" in history and "\\u001b[31mall good" in history  # data values are JSON

    assert main(["history", VERSION, "--store", store, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    promoted = [r for r in records if r["actor"] == FORGED_BY and r["action"] == "succeed"]
    assert promoted and promoted[0]["data"]["reason"] == PAINTED

    assert main(["status", VERSION, "--store", store]) == 0
    status = capsys.readouterr().out
    assert_clean(status)
    assert "promoted by mallory\\n99" in status


def test_abort_reason_is_escaped_in_status_and_the_summary(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "journal.sqlite")
    assert main(["start", VERSION, "--store", store]) == 0
    capsys.readouterr()
    assert main(["abort", VERSION, "--reason", PAINTED, "--by", FORGED_BY, "--store", store]) == 0
    out = capsys.readouterr().out
    assert_clean(out.replace("\n", ""))
    lines = out.splitlines()  # the progress line of the abort, then what was done
    assert len(lines) == 2 and all("aborted by mallory\\n99" in line for line in lines)
    assert main(["status", VERSION, "--store", store]) == 0
    assert_clean(capsys.readouterr().out)
    assert main(["simulate", VERSION, "--store", store]) == 1
    summary = capsys.readouterr().out
    assert_clean(summary)
    assert "ABORTED (\\x1b[31mall good" in summary


def test_a_spec_name_with_a_line_break_is_escaped_in_diagrams_and_status(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "odd.toml"
    spec.write_text('name = "odd\\nstateDiagram-v2\\n    [*] --> forged\\u001b[2J"\n'
                    '[[steps]]\nname = "tag"\nkind = "tag"\n', encoding="utf-8")
    assert main(["diagram", "--spec", str(spec)]) == 0
    mermaid = capsys.readouterr().out
    assert_clean(mermaid)
    assert "forged" not in mermaid.split("\n", 1)[1]  # only in the (escaped) title line
    assert main(["diagram", "--spec", str(spec), "--format", "dot"]) == 0
    assert_clean(capsys.readouterr().out)

    store = str(tmp_path / "journal.sqlite")
    assert main(["simulate", VERSION, "--spec", str(spec), "--store", store]) == 0
    assert_clean(capsys.readouterr().out)
    assert main(["status", VERSION, "--store", store]) == 0
    status = capsys.readouterr().out
    assert_clean(status)
    assert "spec odd\\nstateDiagram-v2" in status
    assert main(["history", VERSION, "--store", store]) == 0
    assert_clean(capsys.readouterr().out)
    assert main(["status", VERSION, "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"].startswith("odd\nstateDiagram-v2")


def test_error_lines_escape_what_they_quote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "x\x1b[2J.sqlite")
    assert main(["status", "--store", store]) == 2
    err = capsys.readouterr().err
    assert_clean(err.rstrip("\n"))
    assert err.startswith("deploystate: error: no journal at ") and "x\\x1b[2J.sqlite" in err

"""Every journal record reaches the notifier: one JSON line per record in ``<journal>.log``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deploystate.sqlite_store import SQLiteStore

VERSION = "13.10.202103011220"


def test_each_record_is_one_structured_log_line_and_failures_are_errors(tmp_path: Path) -> None:
    store = tmp_path / "journal.sqlite"
    done = subprocess.run([sys.executable, "-m", "deploystate", "simulate", VERSION, "--store", str(store),
                           "--fail", "gprd"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "journal.sqlite.log").read_text().splitlines()]
    records = SQLiteStore(store).read(VERSION)
    assert [(line["action"], line["step"], line["at"]) for line in lines] == [
        (r.action, r.step, r.at) for r in records]
    failures = {line["step"]: line["severity"] for line in lines if line["action"] == "fail"}
    # The real path's failure is an error; a dry run's (check mode, not the real path) a warning.
    assert failures == {"trigger_complete_deployment": "error", "trigger_gprd": "warning"}

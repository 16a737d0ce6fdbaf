"""The gate from the command line, as a release manager follows the README: a promotion refused by
a simulated S1 incident, accepted with an override that `history` shows with who, why and until
when; an older version refused (superseded) in an environment; a lock; a rollback on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploystate.cli import main

OLD, NEW = "13.10.202103011500", "13.10.202103011600"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)  # no deploystate.toml of the caller's
    return str(tmp_path / "journal.sqlite")


def history(capsys: pytest.CaptureFixture[str], version: str, store: str) -> list[dict[str, object]]:
    code, out, _ = run(capsys, "history", version, "--store", store, "--json")
    assert code == 0
    return list(json.loads(out))


def test_a_simulated_incident_refuses_the_promotion_and_an_override_is_audited(
        store: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "simulate", NEW, "--store", store, "--check-fails", "active_incidents",
                       "--individual-deployments")
    assert code == 1  # stopped at the promotion: a person decides
    assert "production checks for the promotion refused: active_incidents failed" in out
    assert f"deploystate promote {NEW} --by YOU --override-checks REASON" in out

    code, out, err = run(capsys, "checks", NEW, "--store", store)
    assert code == 1 and "active_incidents" in out and "FAILED" in out

    code, out, err = run(capsys, "promote", NEW, "--by", "amy", "--store", store)
    assert code == 2
    assert "active_incidents   FAILED" in out and "environment_lock   passed" in out  # the table
    assert "was not promoted" in err and "--override-checks" in err

    code, out, err = run(capsys, "promote", NEW, "--by", "amy", "--override-checks", "S1 is elsewhere",
                         "--override-expires", "2h", "--store", store)
    assert code == 0, err
    assert "production checks OVERRIDDEN by amy" in out

    code, out, err = run(capsys, "run", NEW, "--store", store)
    assert code == 0, err
    records = history(capsys, NEW, store)
    (override,) = [r for r in records if r["action"] == "overridden"]
    data = override["data"]
    assert isinstance(data, dict)
    assert (data["by"], data["reason"], data["checks"]) == ("amy", "S1 is elsewhere", ["active_incidents"])
    assert data["until"] == pytest.approx(float(data["at"]) + 7200)
    checked = [r["data"] for r in records if r["action"] == "checked"]
    assert [(c["for"], c["passed"]) for c in checked if isinstance(c, dict)] == [
        ("promotion", False), ("promotion", False), ("promotion", True), ("trigger_gprd", True)]


def test_an_older_version_is_superseded_and_says_by_what(store: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "simulate", NEW, "--store", store)[0] == 0
    code, out, _ = run(capsys, "simulate", OLD, "--store", store)
    assert code == 0  # nothing for a person to do
    assert f"SUPERSEDED ({NEW} already succeeded in gprd" in out
    code, out, _ = run(capsys, "status", "--store", store)
    assert f"superseded: {NEW} already succeeded in gprd" in out
    assert f"gprd: runs {NEW}" in out


def test_a_locked_environment_waits_and_the_lock_shows_in_status(
        store: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "lock", "gprd", "--by", "sre", "--reason", "database failover",
                         "--store", store)
    assert code == 0, err
    assert run(capsys, "lock", "gprd", "--by", "sre", "--reason", "again", "--store", store)[0] == 2
    code, _, err = run(capsys, "lock", "gprdd", "--by", "sre", "--reason", "typo", "--store", store)
    assert code == 2 and "no environment 'gprdd'" in err and "gprd-cny" in err
    code, out, _ = run(capsys, "status", "--store", store)
    assert "gprd: LOCKED by sre" in out and "database failover" in out
    code, out, _ = run(capsys, "simulate", NEW, "--store", store, "--no-auto-promote")
    assert code == 1
    code, out, err = run(capsys, "promote", NEW, "--by", "amy", "--override-checks", "go", "--store", store)
    assert code == 2 and "a lock is never overridden" in err
    assert run(capsys, "unlock", "gprd", "--by", "sre", "--store", store)[0] == 0
    assert run(capsys, "unlock", "gprd", "--by", "sre", "--store", store)[0] == 2  # not locked
    assert run(capsys, "promote", NEW, "--by", "amy", "--store", store)[0] == 0


def test_a_rollback_on_purpose_and_its_refusals(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "simulate", OLD, "--store", store)[0] == 0
    assert run(capsys, "simulate", NEW, "--store", store)[0] == 0
    code, _, err = run(capsys, "rollback", "gprd", "13.10.202103011700", "--by", "amy", "--reason", "x",
                       "--store", store)
    assert code == 2 and "never succeeded in gprd" in err
    code, _, err = run(capsys, "rollback", "gprd", NEW, "--by", "amy", "--reason", "x", "--store", store)
    assert code == 2 and "already runs" in err
    code, out, err = run(capsys, "rollback", "gprd", OLD, "--by", "amy", "--reason", "NEW breaks sign-in",
                         "--store", store)
    assert code == 0, err
    rollout = f"{OLD}-rollback-gprd-1"
    assert f"as rollout {rollout}" in out and "is done" in out
    code, out, _ = run(capsys, "status", "--store", store)
    assert f"gprd: runs {OLD}" in out and "a rollback" in out
    records = history(capsys, rollout, store)
    created = records[0]["data"]
    assert isinstance(created, dict) and created["rollback"] == {
        "environment": "gprd", "by": "amy", "reason": "NEW breaks sign-in", "from_version": NEW}
    (checked,) = [r["data"] for r in records if r["action"] == "checked"]
    assert isinstance(checked, dict)
    verdicts = {r["name"]: r["verdict"] for r in checked["results"]}  # type: ignore[union-attr]
    assert verdicts["environment_lock"] == "passed" and verdicts["active_incidents"] == "skipped"


def test_a_lock_of_an_unknown_environment_is_refused_before_any_journal_is_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fresh = tmp_path / "fresh.sqlite"
    code, _, err = run(capsys, "lock", "prod", "--by", "sre", "--reason", "typo", "--store", str(fresh))
    assert code == 2 and "deploys no environment 'prod'" in err
    assert not fresh.exists()


def test_bad_durations_and_empty_reasons_are_refused(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "simulate", NEW, "--store", store, "--no-auto-promote")[0] == 1
    code, _, err = run(capsys, "promote", NEW, "--by", "amy", "--override-checks", "x", "--override-expires",
                       "soon", "--store", store)
    assert code == 2 and "not a duration" in err
    code, _, err = run(capsys, "promote", NEW, "--by", "amy", "--override-expires", "1h", "--store", store)
    assert code == 2 and "goes with --override-checks" in err
    code, _, err = run(capsys, "lock", "gprd", "--by", "sre", "--reason", "  ", "--store", store)
    assert code == 2 and "--reason is empty" in err

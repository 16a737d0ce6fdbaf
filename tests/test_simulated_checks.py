"""The simulated backend's production checks: the real five, failing as the scenario says, and the
failures kept with the world, so a later command on the same world sees them too."""

from __future__ import annotations

import json
import sqlite3

import pytest
from deploystate_backends.simulated import CHECK_NAMES, SettingsError, WorldError, create

from deploystate.ports import Check, CheckContext, Verdict

CONTEXT = CheckContext("13.10.202103011220", "13.10.202103011220", "gprd", 1614601200.0)  # 2021-03-01 12:20


def results(backends):
    return {name: check.run(CONTEXT) for name, check in backends.checks.items()}


def test_the_simulated_backend_offers_the_five_checks_and_they_pass():
    with create({}) as backends:
        found = results(backends)

    assert tuple(backends.checks) == CHECK_NAMES == (
        "active_incidents", "change_requests", "deploy_freeze", "deployment_health", "canary_up")
    for name, check in backends.checks.items():
        assert isinstance(check, Check) and check.name == name and check.rollback is False
    assert {name: r.verdict for name, r in found.items()} == dict.fromkeys(CHECK_NAMES, Verdict.PASSED)
    assert found["active_incidents"].detail == (
        "no open issue in gitlab-com/gl-infra/production labelled Incident::Active and severity::1 or "
        "severity::2 (simulated)")
    assert all(r.detail.endswith(" (simulated)") and r.evidence == () for r in found.values())


def test_a_simulated_s1_incident_fails_with_a_link_to_it():
    with create({"failing_checks": ["active_incidents"]}) as backends:
        found = results(backends)

    incident = found["active_incidents"]
    url = "https://simulated.invalid/gitlab-com/gl-infra/production/-/issues/1"
    assert incident.verdict is Verdict.FAILED
    assert incident.detail == ("1 active incident (severity::1): Simulated incident: elevated error rates "
                               f"on the API ({url}) (simulated)")
    assert incident.evidence == (f"{url} Simulated incident: elevated error rates on the API",)
    assert [n for n, r in found.items() if r.verdict is not Verdict.PASSED] == ["active_incidents"]


@pytest.mark.parametrize(("name", "detail"), [
    ("change_requests", "1 change request in progress (C2): Simulated change: database failover rehearsal ("),
    ("deploy_freeze", "deploy freeze of gitlab-com/gl-infra/deployer ('0 23 * * 5' to '0 8 * * 1', UTC): "
                      "frozen until Mon 2021-03-01 18:20 UTC (in 6h 00m) (simulated)"),
    ("deployment_health", "1 of 4 services unhealthy: cny-web (0) (simulated)"),
    ("canary_up", '2 canary backends down (count(haproxy_backend_up{env="gprd", backend=~"canary_.*"} == 0) '
                  "= 2) (simulated)"),
])
def test_every_check_fails_as_its_real_one_would(name, detail):
    with create({"failing_checks": name}) as backends:  # a comma-separated string, as on a command line
        result = backends.checks[name].run(CONTEXT)

    assert result.verdict is Verdict.FAILED and result.name == name
    assert result.detail.startswith(detail) and result.evidence


def test_failing_checks_are_kept_with_the_world(tmp_path):
    world = tmp_path / "world.sqlite"
    with create({"world": str(world), "failing_checks": ["canary_up", "active_incidents"]}) as backends:
        assert backends.deployer.world.scenario.failing_checks == ("active_incidents", "canary_up")

    with create({"world": str(world)}) as later:  # promote, run, checks: only the world's path
        found = results(later)
    failed = sorted(n for n, r in found.items() if r.verdict is Verdict.FAILED)
    assert failed == ["active_incidents", "canary_up"]
    with pytest.raises(WorldError, match=r"failing_checks: file has \['active_incidents', 'canary_up'\], "
                       r"given \[\]"):
        create({"world": str(world), "seed": 0})


def test_a_world_made_before_simulated_checks_has_none_failing(tmp_path):
    world = tmp_path / "old.sqlite"
    create({"world": str(world), "seed": 3}).close()
    with sqlite3.connect(world) as db:  # as an older deploystate wrote it: no failing_checks at all
        settings = json.loads(db.execute("SELECT settings FROM scenario").fetchone()[0])
        del settings["failing_checks"]
        db.execute("UPDATE scenario SET settings = ?", (json.dumps(settings),))
    db.close()

    with create({"world": str(world)}) as backends:
        assert all(r.verdict is Verdict.PASSED for r in results(backends).values())


@pytest.mark.parametrize(("given", "message"), [
    (["active_incident"], r"'failing_checks'.*did you mean 'active_incidents'\? the simulated checks are "
                          r"active_incidents, change_requests, deploy_freeze, deployment_health, canary_up"),
    (["environment_lock"], r"environment_lock is not simulated: lock the environment instead"),
    ([1], r"'failing_checks'.*list of names"),
])
def test_unknown_checks_are_refused(given, message):
    with pytest.raises(SettingsError, match=message):
        create({"failing_checks": given})

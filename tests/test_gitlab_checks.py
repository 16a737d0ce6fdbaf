"""The GitLab production checks against the GitLab stand-in, over real HTTP on loopback.

active_incidents and change_requests read labelled open issues of the production tracker;
deploy_freeze reads the deployer project's freeze periods and works out, with croniter and zoneinfo,
whether the check's moment is inside one.  Every outside failure is an ERROR (fail closed).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import zoneinfo

import croniter
import pytest
from deploystate_backends.gitlab import checks
from deploystate_backends.gitlab_standin import CNG, DEFAULT_PROJECTS, DEPLOYER, OMNIBUS, VirtualClock, World
from deploystate_backends.gitlab_standin.issues import PRODUCTION
from hypothesis import given, settings
from hypothesis import strategies as st
from standin_fixtures import STANDIN_TOKEN

from deploystate.errors import DeploystateError
from deploystate.ports import Check, CheckContext, Verdict

ACTIVE, S1, S2, S3 = "Incident::Active", "severity::1", "severity::2", "severity::3"
ENV = {"GITLAB_API_TOKEN": STANDIN_TOKEN, "DEPLOYER_TRIGGER_TOKEN": "deployer-trigger-token"}
UTC, BERLIN = dt.UTC, zoneinfo.ZoneInfo("Europe/Berlin")


def backend(url: str, **more: object) -> dict[str, object]:
    # One read attempt: a stand-in that is down answers at once, without the backend's backoff.
    return {"url": url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
            "omnibus_project": OMNIBUS.path, "read_attempts": 1, "timeout_s": 5, **more}


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: dt.tzinfo = UTC,
       second: float = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz).timestamp() + second


def context(now: float = 0.0) -> CheckContext:
    return CheckContext("13.10.202103011220", "13.10.202103011220", "gprd", now)


@pytest.fixture
def standin(standin_factory):
    return standin_factory(World([*DEFAULT_PROJECTS, PRODUCTION], clock=VirtualClock()))


@pytest.fixture
def make(standin):
    def build(factory, settings=None, **more):
        return factory(settings or {}, backend(standin.url, **more), env=ENV)
    return build


# --- active incidents and change requests ------------------------------------------------------------


def test_an_open_s1_incident_fails_the_check_with_its_link(standin, make):
    incident = standin.world.add_issue(PRODUCTION, "Elevated 500s on the API", [ACTIVE, S1],
                                       issue_type="incident")
    check = make(checks.active_incidents)

    result = check.run(context())

    url = f"{standin.url}/{PRODUCTION.path}/-/issues/{incident.iid}"
    assert isinstance(check, Check) and check.name == "active_incidents" and check.rollback is False
    assert result.verdict is Verdict.FAILED
    assert result.detail == f"1 active incident (severity::1): Elevated 500s on the API ({url})"
    assert result.evidence == (f"{url} Elevated 500s on the API",)


@pytest.mark.parametrize("labels", [[ACTIVE, S3], [S1], ["Incident::Resolved", S1], [ACTIVE]])
def test_other_incidents_pass(standin, make, labels):
    standin.world.add_issue(PRODUCTION, "Something else", labels)

    result = make(checks.active_incidents).run(context())

    assert (result.verdict, result.detail) == (
        Verdict.PASSED, f"no open issue in {PRODUCTION.path} labelled Incident::Active and severity::1 or "
        "severity::2")
    assert result.evidence == ()


def test_a_closed_incident_passes(standin, make):
    world = standin.world
    world.close_issue(world.add_issue(PRODUCTION, "Was bad", [ACTIVE, S1]))

    assert make(checks.active_incidents).run(context()).verdict is Verdict.PASSED


def test_every_page_is_read_and_an_issue_with_both_severities_counts_once(standin, make):
    world = standin.world
    world.add_issue(PRODUCTION, "Both labels", [ACTIVE, S1, S2])
    for n in range(130):  # more than one page of 100
        world.add_issue(PRODUCTION, f"S2 number {n}", [ACTIVE, S2])
    before = standin.counters().requests_to("issues", "GET")

    result = make(checks.active_incidents).run(context())

    assert result.verdict is Verdict.FAILED
    assert result.detail.startswith("131 active incidents (severity::1/severity::2): Both labels (")
    assert result.detail.endswith(" and 130 more")
    assert len(result.evidence) == 131 and result.evidence[-1].endswith(" S2 number 129")
    # severity::1: one page; severity::2: two pages of 100.
    assert standin.counters().requests_to("issues", "GET") - before == 3


def test_change_requests_in_progress_of_c1_or_c2_fail(standin, make):
    world = standin.world
    world.add_issue(PRODUCTION, "Upgrade Patroni", ["change::in-progress", "C2"])
    world.add_issue(PRODUCTION, "Rotate a certificate", ["change::in-progress", "C3"])
    world.add_issue(PRODUCTION, "Resize the fleet", ["change::complete", "C1"])
    check = make(checks.change_requests)

    result = check.run(context())

    assert check.name == "change_requests"
    assert result.verdict is Verdict.FAILED
    assert result.detail.startswith("1 change request in progress (C2): Upgrade Patroni (")
    assert len(result.evidence) == 1


def test_labels_and_project_are_settings(standin, make):
    world = standin.world
    world.add_issue(PRODUCTION, "Sev 3 counts here", [ACTIVE, S3])
    world.add_issue(DEPLOYER, "In another tracker", ["incident", "sev1"])

    mine = make(checks.active_incidents, {"severity_labels": [S3], "rollback": True})
    elsewhere = make(checks.active_incidents, {"project": DEPLOYER.path, "label": "incident",
                                                "severity_labels": ["sev1"]})

    assert mine.rollback is True and mine.run(context()).verdict is Verdict.FAILED
    assert elsewhere.run(context()).detail.startswith("1 active incident (sev1): In another tracker")


def test_gitlab_down_is_an_error_that_says_so(standin_factory):
    down = standin_factory(World([*DEFAULT_PROJECTS, PRODUCTION], clock=VirtualClock()))
    check = checks.active_incidents({}, backend(down.url), env=ENV)
    down.stop()

    result = check.run(context())

    assert result.verdict is Verdict.ERROR and result.evidence == ()
    assert result.detail == ("active_incidents: listing open issues of gitlab-com/gl-infra/production "
                             "labelled Incident::Active,severity::1: connection to GitLab failed or was "
                             "dropped")


def test_a_5xx_after_the_retries_and_a_refused_token_are_errors(standin, make):
    standin.faults.next(3, "error", status=500, route="issues")
    failing = make(checks.change_requests, read_attempts=3, backoff_s=0.001, max_backoff_s=0.002)
    refused = checks.deploy_freeze({}, backend(standin.url), env={"GITLAB_API_TOKEN": "a-wrong-secret-value"})

    first, second = failing.run(context()), refused.run(context())

    assert first.verdict is Verdict.ERROR and "GitLab answered 500" in first.detail
    assert second.verdict is Verdict.ERROR and "refused the credentials (401)" in second.detail
    assert "a-wrong-secret-value" not in second.detail + repr(refused)


def test_a_gitlab_slower_than_the_time_out_is_an_error(standin, make):
    standin.faults.next(1, "slow", route="freeze_periods", delay_s=1.0)

    result = make(checks.deploy_freeze, timeout_s=0.3).run(context())

    assert (result.verdict, result.detail) == (Verdict.ERROR, (
        f"deploy_freeze: listing the freeze periods of {DEPLOYER.path}: GitLab did not answer in time"))


def test_a_missing_project_is_an_error_naming_it(standin, make):
    result = make(checks.active_incidents, {"project": "gitlab-com/gl-infra/nowhere"}).run(context())

    assert result.verdict is Verdict.ERROR
    assert "gitlab-com/gl-infra/nowhere" in result.detail and "not found (404)" in result.detail


# --- deploy freezes -----------------------------------------------------------------------------------

WEEKEND = ("0 23 * * 5", "0 8 * * 1")  # GitLab's documented example: Friday 23:00 to Monday 08:00


@pytest.mark.parametrize(("now", "inside"), [
    (at(2021, 3, 5, 22, 59), False),                # Friday, a minute before
    (at(2021, 3, 5, 23, 0), True),                  # the very minute it starts
    (at(2021, 3, 6, 12, 0), True),                  # Saturday
    (at(2021, 3, 8, 7, 59, second=59.9), True),     # Monday, just before it ends
    (at(2021, 3, 8, 8, 0), False),                  # the very minute it ends
    (at(2021, 3, 10, 12, 0), False),                # Wednesday
])
def test_a_weekend_freeze_in_utc(standin, make, now, inside):
    standin.world.add_freeze_period(DEPLOYER, *WEEKEND)

    result = make(checks.deploy_freeze).run(context(now))

    assert result.verdict is (Verdict.FAILED if inside else Verdict.PASSED), result.detail
    if inside:
        assert result.detail.startswith(f"deploy freeze of {DEPLOYER.path} ('0 23 * * 5' to '0 8 * * 1', "
                                        "UTC): frozen until Mon 2021-03-08 08:00 UTC (in ")
        assert result.evidence[-1] == (f"{standin.url}/{DEPLOYER.path}/-/settings/ci_cd"
                                       "#js-deploy-freeze-settings")
    else:
        assert result.detail == f"no deploy freeze of {DEPLOYER.path} is on (1 freeze period)"


@pytest.mark.parametrize(("now", "inside", "until"), [
    # Winter (CET, UTC+1): Friday 22:30 UTC is 23:30 in Berlin, frozen; 21:30 UTC is not yet.
    (at(2021, 3, 5, 22, 30), True, "Mon 2021-03-08 08:00 CET"),
    (at(2021, 3, 5, 21, 30), False, None),
    (at(2021, 3, 8, 6, 59), True, "Mon 2021-03-08 08:00 CET"),   # 07:59 in Berlin
    (at(2021, 3, 8, 7, 0), False, None),                         # 08:00 in Berlin
    # Summer (CEST, UTC+2): Friday 21:30 UTC is 23:30 in Berlin.
    (at(2021, 7, 2, 21, 30), True, "Mon 2021-07-05 08:00 CEST"),
    (at(2021, 7, 5, 6, 0), False, None),                         # 08:00 in Berlin
])
def test_a_weekend_freeze_in_berlin_time(standin, make, now, inside, until):
    standin.world.add_freeze_period(DEPLOYER, *WEEKEND, cron_timezone="Europe/Berlin")

    result = make(checks.deploy_freeze).run(context(now))

    assert result.verdict is (Verdict.FAILED if inside else Verdict.PASSED), result.detail
    if inside:
        assert f"Europe/Berlin): frozen until {until} (in " in result.detail


def test_a_freeze_over_the_new_year_and_the_time_left(standin, make):
    world = standin.world
    world.add_freeze_period(DEPLOYER, "0 0 24 12 *", "0 0 2 1 *")
    world.add_freeze_period(DEPLOYER, *WEEKEND)
    check = make(checks.deploy_freeze)

    # Thursday 2021-12-30: inside the holiday freeze only; Saturday 2022-01-01: inside both.
    holiday, both, after = (check.run(context(at(2021, 12, 30, 12, 0))), check.run(context(at(2022, 1, 1))),
                            check.run(context(at(2022, 1, 2))))

    assert holiday.detail.endswith("frozen until Sun 2022-01-02 00:00 UTC (in 2d 12h 00m)")
    assert len(holiday.evidence) == 2 and holiday.evidence[0].startswith("freeze period 1: '0 0 24 12 *' to")
    # The one that lasts longest decides: the weekend ends on Monday the 3rd.
    assert both.detail.endswith("frozen until Mon 2022-01-03 08:00 UTC (in 2d 8h 00m); "
                                "2 freeze periods are on")
    assert after.verdict is Verdict.FAILED  # Sunday the 2nd at 00:00 is still the weekend freeze
    assert "'0 23 * * 5' to '0 8 * * 1'" in after.detail


@pytest.mark.parametrize(("period", "said"), [
    (("0 23 * * 8", "0 8 * * 1", "UTC"), "cron expression '0 23 * * 8' cannot be read"),
    (("0 23 * * 5", "0 8 * * 1", "Mars/Olympus"),
     "time zone 'Mars/Olympus' is not an IANA time zone name (like Europe/Berlin)"),
    (("0 23 * * 5", "0 0 30 2 *", "UTC"), "freeze_end '0 0 30 2 *' never comes"),
])
def test_a_freeze_period_that_cannot_be_read_fails_closed(standin, make, period, said):
    standin.world.add_freeze_period(DEPLOYER, *period)

    result = make(checks.deploy_freeze).run(context(at(2021, 3, 6)))

    assert result.verdict is Verdict.ERROR
    assert result.detail == (f"deploy_freeze: freeze period 1 of {DEPLOYER.path} cannot be checked: {said}")


def test_no_freeze_periods_pass_and_the_project_is_a_setting(standin, make):
    standin.world.add_freeze_period(CNG, *WEEKEND)
    saturday = context(at(2021, 3, 6))

    assert make(checks.deploy_freeze).run(saturday).detail == (
        f"no deploy freeze of {DEPLOYER.path} is on (0 freeze periods)")
    assert make(checks.deploy_freeze, {"project": CNG.path}).run(saturday).verdict is Verdict.FAILED


def _inside_by_walking(start: str, end: str, moment: dt.datetime) -> bool:
    """An independent answer: walk forward from 8 days before, through every start and end up to
    ``moment`` (included); inside if the last one was a start."""
    events = []
    for kind, expression in (("start", start), ("end", end)):
        walker = croniter.croniter(expression, moment - dt.timedelta(days=8))
        while (when := walker.get_next(dt.datetime)) <= moment:
            events.append((when, kind == "end"))  # at the same moment the end sorts last: it wins
    assert events, "neither matched within 8 days"
    return not max(events)[1]


@settings(max_examples=60, deadline=None)
@given(minutes=st.integers(0, 14 * 24 * 60), period=st.sampled_from([
    WEEKEND, ("30 17 * * 1-5", "0 9 * * 1-5"), ("0 12 * * *", "0 13 * * *"),
    ("*/20 * * * *", "10,50 * * * *"),
    ("0 * * * *", "0 */2 * * *")]),  # both at even hours: the end wins
    zone=st.sampled_from([UTC, BERLIN]))
def test_inside_a_freeze_agrees_with_walking_through_every_start_and_end(minutes, period, zone):
    moment = dt.datetime(2021, 3, 1, tzinfo=zone) + dt.timedelta(minutes=minutes, seconds=minutes % 60)
    name = "UTC" if zone is UTC else "Europe/Berlin"
    freeze = checks.where_in_freeze({"id": 1, "freeze_start": period[0], "freeze_end": period[1],
                                     "cron_timezone": name}, moment.timestamp())

    assert freeze.active == _inside_by_walking(*period, moment.astimezone(zone))
    assert freeze.ends.timestamp() > moment.timestamp()


# --- settings ------------------------------------------------------------------------------------------


def test_settings_are_checked_when_the_check_is_made(standin):
    url = standin.url
    with pytest.raises(DeploystateError, match=r"\[checks.active_incidents\] unknown setting\(s\) severity; "
                       r"known: api_token_env, label, project, rollback, severity_labels, timeout_s, url"):
        checks.active_incidents({"severity": ["severity::1"]}, backend(url), env=ENV)
    with pytest.raises(DeploystateError, match=r"\[checks.change_requests\] criticality_labels must be a "
                       r"non-empty list of strings"):
        checks.change_requests({"criticality_labels": "C1"}, backend(url), env=ENV)
    with pytest.raises(DeploystateError, match=r"\[checks.deploy_freeze\] rollback must be true or false"):
        checks.deploy_freeze({"rollback": "yes"}, backend(url), env=ENV)
    with pytest.raises(DeploystateError, match=r"\[checks.deploy_freeze\] is missing project"):
        checks.deploy_freeze({"url": url}, {}, env=ENV)
    with pytest.raises(DeploystateError, match=r"\[checks.active_incidents\] needs GitLab's url"):
        checks.active_incidents({}, {}, env=ENV)
    with pytest.raises(DeploystateError, match="environment variable GITLAB_API_TOKEN is not set"):
        checks.active_incidents({}, backend(url), env={})
    with pytest.raises(DeploystateError, match=r"TRACKER_TOKEN is not set or empty; it must hold a GitLab "
                       r"API token \(\[checks.change_requests\] api_token_env names it\)"):
        checks.change_requests({"api_token_env": "TRACKER_TOKEN"}, backend(url), env=ENV)


def test_a_check_may_name_its_own_gitlab_and_token(standin):
    standin.world.add_issue(PRODUCTION, "On the other instance", [ACTIVE, S2])
    # The backend's GitLab is somewhere else (an ops instance); the tracker's is the stand-in.
    check = checks.active_incidents({"url": standin.url, "api_token_env": "TRACKER_TOKEN"},
                                    backend("http://127.0.0.1:9"), env={"TRACKER_TOKEN": STANDIN_TOKEN})

    assert check.run(context()).verdict is Verdict.FAILED


def test_the_entry_points_name_these_factories():
    found = {e.name: e.load() for e in importlib.metadata.entry_points(group="deploystate.checks")
             if e.value.startswith("deploystate_backends.gitlab.")}

    assert found["active_incidents"] is checks.active_incidents
    assert found["change_requests"] is checks.change_requests
    assert found["deploy_freeze"] is checks.deploy_freeze

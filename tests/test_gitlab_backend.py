"""The GitLab backend against the GitLab stand-in: python-gitlab speaks real HTTP to a local server.

Nothing of ours is replaced: ``create()`` builds the adapter from settings and environment exactly
as ``deploystate`` does, and the stand-in's own records (pipelines, variables, request counters)
say what reached "GitLab".  Time is the stand-in's virtual clock, moved by the tests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import attrs
import gitlab
import gitlab.utils
import pytest
from deploystate_backends.autodeploy import BadVersion
from deploystate_backends.gitlab import GitLabSettings, GitLabSettingsError, RehearsalClock, create
from deploystate_backends.gitlab import client as gitlab_client
from deploystate_backends.gitlab_standin import (
    CNG,
    DEPLOYER,
    OMNIBUS,
    Script,
    Standin,
    package_tags,
    seed_package_builds,
)
from standin_fixtures import DEPLOYER_TRIGGER_TOKEN, STANDIN_TOKEN, make_client

from deploystate.clock import SystemClock
from deploystate.ports import BackendError, Backends, Outcome, TriggerRequest

VERSION = "13.10.202103011220"
CNG_TAG, OMNIBUS_TAG = package_tags(VERSION)
ENV = {"GITLAB_API_TOKEN": STANDIN_TOKEN, "DEPLOYER_TRIGGER_TOKEN": DEPLOYER_TRIGGER_TOKEN}
# The deployer's pipeline: prepare, deploy (3600 s) and finish, with some queueing: done by then.
DEPLOY_DONE_S = 4000


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # python-gitlab's session honours proxy variables; the stand-in is on loopback.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def settings_for(standin: Standin, **more: Any) -> dict[str, Any]:
    return {"url": standin.url, "deployer_project": DEPLOYER.path, "cng_project": CNG.path,
            "omnibus_project": OMNIBUS.path, "timeout_s": 0.3, "backoff_s": 0.01, "max_backoff_s": 0.05,
            **more}


def backends_for(standin: Standin, env: Mapping[str, str] = ENV, **more: Any) -> Backends:
    """What deploystate would build from [backends.gitlab], on the stand-in's virtual clock."""
    return attrs.evolve(create(settings_for(standin, **more), env), clock=standin.world.clock)


def request(key: str = "13.10.202103011220/trigger_gstg/1", environments: tuple[str, ...] = ("gstg",),
            ref: str = "next-gen", check_mode: bool = True, user: str = "release-bot") -> TriggerRequest:
    return TriggerRequest(key=key, version=VERSION, environments=environments, ref=ref,
                          check_mode=check_mode, user=user)


@pytest.fixture
def built(gitlab_standin: Standin) -> Standin:
    """A stand-in where both package builds of VERSION have finished."""
    seed_package_builds(gitlab_standin.world, VERSION)
    gitlab_standin.world.advance(DEPLOY_DONE_S)
    return gitlab_standin


def triggered(standin: Standin) -> dict[str, int]:
    return standin.counters().triggered_pipelines_by_env


# --- triggering ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("environments", "check_mode", "ref"), [
    (("gstg",), True, "next-gen"),
    (("gstg", "gprd-cny", "gprd"), False, "master"),
])
def test_a_trigger_carries_the_real_systems_variables_and_our_key(built, environments, check_mode, ref):
    deployer = backends_for(built).deployer

    deployment = deployer.trigger(request(environments=environments, check_mode=check_mode, ref=ref))

    pipeline = built.world.pipeline(int(deployment.id))
    assert pipeline is not None and pipeline.source == "trigger" and pipeline.ref == ref
    variables = {v.key: v.value for v in pipeline.variables if v.key != "TRIGGER_PAYLOAD"}
    assert variables == {
        "DEPLOY_ENVIRONMENT": ",".join(environments),
        "DEPLOY_VERSION": OMNIBUS_TAG.replace("+", "-"),
        "DEPLOY_USER": "release-bot",
        "CHECKMODE": "true" if check_mode else "false",
        "SKIP_JOB_ON_COORDINATOR_PIPELINE": "true",
        "DEPLOYSTATE_KEY": request().key,
    }
    assert deployment.key == request().key and deployment.outcome is Outcome.WAITING
    assert deployment.web_url is not None and deployment.web_url.endswith(f"/pipelines/{deployment.id}")


def test_a_rollback_trigger_says_so_to_the_deployer_and_others_do_not(built):
    deployer = backends_for(built).deployer
    plain = deployer.trigger(request())
    rollback = deployer.trigger(attrs.evolve(request(), key="V-rollback-gprd-1/rollback/1", rollback=True))
    assert built.world.pipeline(int(rollback.id)).variable("DEPLOY_ROLLBACK") == "true"  # type: ignore[union-attr]
    assert built.world.pipeline(int(plain.id)).variable("DEPLOY_ROLLBACK") is None  # type: ignore[union-attr]


def test_the_deploy_version_is_the_omnibus_package_tag_not_the_auto_deploy_tag(gitlab_standin):
    """Before the Omnibus package is tagged there is nothing to deploy: a transient error."""
    deployer = backends_for(gitlab_standin).deployer
    with pytest.raises(BackendError, match="no Omnibus package tag") as refused:
        deployer.trigger(request())
    assert refused.value.transient
    assert gitlab_standin.counters().requests_to("trigger") == 0

    seed_package_builds(gitlab_standin.world, VERSION)
    deployer.trigger(request())
    deploy_version = gitlab_standin.world.pipelines(DEPLOYER)[0].variable("DEPLOY_VERSION")
    assert deploy_version == OMNIBUS_TAG.replace("+", "-")


def test_a_project_may_be_given_by_numeric_id(built):
    deployer = backends_for(built, deployer_project=DEPLOYER.id, cng_project=CNG.id,
                            omnibus_project=OMNIBUS.id).deployer
    deployment = deployer.trigger(request())
    assert built.world.pipeline(int(deployment.id)).project_id == DEPLOYER.id  # type: ignore[union-attr]


def test_a_wrong_trigger_token_is_a_lasting_error_that_names_its_variable_not_its_value(built):
    wrong = {**ENV, "DEPLOYER_TRIGGER_TOKEN": "not-the-trigger-token"}
    deployer = backends_for(built, env=wrong).deployer

    with pytest.raises(BackendError) as refused:
        deployer.trigger(request())

    assert not refused.value.transient
    assert "$DEPLOYER_TRIGGER_TOKEN" in str(refused.value) and "404" in str(refused.value)
    assert "not-the-trigger-token" not in str(refused.value)
    assert triggered(built) == {}


# Faults on the trigger itself.  Processed: GitLab created the pipeline before the answer was lost.
TRIGGER_FAULTS = {
    "5xx": ({"kind": "error", "status": 503}, False),
    "dropped connection": ({"kind": "drop"}, False),
    "time-out": ({"kind": "slow", "delay_s": 0.6}, True),
    "response lost (502)": ({"kind": "lost_response"}, True),
    "response lost (dropped)": ({"kind": "lost_response", "drop": True}, True),
}


@pytest.mark.parametrize("fault", TRIGGER_FAULTS, ids=list(TRIGGER_FAULTS))
def test_a_trigger_is_never_resent_by_itself_and_find_tells_whether_it_happened(built, fault):
    options, processed = TRIGGER_FAULTS[fault]
    built.faults.next(1, route="trigger", **options)
    deployer = backends_for(built).deployer

    with pytest.raises(BackendError) as doubt:
        deployer.trigger(request())

    assert doubt.value.transient  # the runner looks the key up before anything else
    assert built.counters().requests_to("trigger") == 1  # sent once, never again by python-gitlab
    found = deployer.find(request().key)
    assert (found is not None) == processed
    assert triggered(built) == ({"gstg": 1} if processed else {})
    if found is None:  # what the runner does next: trigger again, with the same key
        found = deployer.trigger(request())
    assert triggered(built) == {"gstg": 1}
    assert deployer.status(found.id).key == request().key


def test_find_survives_a_restart_and_looks_only_at_the_newest_triggered_pipelines(built):
    first = backends_for(built).deployer
    keys = [f"{VERSION}/step{n}/1" for n in range(30)]
    ids = [first.trigger(request(key=key)).id for key in keys]

    fresh = backends_for(built).deployer  # a new process: nothing cached
    assert fresh.find(keys[0]).id == ids[0]  # type: ignore[union-attr]
    assert fresh.find(keys[-1]).id == ids[-1]  # type: ignore[union-attr]
    assert fresh.find(f"{VERSION}/never/1") is None
    # find_depth bounds the search: older pipelines than that are not looked at.
    shallow = backends_for(built, find_depth=10).deployer
    assert shallow.find(keys[-10]) is not None and shallow.find(keys[-11]) is None


def test_find_ignores_pipelines_that_were_not_triggered(built):
    built.world.seed_pipeline(DEPLOYER.path, "master", variables={"DEPLOYSTATE_KEY": "pushed/step/1"})
    deployer = backends_for(built).deployer
    assert deployer.find("pushed/step/1") is None


# --- reading statuses ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ends_as", "outcome"), [
    ("success", Outcome.SUCCEEDED),
    ("failed", Outcome.FAILED),
    ("canceled", Outcome.FAILED),
    ("waiting_for_callback", Outcome.WAITING),
    ("deploying_on_mars", Outcome.UNKNOWN),
])
def test_status_is_the_downstream_pipelines_own_and_unknown_statuses_are_unknown(built, ends_as, outcome):
    built.world.script(DEPLOYER.path, "gstg", outcome=Script((ends_as,)))
    deployer = backends_for(built).deployer
    deployment = deployer.trigger(request())
    built.world.advance(600)
    running = deployer.status(deployment.id)
    assert (running.status, running.outcome) == ("running", Outcome.WAITING)

    built.world.advance(DEPLOY_DONE_S)
    done = deployer.status(deployment.id)

    assert (done.status, done.outcome) == (ends_as, outcome)
    assert done.started_at is not None and done.key == request().key


def test_a_pipeline_retried_in_gitlab_reads_running_again_then_success(built):
    built.world.script(DEPLOYER.path, "gstg", outcome=Script.fail_then_succeed())
    deployer = backends_for(built).deployer
    deployment = deployer.trigger(request())
    built.world.advance(DEPLOY_DONE_S)
    assert deployer.status(deployment.id).outcome is Outcome.FAILED

    make_client(built).projects.get(DEPLOYER.path, lazy=True).pipelines.get(int(deployment.id)).retry()

    assert deployer.status(deployment.id).outcome is Outcome.WAITING
    built.world.advance(DEPLOY_DONE_S)
    assert deployer.status(deployment.id).status == "success"


@pytest.mark.parametrize("kind", ["error", "drop", "slow", "lost_response"])
def test_reads_are_retried_with_backoff(built, kind):
    deployer = backends_for(built).deployer
    deployment = deployer.trigger(request())
    built.faults.next(2, kind, route="pipeline", delay_s=0.6)

    assert deployer.status(deployment.id).id == deployment.id
    assert built.counters().requests_to("pipeline") == 3


def test_a_read_that_keeps_failing_is_a_transient_error_after_its_attempts(built):
    deployer = backends_for(built, read_attempts=2).deployer
    deployment = deployer.trigger(request())
    built.faults.next(2, "slow", route="pipeline", delay_s=0.6)

    with pytest.raises(BackendError, match="did not answer in time") as slow:
        deployer.status(deployment.id)

    assert slow.value.transient
    assert built.counters().requests_to("pipeline") == 2


def test_a_missing_pipeline_is_a_lasting_error_and_is_not_retried(built):
    deployer = backends_for(built).deployer
    with pytest.raises(BackendError, match="not found") as missing:
        deployer.status("424242")
    assert not missing.value.transient
    assert built.counters().requests_to("pipeline") == 1


def test_backoff_doubles_between_attempts_with_jitter(built):
    project = make_client(built).projects.get(DEPLOYER.path, lazy=True)
    parsed = GitLabSettings.from_mapping(settings_for(built, backoff_s=0.1, max_backoff_s=0.3,
                                                      read_attempts=5))
    built.faults.next(4, "error", route="pipelines")
    waits: list[float] = []

    gitlab_client.read(lambda: project.pipelines.list(), "listing", parsed, sleep=waits.append)

    caps = [0.1, 0.2, 0.3, 0.3]  # doubling, capped by max_backoff_s
    assert len(waits) == 4 and all(cap / 2 <= w <= cap for w, cap in zip(waits, caps, strict=True))


def test_rate_limits_are_waited_out_as_retry_after_says(built, monkeypatch):
    # python-gitlab does the waiting; record its sleeps instead of spending them.
    slept: list[float] = []
    monkeypatch.setattr(gitlab.utils.time, "sleep", slept.append)
    deployer = backends_for(built).deployer
    built.faults.next(1, "rate_limit", route="trigger", retry_after=7)
    built.faults.next(2, "rate_limit", route="pipeline", retry_after=3)

    deployment = deployer.trigger(request())  # a 429 was refused unprocessed: sending again is safe
    assert deployer.status(deployment.id).id == deployment.id

    assert slept == [7, 3, 3]
    assert triggered(built) == {"gstg": 1}
    assert built.counters().requests_to("trigger") == 2


# --- package builds --------------------------------------------------------------------------------


def test_a_package_build_is_missing_until_its_pipeline_appears_then_followed_to_its_end(gitlab_standin):
    packages = backends_for(gitlab_standin).packages
    seed_package_builds(gitlab_standin.world, VERSION, after_s=600, omnibus=Script.fail())

    assert packages.status("cng", VERSION).outcome is Outcome.MISSING
    gitlab_standin.world.advance(700)
    building = packages.status("cng", VERSION)
    assert (building.tag, building.outcome) == (CNG_TAG, Outcome.WAITING)
    gitlab_standin.world.advance(DEPLOY_DONE_S)

    assert packages.status("cng", VERSION).outcome is Outcome.SUCCEEDED
    omnibus = packages.status("omnibus", VERSION)
    assert (omnibus.tag, omnibus.status, omnibus.outcome) == (OMNIBUS_TAG, "failed", Outcome.FAILED)


def test_the_newest_pipeline_of_the_package_tag_counts(gitlab_standin):
    world = gitlab_standin.world
    packages = backends_for(gitlab_standin).packages
    seed_package_builds(world, VERSION, cng=Script.fail())
    world.advance(DEPLOY_DONE_S)
    assert packages.status("cng", VERSION).outcome is Outcome.FAILED

    world.seed_pipeline(CNG.path, CNG_TAG, script=Script.succeed())  # a new pipeline for the same tag
    assert packages.status("cng", VERSION).outcome is Outcome.WAITING
    world.advance(DEPLOY_DONE_S)
    assert packages.status("cng", VERSION).outcome is Outcome.SUCCEEDED


def test_other_versions_tags_are_not_mistaken_for_this_ones(gitlab_standin):
    world = gitlab_standin.world
    for neighbour in ("13.10.202103011221", "13.10.202103011220-rc1", "113.10.202103011220"):
        world.seed_pipeline(CNG.path, f"{neighbour}+abcdefabcdef")
    packages = backends_for(gitlab_standin).packages
    assert packages.status("cng", VERSION).outcome is Outcome.MISSING


def test_an_unknown_package_is_a_lasting_error(gitlab_standin):
    with pytest.raises(BackendError, match="cng and omnibus") as unknown:
        backends_for(gitlab_standin).packages.status("helm", VERSION)
    assert not unknown.value.transient


# --- the stand-in's tags endpoint, which the package watcher relies on -----------------------------

# GitLab's documented example (REST API, Tags, "List project repository tags"): its field names.
DOCUMENTED_TAG_FIELDS = {"commit", "release", "name", "target", "message", "protected", "created_at"}
DOCUMENTED_COMMIT_FIELDS = {"id", "short_id", "title", "created_at", "parent_ids", "message", "author_name",
                            "author_email", "authored_date", "committer_name", "committer_email",
                            "committed_date"}


def test_tags_search_like_gitlab_and_paginate(gitlab_standin, gitlab_client):
    names = [f"13.10.2021030112{n:02d}+abc" for n in range(30)] + ["v1.0", "V1.0-beta", "release-v1.0"]
    for name in names:
        gitlab_standin.world.seed_pipeline(CNG.path, name)
    project = gitlab_client.projects.get(CNG.path, lazy=True)

    def search(term: str) -> list[str]:
        return [t.name for t in project.tags.list(search=term, get_all=True, per_page=7)]

    assert len(search("^13.10.")) == 30  # seven per page, every page followed
    assert search("^13.10.202103011205") == ["13.10.202103011205+abc"]
    assert search("^v1.0$") == ["v1.0"]  # case-insensitive, anchored at both ends
    assert set(search("^v1")) == {"v1.0", "V1.0-beta"}
    assert search("v1.0")[0] == "v1.0"  # a plain term matches anywhere, an exact match first
    assert set(search("v1.0")) == {"v1.0", "V1.0-beta", "release-v1.0"}
    assert search("^13.10.*+abc$")[:1] and search("^2021") == []

    raw = gitlab_client.http_get(f"/projects/{CNG.id}/repository/tags", query_data={"search": "^v1.0$"})
    assert isinstance(raw, list) and set(raw[0]) == DOCUMENTED_TAG_FIELDS
    assert set(raw[0]["commit"]) >= DOCUMENTED_COMMIT_FIELDS
    assert re.fullmatch(r"[0-9a-f]{40}", raw[0]["target"]) and raw[0]["commit"]["id"] == raw[0]["target"]


# --- settings --------------------------------------------------------------------------------------

BASE = {"url": "https://gitlab.example.com", "deployer_project": "gitlab-com/gl-infra/deployer",
        "cng_project": "gitlab-org/build/CNG-mirror", "omnibus_project": "gitlab-org/security/omnibus-gitlab"}


@pytest.mark.parametrize(("change", "says"), [
    ({"url": None}, "missing url"),
    ({"url": "gitlab.example.com"}, "not an http(s) URL"),
    ({"deployer_project": "deployer"}, "not a project id or path"),
    ({"trigger_token_env": "my token"}, "must name an environment variable"),
    ({"timeout_s": 0}, "timeout_s must be a positive number"),
    ({"read_attempts": 2.5}, "read_attempts must be a whole number"),
    ({"retry_transient_errors": True}, "unknown setting"),
    ({"clock_speed": 60, "clock_anchor": 1.0}, "for rehearsals against a local stand-in"),
    ({"url": "http://127.0.0.1:8929", "clock_speed": 60}, "needs clock_anchor"),
])
def test_bad_settings_are_refused_at_start_saying_which(change, says):
    settings = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(GitLabSettingsError, match=re.escape(says)):
        create(settings, ENV)


@pytest.mark.parametrize(("env", "named"), [
    ({"GITLAB_API_TOKEN": "api-secret-1"}, "DEPLOYER_TRIGGER_TOKEN is not set"),
    ({"DEPLOYER_TRIGGER_TOKEN": "trigger-secret-2"}, "GITLAB_API_TOKEN is not set"),
    ({"GITLAB_API_TOKEN": "api-secret-1", "DEPLOYER_TRIGGER_TOKEN": "  "}, "DEPLOYER_TRIGGER_TOKEN is empty"),
])
def test_a_missing_token_is_an_error_at_start_naming_the_variable_never_a_value(env, named):
    with pytest.raises(GitLabSettingsError) as missing:
        create(BASE, env)
    assert named in str(missing.value)
    assert not any(value.strip() and value in str(missing.value) for value in env.values())


def test_the_token_variables_can_be_renamed():
    renamed = {**BASE, "trigger_token_env": "CI_DEPLOYER_TRIGGER", "api_token_env": "CI_API"}
    with pytest.raises(GitLabSettingsError, match="CI_DEPLOYER_TRIGGER is not set"):
        create(renamed, ENV)
    made = create(renamed, {"CI_DEPLOYER_TRIGGER": "t", "CI_API": "a"})
    assert isinstance(made.clock, SystemClock) and not isinstance(made.clock, RehearsalClock)
    assert "gitlab.example.com" in made.description


def test_a_rehearsal_clock_runs_at_the_stand_ins_speed_from_the_shared_anchor():
    anchor = 1_000_000.0
    made = create({**BASE, "url": "http://localhost:8929", "clock_speed": 600, "clock_anchor": anchor}, ENV)
    assert isinstance(made.clock, RehearsalClock) and "x600" in made.description

    before = time.time()
    now = made.clock.now()
    after = time.time()

    # anchor + (wall - anchor) * 600: the same in every process that shares the anchor.
    assert anchor + (before - anchor) * 600 <= now <= anchor + (after - anchor) * 600


# --- what the backend says about its rollouts: versions, runbook, closing -------------------------


@pytest.mark.parametrize("text", ["x", "13.10.202103011220\n", "13.10.202103011220-rc1",
                                  "v13.10.202103011220"])
def test_versions_must_be_auto_deploy_tags(text):
    made = create(BASE, ENV)
    with pytest.raises(BadVersion) as refused:
        made.check_version(text)
    assert str(refused.value) == (f"version {text!r} is not an auto-deploy tag; expected "
                                  "MAJOR.MINOR.YYYYMMDDHHMM (UTC), e.g. 13.10.202103011220")
    assert made.check_version(VERSION) == VERSION  # prepare (the tokens' check) is in test_gitlab_access


def test_failure_notices_link_the_release_runbooks():
    assert create(BASE, ENV).runbook == "https://gitlab.com/gitlab-org/release/docs/-/tree/master/runbooks"


def test_closing_the_backends_closes_python_gitlabs_connections(built):
    backends = backends_for(built)
    assert backends.packages.status("cng", VERSION).outcome is Outcome.SUCCEEDED
    session = backends.packages._gl.session  # type: ignore[attr-defined]
    pools = session.get_adapter(built.url).poolmanager.pools
    assert len(pools) == 1  # the connection kept open for the next request

    backends.close()

    assert len(pools) == 0

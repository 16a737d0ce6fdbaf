"""The GitLab stand-in, as python-gitlab sees it over real HTTP on loopback.

Time is virtual unless a test says otherwise: ``world.advance(s)`` moves pipelines on.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import types
import urllib.parse

import attrs
import gitlab
import pytest
import requests
from deploystate_backends.gitlab_standin import (
    CNG,
    DEFAULT_PROJECTS,
    DEPLOYER,
    RELEASE_TOOLS,
    AcceleratedClock,
    JobSpec,
    ProjectSpec,
    Script,
    Standin,
    Timing,
    VirtualClock,
    World,
    serve,
)
from deploystate_backends.gitlab_standin.__main__ import build, build_parser, main
from deploystate_backends.gitlab_standin.world import composite_status
from hypothesis import given
from hypothesis import strategies as st
from standin_fixtures import DEPLOYER_TRIGGER_TOKEN, STANDIN_TOKEN, make_client

DEPLOYER_PATH = DEPLOYER.path
# The deployer's default timing: prepare (1+5+60 s), deploy (1+5+3600 s), finish (1+5+60 s).
DEPLOY_TOTAL_S = 3 * 6 + 3600 + 2 * 60


def trigger(gl: gitlab.Gitlab, env: str, key: str = "", ref: str = "master", **more: str):
    project = gl.projects.get(DEPLOYER_PATH, lazy=True)
    variables = {"DEPLOY_ENVIRONMENT": env, "DEPLOY_VERSION": "13.10.202103011220-abc.def", **more}
    if key:
        variables["IDEMPOTENCY_KEY"] = key
    return project.trigger_pipeline(ref, DEPLOYER_TRIGGER_TOKEN, variables=variables)


def run_until_quiet(world: World, limit: int = 1000) -> None:
    """Advance the virtual clock through every scheduled change (hung jobs schedule none)."""
    for _ in range(limit):
        due = world.next_change_at()
        if due is None:
            return
        world.advance(max(0.0, due - world.now()))
    raise AssertionError(f"the world still changes after {limit} steps")


def statuses(pipeline) -> dict[str, str]:
    return {job.name: job.status for job in pipeline.jobs.list(get_all=True)}


# --- triggers -------------------------------------------------------------------------------------


def test_trigger_creates_a_pipeline_whose_variables_are_listed(gitlab_standin, gitlab_client):
    created = trigger(gitlab_client, "gstg", key="rollout-1:gstg")

    assert (created.status, created.source, created.ref) == ("created", "trigger", "master")
    assert created.web_url == f"{gitlab_standin.url}/{DEPLOYER_PATH}/-/pipelines/{created.id}"
    pipeline = gitlab_client.projects.get(DEPLOYER_PATH, lazy=True).pipelines.get(created.id)
    variables = {v.key: v.value for v in pipeline.variables.list()}
    assert variables["DEPLOY_ENVIRONMENT"] == "gstg"
    assert variables["IDEMPOTENCY_KEY"] == "rollout-1:gstg"
    # GitLab adds the trigger request (without its token) as a file variable.
    payload = json.loads(variables["TRIGGER_PAYLOAD"])
    assert payload["variables"]["IDEMPOTENCY_KEY"] == "rollout-1:gstg"
    assert DEPLOYER_TRIGGER_TOKEN not in variables["TRIGGER_PAYLOAD"]
    counts = gitlab_standin.counters()
    assert counts.triggered_pipelines_by_env == {"gstg": 1}
    assert counts.requests_to("trigger", "POST") == 1


def test_trigger_accepts_form_multipart_and_query_parameters(gitlab_standin):
    url = f"{gitlab_standin.api_url}/projects/{DEPLOYER.id}/trigger/pipeline"
    form = requests.post(url, data={"token": DEPLOYER_TRIGGER_TOKEN, "ref": "master",
                                    "variables[DEPLOY_ENVIRONMENT]": "gstg"}, timeout=5)
    multipart = requests.post(url, files={"token": (None, DEPLOYER_TRIGGER_TOKEN), "ref": (None, "master"),
                                          "variables[DEPLOY_ENVIRONMENT]": (None, "gprd-cny")}, timeout=5)
    query = requests.post(f"{url}?token={DEPLOYER_TRIGGER_TOKEN}&ref=next-gen",
                          data={"variables[DEPLOY_ENVIRONMENT]": "gprd"}, timeout=5)

    assert [r.status_code for r in (form, multipart, query)] == [201, 201, 201]
    assert query.json()["ref"] == "next-gen"
    assert gitlab_standin.counters().triggered_pipelines_by_env == {"gstg": 1, "gprd-cny": 1, "gprd": 1}


def test_trigger_refusals_look_like_gitlabs_and_create_nothing(gitlab_standin, gitlab_client):
    project = gitlab_client.projects.get(DEPLOYER_PATH, lazy=True)
    with pytest.raises(gitlab.GitlabCreateError) as wrong_token:
        project.trigger_pipeline("master", "not-the-token")
    with pytest.raises(gitlab.GitlabCreateError) as not_strings:
        project.trigger_pipeline("master", DEPLOYER_TRIGGER_TOKEN, variables={"CHECKMODE": True})
    missing = requests.post(f"{gitlab_standin.api_url}/projects/{DEPLOYER.id}/trigger/pipeline",
                            json={"variables": {}}, timeout=5)

    assert (wrong_token.value.response_code, wrong_token.value.error_message) == (404, "404 Not Found")
    assert gitlab_standin.counters().trigger_requests_by_env == {"": 3}
    assert not_strings.value.response_code == 400
    assert (missing.status_code, missing.json()) == (400, {"error": "ref is missing, token is missing"})
    assert gitlab_standin.counters().pipelines_created == 0


def test_unknown_ref_is_refused_when_the_project_knows_its_refs(standin_factory):
    strict = ProjectSpec(id=77, path="group/strict", jobs=(JobSpec("build", "build"),),
                         trigger_tokens=("strict-token",), known_refs=frozenset({"v1.0"}))
    standin = standin_factory(World([strict], clock=VirtualClock()))
    project = make_client(standin).projects.get("group/strict", lazy=True)

    with pytest.raises(gitlab.GitlabCreateError) as refused:
        project.trigger_pipeline("no-such-ref", "strict-token")
    tagged = project.trigger_pipeline("v1.0", "strict-token")

    assert refused.value.response_code == 400
    assert json.loads(refused.value.response_body) == {"message": {"base": ["Reference not found"]}}
    assert project.pipelines.get(tagged.id).tag is True


# --- authentication and routing -------------------------------------------------------------------


def test_reads_need_a_valid_private_token(gitlab_standin):
    wrong = make_client(gitlab_standin, private_token="wrong-token")
    anonymous = make_client(gitlab_standin, private_token=None)

    with pytest.raises(gitlab.GitlabAuthenticationError) as refused:
        wrong.projects.get(DEPLOYER_PATH)
    with pytest.raises(gitlab.GitlabAuthenticationError):
        anonymous.projects.get(DEPLOYER.id, lazy=True).pipelines.list()
    # A trigger token is enough to trigger, as on GitLab.
    created = trigger(anonymous, "gstg")

    assert (refused.value.response_code, refused.value.error_message) == (401, "401 Unauthorized")
    assert created.status == "created"


def test_encoded_path_and_numeric_id_reach_the_same_project(gitlab_client):
    by_path = gitlab_client.projects.get(DEPLOYER_PATH)
    by_id = gitlab_client.projects.get(DEPLOYER.id)
    created = trigger(gitlab_client, "gstg")

    assert by_path.id == by_id.id == DEPLOYER.id
    assert by_path.path_with_namespace == DEPLOYER_PATH
    assert by_path.pipelines.get(created.id).id == by_id.pipelines.get(created.id).id == created.id


def test_routing_uses_the_raw_path_and_every_answer_is_json(gitlab_standin):
    headers = {"PRIVATE-TOKEN": STANDIN_TOKEN}
    api = gitlab_standin.api_url
    answers = {
        "encoded": requests.get(f"{api}/projects/{urllib.parse.quote(DEPLOYER_PATH, safe='')}",
                                headers=headers, timeout=5),
        "unencoded": requests.get(f"{api}/projects/{DEPLOYER_PATH}", headers=headers, timeout=5),
        "no project": requests.get(f"{api}/projects/nobody%2Fnothing", headers=headers, timeout=5),
        "no pipeline": requests.get(f"{api}/projects/{DEPLOYER.id}/pipelines/999999", headers=headers,
                                    timeout=5),
        "bad id": requests.get(f"{api}/projects/{DEPLOYER.id}/pipelines/abc", headers=headers, timeout=5),
        "wrong method": requests.delete(f"{api}/projects/{DEPLOYER.id}/pipelines", headers=headers,
                                        timeout=5),
    }

    assert {k: r.status_code for k, r in answers.items()} == {
        "encoded": 200, "unencoded": 404, "no project": 404, "no pipeline": 404, "bad id": 400,
        "wrong method": 405,
    }
    assert answers["no project"].json() == {"message": "404 Project Not Found"}
    assert answers["unencoded"].json() == {"error": "404 Not Found"}
    assert all(r.headers["Content-Type"] == "application/json" for r in answers.values())


def test_malformed_requests_get_json_and_logs_never_show_tokens(standin_factory, caplog):
    caplog.set_level(logging.INFO, logger="deploystate_backends.gitlab_standin")
    secret = "s3cr3t-value-never-logged"
    standin = standin_factory(tokens=frozenset({secret}))
    requests.get(f"{standin.api_url}/projects/{DEPLOYER.id}?private_token={secret}", timeout=5)
    requests.get(f"{standin.api_url}/projects/{DEPLOYER.id}", headers={"PRIVATE-TOKEN": secret}, timeout=5)
    requests.post(f"{standin.api_url}/projects/{DEPLOYER.id}/trigger/pipeline"
                  f"?token={DEPLOYER_TRIGGER_TOKEN}&ref=master", timeout=5)
    trigger(make_client(standin, private_token=secret), "gstg")
    host, port = standin.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(f"GET /api/v4/projects?private_token={secret} HTTP/1.1 junk\r\n\r\n".encode())
        chunks = []
        while chunk := raw.recv(65536):  # the server closes the connection after the answer
            chunks.append(chunk)
        answer = b"".join(chunks).decode()
    head, _, body = answer.partition("\r\n\r\n")

    assert head.startswith("HTTP/1.1 400")
    assert "Content-Type: application/json" in head
    assert json.loads(body)["error"].startswith("400 ")
    assert standin.counters().triggered_pipelines_by_env == {"": 1, "gstg": 1}
    assert "private_token=[REDACTED]" in caplog.text
    assert "token=[REDACTED]" in caplog.text
    for token in (secret, DEPLOYER_TRIGGER_TOKEN):
        assert token not in caplog.text


# --- listing: filters and pagination --------------------------------------------------------------


def test_list_filters_order_and_sort(gitlab_standin, gitlab_client):
    world = gitlab_standin.world
    world.script(DEPLOYER_PATH, "gprd", outcome=Script.fail())
    gstg = trigger(gitlab_client, "gstg")
    gprd = trigger(gitlab_client, "gprd", ref="next-gen")
    run_until_quiet(world)
    pushed = world.seed_pipeline(DEPLOYER_PATH, "master", source="push").pipeline_id
    project = gitlab_client.projects.get(DEPLOYER_PATH, lazy=True)

    def ids(**filters):
        return [p.id for p in project.pipelines.list(get_all=True, **filters)]

    assert ids() == [pushed, gprd.id, gstg.id]  # newest first by default
    assert ids(sort="asc") == [gstg.id, gprd.id, pushed]
    assert ids(ref="next-gen") == [gprd.id]
    assert ids(status="failed") == [gprd.id]
    assert ids(status="success") == [gstg.id]
    assert ids(source="trigger", sort="asc") == [gstg.id, gprd.id]
    assert ids(source="push") == [pushed]
    assert ids(sha=gprd.sha, ref="next-gen") == [gprd.id]
    assert ids(scope="finished", order_by="status", sort="asc") == [gprd.id, gstg.id]
    assert ids(scope="tags") == []
    assert ids(updated_after="2100-01-01T00:00:00Z") == []
    with pytest.raises(gitlab.GitlabListError) as bad:
        project.pipelines.list(order_by="color")
    assert bad.value.response_code == 400


@pytest.mark.parametrize(("count", "per_page"), [(0, 20), (1, 1), (10, 10), (11, 10), (45, 20), (45, 7)])
def test_get_all_and_the_iterator_walk_every_page(gitlab_standin, gitlab_client, count, per_page):
    created = [gitlab_standin.world.trigger(DEPLOYER_PATH, "master", {"N": str(i)}).id for i in range(count)]
    project = gitlab_client.projects.get(DEPLOYER.id, lazy=True)

    everything = project.pipelines.list(get_all=True, per_page=per_page)
    pages = project.pipelines.list(iterator=True, per_page=per_page)
    walked = [p.id for p in pages]
    expected_pages = max(math.ceil(count / per_page), 1)

    assert [p.id for p in everything] == walked == sorted(created, reverse=True)
    assert (pages.total, pages.total_pages, pages.per_page) == (count, expected_pages, per_page)
    assert gitlab_standin.counters().requests_to("pipelines", "GET") == 2 * expected_pages


def test_page_headers_and_links_keep_filters(gitlab_standin):
    for _ in range(5):
        gitlab_standin.world.trigger(DEPLOYER_PATH, "master")
    answer = requests.get(f"{gitlab_standin.api_url}/projects/{urllib.parse.quote(DEPLOYER_PATH, safe='')}"
                          "/pipelines?ref=master&per_page=2&page=2",
                          headers={"PRIVATE-TOKEN": STANDIN_TOKEN}, timeout=5)

    headers = answer.headers
    assert [headers[h] for h in ("X-Page", "X-Per-Page", "X-Total", "X-Total-Pages", "X-Next-Page",
                                 "X-Prev-Page")] == ["2", "2", "5", "3", "3", "1"]
    assert set(answer.links) == {"prev", "next", "first", "last"}
    next_url = answer.links["next"]["url"]
    encoded = "gitlab-com%2Fgl-infra%2Fdeployer"
    assert next_url.startswith(f"{gitlab_standin.api_url}/projects/{encoded}/pipelines?")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(next_url).query) == {
        "ref": ["master"], "page": ["3"], "per_page": ["2"]}


# --- progress over time and scripted outcomes -----------------------------------------------------


def test_a_pipeline_moves_through_its_statuses_by_itself(gitlab_standin, gitlab_client):
    world = gitlab_standin.world
    created = trigger(gitlab_client, "gstg")
    pipeline = gitlab_client.projects.get(DEPLOYER_PATH, lazy=True).pipelines.get(created.id)
    seen = [pipeline.status]
    for step in (1, 5, 60, 10, 3600, 200):
        world.advance(step)
        pipeline.refresh()
        seen.append(pipeline.status)

    assert seen == ["created", "pending", "running", "running", "running", "running", "success"]
    assert pipeline.duration == DEPLOY_TOTAL_S - 6  # it started running after 1 s + 5 s queued
    assert pipeline.queued_duration == 6
    assert statuses(pipeline) == {"prepare": "success", "deploy": "success", "rollback-check": "manual",
                                  "finish": "success"}


def test_durations_come_from_the_environment_script(gitlab_standin, gitlab_client):
    world = gitlab_standin.world
    world.script(DEPLOYER_PATH, "gprd", timing=Timing(created_s=0, pending_s=0, running_s=7200,
                                                        other_running_s=0))
    quick = trigger(gitlab_client, "gstg")
    slow = trigger(gitlab_client, "gprd")
    world.advance(DEPLOY_TOTAL_S)
    project = gitlab_client.projects.get(DEPLOYER_PATH, lazy=True)

    assert project.pipelines.get(quick.id).status == "success"
    assert project.pipelines.get(slow.id).status == "running"
    world.advance(7200)
    assert project.pipelines.get(slow.id).duration == 7200


def test_a_failed_deployment_retried_by_a_human_succeeds(gitlab_standin, gitlab_client):
    world = gitlab_standin.world
    world.script(DEPLOYER_PATH, "gprd", outcome=Script.fail_then_succeed())
    created = trigger(gitlab_client, "gprd")
    run_until_quiet(world)
    project = gitlab_client.projects.get(DEPLOYER_PATH, lazy=True)
    pipeline = project.pipelines.get(created.id)
    assert pipeline.status == "failed"
    assert statuses(pipeline)["finish"] == "skipped"
    failed = next(j for j in pipeline.jobs.list() if j.status == "failed")
    assert failed.failure_reason == "script_failure"

    retried = project.jobs.get(failed.id, lazy=True).retry()
    pipeline.refresh()
    assert (retried["status"], retried["name"]) == ("pending", "deploy")
    assert retried["id"] != failed.id
    assert pipeline.status == "running"
    assert statuses(pipeline)["finish"] == "created"
    run_until_quiet(world)
    pipeline.refresh()

    assert pipeline.status == "success"
    assert statuses(pipeline) == {"prepare": "success", "deploy": "success", "rollback-check": "manual",
                                  "finish": "success"}
    with_retried = pipeline.jobs.list(include_retried=True, get_all=True)
    assert sorted(j.status for j in with_retried if j.name == "deploy") == ["failed", "success"]


def test_scripts_per_environment_and_for_a_number_of_pipelines(gitlab_standin, gitlab_client):
    world = gitlab_standin.world
    world.script(DEPLOYER_PATH, "gprd", outcome=Script.fail(), times=1)
    world.script(DEPLOYER_PATH, "gprd-cny", outcome=Script.hang())
    world.script(DEPLOYER_PATH, "gstg-cny", outcome=Script.stuck("waiting_for_callback"))
    world.script(DEPLOYER_PATH, "pre", outcome=Script.stuck("some_status_from_the_future"))
    first_gprd, second_gprd, canary, callback, future, staging = (
        trigger(gitlab_client, env) for env in ("gprd", "gprd", "gprd-cny", "gstg-cny", "pre", "gstg"))
    world.advance(10 * DEPLOY_TOTAL_S)
    project = gitlab_client.projects.get(DEPLOYER_PATH, lazy=True)

    def status(p):
        return project.pipelines.get(p.id).status

    assert status(first_gprd) == "failed"
    assert status(second_gprd) == "success"
    assert status(canary) == "running"
    assert statuses(project.pipelines.get(canary.id))["deploy"] == "running"
    assert status(callback) == "waiting_for_callback"
    assert status(future) == "some_status_from_the_future"
    assert status(staging) == "success"


def test_retry_and_cancel_pipelines(gitlab_standin, gitlab_client):
    world = gitlab_standin.world
    world.script(DEPLOYER_PATH, "gprd", outcome=Script.fail_then_succeed())
    failing = trigger(gitlab_client, "gprd")
    running = trigger(gitlab_client, "gstg")
    world.advance(DEPLOY_TOTAL_S - 38)  # gprd's deploy has failed; gstg runs its finish job
    project = gitlab_client.projects.get(DEPLOYER_PATH, lazy=True)
    assert project.pipelines.get(failing.id).status == "failed"

    retried = project.pipelines.get(failing.id).retry()
    canceled = project.pipelines.get(running.id).cancel()
    run_until_quiet(world)

    assert retried["status"] == "running"
    assert canceled["status"] == "canceled"
    assert statuses(project.pipelines.get(running.id)) == {
        "prepare": "success", "deploy": "success", "rollback-check": "manual", "finish": "canceled"}
    assert project.pipelines.get(failing.id).status == "success"
    # Retrying a pipeline with nothing failed changes nothing; cancel answers 200 whatever the state.
    assert project.pipelines.get(failing.id).retry()["status"] == "success"
    assert project.pipelines.get(failing.id).cancel()["status"] == "success"


def test_canceling_is_a_status_of_its_own_when_jobs_take_time_to_stop(standin_factory):
    standin = standin_factory(World(clock=VirtualClock(), canceling_s=30))
    gl = make_client(standin)
    created = trigger(gl, "gstg")
    standin.world.advance(100)
    pipeline = gl.projects.get(DEPLOYER_PATH, lazy=True).pipelines.get(created.id)

    assert pipeline.cancel()["status"] == "canceling"
    standin.world.advance(30)
    pipeline.refresh()
    assert pipeline.status == "canceled"


def test_manual_jobs_are_played_through_the_jobs_api(standin_factory):
    gated = ProjectSpec(id=55, path="group/gated", trigger_tokens=("gated-token",), jobs=(
        JobSpec("build", "build"), JobSpec("promote", "gate", when="manual"), JobSpec("deploy", "deploy")),
        timing=Timing(created_s=0, pending_s=1, running_s=10, other_running_s=10))
    standin = standin_factory(World([gated], clock=VirtualClock()))
    gl = make_client(standin)
    project = gl.projects.get("group/gated", lazy=True)
    created = project.trigger_pipeline("main", "gated-token")
    run_until_quiet(standin.world)
    pipeline = project.pipelines.get(created.id)
    assert pipeline.status == "manual"
    jobs = {j.name: j for j in pipeline.jobs.list()}
    assert not hasattr(jobs["promote"], "play")  # listed jobs are not playable objects

    with pytest.raises(gitlab.GitlabJobPlayError) as unplayable:
        project.jobs.get(jobs["build"].id, lazy=True).play()
    with pytest.raises(gitlab.GitlabJobRetryError) as not_retryable:
        project.jobs.get(jobs["promote"].id, lazy=True).retry()
    promote = project.jobs.get(jobs["promote"].id, lazy=True)
    promote.play()
    assert promote.status == "pending"
    run_until_quiet(standin.world)

    assert project.pipelines.get(created.id).status == "success"
    assert (unplayable.value.response_code, unplayable.value.error_message) == (
        400, "400 Bad request - Unplayable Job")
    assert not_retryable.value.response_code == 403


def test_delayed_jobs_wait_as_scheduled_then_run_or_are_played_early(standin_factory):
    delayed = ProjectSpec(id=56, path="group/delayed", trigger_tokens=("delayed-token",), jobs=(
        JobSpec("build", "build"), JobSpec("later", "wait", when="delayed", start_in_s=600),
        JobSpec("deploy", "deploy")),
        timing=Timing(created_s=0, pending_s=1, running_s=10, other_running_s=10))
    standin = standin_factory(World([delayed], clock=VirtualClock()))
    project = make_client(standin).projects.get(delayed.path, lazy=True)
    waiting, early = (project.trigger_pipeline("main", "delayed-token") for _ in range(2))
    standin.world.advance(30)
    assert {project.pipelines.get(p.id).status for p in (waiting, early)} == {"scheduled"}
    [later] = [j for j in project.pipelines.get(early.id, lazy=True).jobs.list() if j.name == "later"]
    assert later.status == "scheduled"

    project.jobs.get(later.id, lazy=True).play()  # "Run now"
    standin.world.advance(60)
    assert project.pipelines.get(early.id).status == "success"
    assert project.pipelines.get(waiting.id).status == "scheduled"
    standin.world.advance(600)
    assert project.pipelines.get(waiting.id).status == "success"
    with pytest.raises(ValueError, match="start_in_s is for when='delayed'"):
        JobSpec("x", "x", start_in_s=5)


def test_jobs_limited_to_environments_are_only_in_their_pipelines(standin_factory):
    gate = JobSpec("approve", "approve", when="manual", environments={"gprd"})
    deployer = attrs.evolve(DEPLOYER, jobs=(DEPLOYER.jobs[0], gate, *DEPLOYER.jobs[1:]))
    standin = standin_factory(World([deployer], clock=VirtualClock()))
    gl = make_client(standin)
    staging, production = trigger(gl, "gstg"), trigger(gl, "gprd")
    run_until_quiet(standin.world)
    project = gl.projects.get(DEPLOYER_PATH, lazy=True)

    assert "approve" not in statuses(project.pipelines.get(staging.id))
    assert project.pipelines.get(staging.id).status == "success"
    assert statuses(project.pipelines.get(production.id))["approve"] == "manual"
    assert project.pipelines.get(production.id).status == "manual"  # blocked on a person


def test_trigger_tokens_are_listed_to_maintainers_in_full_or_shortened(standin_factory):
    full = make_client(standin_factory()).projects.get(DEPLOYER_PATH, lazy=True).triggers.list(get_all=True)
    assert [t.token for t in full] == list(DEPLOYER.trigger_tokens)
    masked = standin_factory(mask_trigger_tokens=True)
    shortened = make_client(masked).projects.get(DEPLOYER_PATH, lazy=True).triggers.list(get_all=True)
    assert [t.token for t in shortened] == [t[:4] for t in DEPLOYER.trigger_tokens]
    developer = standin_factory(tokens=frozenset({STANDIN_TOKEN, "developer-token"}),
                                maintainer_tokens=frozenset({STANDIN_TOKEN}))
    with pytest.raises(gitlab.GitlabListError) as forbidden:
        make_client(developer, private_token="developer-token").projects.get(
            DEPLOYER_PATH, lazy=True).triggers.list(get_all=True)
    assert forbidden.value.response_code == 403
    assert developer.counters().requests_to("triggers") == 1


def test_bridges_mirror_their_downstream_pipeline_and_a_downstream_retry_moves_upstream(
        gitlab_standin, gitlab_client):
    world = gitlab_standin.world
    world.script(DEPLOYER_PATH, "gstg", outcome=Script.fail_then_succeed())
    seed = world.seed_pipeline(RELEASE_TOOLS.path, "master", variables={"DEPLOY_ENVIRONMENT": "gstg"})
    run_until_quiet(world)
    upstream = gitlab_client.projects.get(RELEASE_TOOLS.path, lazy=True).pipelines.get(seed.pipeline_id)
    [bridge] = upstream.bridges.list()
    downstream_id = bridge.downstream_pipeline["id"]
    deployer = gitlab_client.projects.get(DEPLOYER.id, lazy=True)
    downstream = deployer.pipelines.get(downstream_id)
    assert (upstream.status, bridge.status, downstream.status) == ("failed", "failed", "failed")
    assert downstream.source == "pipeline"
    assert {v.key: v.value for v in downstream.variables.list()}["DEPLOY_ENVIRONMENT"] == "gstg"
    assert statuses(upstream) == {"start": "success", "notify": "skipped"}  # jobs exclude bridges

    downstream.retry()
    upstream.refresh()
    assert (upstream.status, upstream.bridges.list()[0].status) == ("running", "running")
    run_until_quiet(world)
    upstream.refresh()

    assert (upstream.status, deployer.pipelines.get(downstream_id).status) == ("success", "success")
    assert statuses(upstream)["notify"] == "success"


def test_package_pipelines_appear_after_a_delay(gitlab_standin, gitlab_client):
    tag = "13.10.202103011220+aaaaaaaaaaaa.bbbbbbbbbbbb"
    gitlab_standin.world.seed_pipeline(CNG.path, tag, after_s=300)
    project = gitlab_client.projects.get(CNG.path, lazy=True)

    before = project.pipelines.list(ref=tag)
    gitlab_standin.world.advance(300)
    [after] = project.pipelines.list(ref=tag)

    assert before == []
    assert project.pipelines.get(after.id).tag is True
    assert after.status == "created"


# --- faults, as python-gitlab surfaces them -------------------------------------------------------


def test_server_errors_raise_and_are_retried_only_when_asked(gitlab_standin):
    gitlab_standin.faults.next(1, "error", route="pipelines", status=503)
    plain = make_client(gitlab_standin).projects.get(DEPLOYER.id, lazy=True)
    with pytest.raises(gitlab.GitlabListError) as failed:
        plain.pipelines.list()
    gitlab_standin.faults.next(1, "error", route="pipelines", status=500)
    patient = make_client(gitlab_standin, retry_transient_errors=True).projects.get(DEPLOYER.id, lazy=True)

    assert patient.pipelines.list() == []
    assert failed.value.response_code == 503
    assert gitlab_standin.counters().requests_to("pipelines", "GET") == 3
    assert gitlab_standin.counters().faults == {("error", "pipelines"): 2}


@pytest.fixture
def recorded_sleeps(monkeypatch):
    """python-gitlab's own waits (Retry-After, back-off), recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(gitlab.utils, "time", types.SimpleNamespace(sleep=waits.append, time=time.time))
    return waits


def test_rate_limits_are_obeyed_with_retry_after_then_given_up(gitlab_standin, recorded_sleeps):
    project = make_client(gitlab_standin).projects.get(DEPLOYER.id, lazy=True)
    gitlab_standin.faults.next(2, "rate_limit", route="pipelines", retry_after=7)
    assert project.pipelines.list() == []
    assert recorded_sleeps == [7, 7]

    gitlab_standin.faults.next(11, "rate_limit", route="pipeline", retry_after=3)
    with pytest.raises(gitlab.GitlabGetError) as gave_up:
        project.pipelines.get(1)
    assert gave_up.value.response_code == 429
    assert recorded_sleeps[2:] == [3] * 10  # python-gitlab's default max_retries


def test_a_slow_answer_times_out_in_the_client(gitlab_standin):
    gitlab_standin.faults.next(1, "slow", route="project", delay_s=2.0)
    impatient = make_client(gitlab_standin, timeout=0.2)

    with pytest.raises(requests.exceptions.ReadTimeout):
        impatient.projects.get(DEPLOYER.id)
    assert make_client(gitlab_standin).projects.get(DEPLOYER.id).id == DEPLOYER.id
    assert gitlab_standin.counters().faults == {("slow", "project"): 1}


def test_a_dropped_connection_is_a_connection_error_unless_retried(gitlab_standin, recorded_sleeps):
    gitlab_standin.faults.next(1, "drop", route="project")
    with pytest.raises(requests.exceptions.ConnectionError):
        make_client(gitlab_standin).projects.get(DEPLOYER.id)
    gitlab_standin.faults.next(1, "drop", route="project")

    project = make_client(gitlab_standin, retry_transient_errors=True).projects.get(DEPLOYER.id)

    assert project.id == DEPLOYER.id
    assert gitlab_standin.counters().requests_to("project") == 3


@pytest.mark.parametrize(("drop", "error"), [(False, gitlab.GitlabCreateError),
                                               (True, requests.exceptions.ConnectionError)])
def test_a_lost_trigger_response_leaves_exactly_one_pipeline(gitlab_standin, gitlab_client, drop, error):
    gitlab_standin.faults.next(1, "lost_response", route="trigger", drop=drop)

    with pytest.raises(error):
        trigger(gitlab_client, "gprd", key="rollout-7:gprd")
    project = gitlab_client.projects.get(DEPLOYER_PATH, lazy=True)
    found = [p for p in project.pipelines.list(get_all=True, source="trigger")
             if {v.key: v.value for v in p.variables.list()}.get("IDEMPOTENCY_KEY") == "rollout-7:gprd"]

    assert len(found) == 1
    assert gitlab_standin.counters().triggered_pipelines_by_env == {"gprd": 1}


def test_retry_transient_errors_turns_a_lost_trigger_response_into_a_duplicate(gitlab_standin,
                                                                              recorded_sleeps):
    gitlab_standin.faults.next(1, "lost_response", route="trigger", status=502)
    patient = make_client(gitlab_standin, retry_transient_errors=True)

    created = trigger(patient, "gprd", key="rollout-8:gprd")

    assert created.status == "created"
    assert gitlab_standin.counters().triggered_pipelines_by_env == {"gprd": 2}
    assert gitlab_standin.counters().requests_to("trigger", "POST") == 2


def fault_pattern(standin_factory, seed: int) -> list[int]:
    standin = standin_factory(seed=seed)
    standin.faults.rate(0.3, "error", route="project", status=500)
    codes = []
    for _ in range(30):
        codes.append(requests.get(f"{standin.api_url}/projects/{DEPLOYER.id}",
                                  headers={"PRIVATE-TOKEN": STANDIN_TOKEN}, timeout=5).status_code)
    return codes


def test_random_faults_are_the_same_for_the_same_seed(standin_factory):
    first, again, other = (fault_pattern(standin_factory, s) for s in (7, 7, 8))

    assert first == again
    assert first != other
    assert set(first) == {200, 500}


# --- counters, threads, start and stop ------------------------------------------------------------


def test_concurrent_triggers_are_all_counted_once(gitlab_standin):
    ids: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        gl = make_client(gitlab_standin)
        for i in range(5):
            created = trigger(gl, f"env{n}", key=f"{n}-{i}")
            with lock:
                ids.append(created.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(set(ids)) == 30
    counts = gitlab_standin.counters()
    assert counts.triggered_pipelines_by_env == {f"env{n}": 5 for n in range(6)}
    assert counts.requests == {("POST", "trigger"): 30}
    assert counts.pipelines_by_project == {DEPLOYER_PATH: 30}


def test_stopping_a_stand_in_that_never_started_returns():
    standin = Standin(World(clock=VirtualClock()))
    stopper = threading.Thread(target=standin.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive()


def test_stop_cuts_slow_answers_and_frees_the_port():
    standin = Standin(World(clock=VirtualClock())).start()
    standin.faults.next(1, "slow", route="project", delay_s=60)
    with pytest.raises(requests.exceptions.ReadTimeout):
        make_client(standin, timeout=0.2).projects.get(DEPLOYER.id)
    host, port = standin.url.removeprefix("http://").split(":")

    stopper = threading.Thread(target=standin.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=10)

    assert not stopper.is_alive()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()


def test_serve_blocks_until_stopped():
    ready = threading.Event()
    box: list[Standin] = []

    def on_ready(standin: Standin) -> None:
        box.append(standin)
        ready.set()

    thread = threading.Thread(target=serve, kwargs={"world": World(clock=VirtualClock()), "ready": on_ready},
                              daemon=True)
    thread.start()
    assert ready.wait(10)
    standin = box[0]
    assert make_client(standin).projects.get(DEPLOYER.id).id == DEPLOYER.id
    standin.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_an_accelerated_clock_finishes_an_hour_long_deployment_by_itself(standin_factory):
    standin = standin_factory(World(clock=AcceleratedClock(200_000)))
    gl = make_client(standin)
    created = trigger(gl, "gstg")
    pipeline = gl.projects.get(DEPLOYER_PATH, lazy=True).pipelines.get(created.id)
    for _ in range(500):
        if pipeline.status == "success":
            break
        time.sleep(0.01)
        pipeline.refresh()
    assert pipeline.status == "success"


# --- the command line -----------------------------------------------------------------------------


def test_command_line_options_shape_the_world():
    args = build_parser().parse_args([
        "--speed", "60", "--script", "gprd=fail-then-succeed", "--script", "gstg=failed,failed,success",
        "--fault", "error=1@project", "--package-tag", "13.10.202103011220", "--deploy-seconds", "120",
        "--trigger-token", "deployer=rehearsal-token", "--token", "rehearsal-private",
    ])
    world, faults, tokens = build(args)

    deployer = world.project("deployer")
    assert deployer is not None
    assert deployer.trigger_tokens == ("rehearsal-token",)
    assert deployer.timing.running_s == 120
    assert world.trigger(deployer, "master", {"DEPLOY_ENVIRONMENT": "gprd"}).script == (
        Script.fail_then_succeed())
    assert world.trigger(deployer, "master", {"DEPLOY_ENVIRONMENT": "gstg"}).script.attempts == (
        "failed", "failed", "success")
    assert {p.project_id for p in world.pipelines() if p.ref == "13.10.202103011220"} == {20, 30}
    assert faults.decide("project", "GET") is not None
    assert faults.decide("pipeline", "GET") is None
    assert tokens == frozenset({"rehearsal-private"})


def test_command_line_errors_are_explained(capsys):
    assert main(["--script", "gprd"]) == 2
    assert "--script must look like NAME=VALUE" in capsys.readouterr().err


# --- the world's own invariants -------------------------------------------------------------------

_ACTIONS = st.lists(st.tuples(st.sampled_from(["advance", "trigger", "retry", "cancel", "play"]),
                              st.integers(min_value=0, max_value=4000)), max_size=25)


@given(actions=_ACTIONS, outcome=st.sampled_from(["success", "failed", "running", "waiting_for_callback"]))
def test_statuses_and_timestamps_stay_consistent_whatever_happens(actions, outcome):
    world = World(DEFAULT_PROJECTS, clock=VirtualClock())
    world.script(DEPLOYER_PATH, outcome=Script((outcome, "success")))
    world.trigger(DEPLOYER_PATH, "master", {"DEPLOY_ENVIRONMENT": "gstg"})
    for action, n in actions:
        pipelines = world.pipelines()
        pipeline = pipelines[n % len(pipelines)]
        jobs = pipeline.latest_jobs()
        if action == "advance":
            world.advance(n)
        elif action == "trigger":
            world.seed_pipeline(RELEASE_TOOLS.path if n % 2 else DEPLOYER_PATH, "master", after_s=n % 100)
        elif action == "retry":
            world.retry_job(jobs[n % len(jobs)])
        elif action == "cancel":
            world.cancel_pipeline(pipeline)
        else:
            world.play_job(jobs[n % len(jobs)])

        with world.lock:
            for p in world.pipelines():
                assert p.status == composite_status(p.latest_jobs())
                assert p.created_at <= p.updated_at <= world.now()
                for job in p.jobs:
                    moments = [m for m in (job.created_at, job.queued_at, job.started_at, job.finished_at)
                               if m is not None]
                    assert moments == sorted(moments)
                    assert job.next_at is None or job.next_at >= world.now()


# --- issues with labels and deploy freeze periods (what production checks read) ------------------


@pytest.fixture
def tracker(standin_factory):
    """A stand-in with the production issue tracker beside the default projects."""
    from deploystate_backends.gitlab_standin.issues import PRODUCTION
    return standin_factory(World([*DEFAULT_PROJECTS, PRODUCTION], clock=VirtualClock())), PRODUCTION


def test_issues_are_filtered_by_all_their_labels_and_by_state(tracker):
    standin, production = tracker
    world = standin.world
    s1 = world.add_issue(production, "S1", ["Incident::Active", "severity::1"], issue_type="incident")
    world.add_issue(production, "S3", ["Incident::Active", "severity::3"])
    closed = world.add_issue(production, "S1 resolved", ["Incident::Active", "severity::1"])
    world.add_issue(production, "no labels")
    world.advance(60)
    world.close_issue(closed, by="oncall")
    project = make_client(standin).projects.get(production.path, lazy=True)

    def titles(**filters: str) -> list[str]:
        return [i.title for i in project.issues.list(get_all=True, **filters)]

    assert titles(labels="Incident::Active,severity::1", state="opened") == ["S1"]
    assert titles(labels="Incident::Active,severity::1") == ["S1 resolved", "S1"]  # newest first
    assert titles(labels="Incident::Active", state="closed") == ["S1 resolved"]
    assert titles(labels="None") == ["no labels"]
    assert titles(labels="Any", state="opened", sort="asc") == ["S1", "S3"]
    assert titles(labels="severity::2") == []
    [issue] = project.issues.list(labels="severity::1", state="opened", get_all=True)
    assert (issue.iid, issue.issue_type, issue.type) == (s1.iid, "incident", "INCIDENT")
    assert issue.web_url == f"{standin.url}/{production.path}/-/issues/{s1.iid}"
    [gone] = project.issues.list(state="closed", get_all=True)
    assert gone.attributes["closed_by"]["username"] == "oncall" and gone.closed_at is not None
    for bad in ({"state": "open"}, {"order_by": "color"}, {"sort": "up"}):
        with pytest.raises(gitlab.GitlabListError) as refused:
            project.issues.list(**bad)
        assert refused.value.response_code == 400


def test_an_issue_counts_its_notes(tracker):
    standin, production = tracker
    issue = standin.world.add_issue(production, "Release 13.10", ["release"])
    for body in ("Deployed to gstg", "Deployed to gprd-cny"):
        standin.world.add_note(issue, body)

    [listed] = make_client(standin).projects.get(production.id, lazy=True).issues.list(get_all=True)

    assert listed.user_notes_count == 2


@pytest.mark.parametrize(("count", "per_page"), [(0, 20), (21, 20), (45, 7)])
def test_issue_lists_paginate_like_the_other_lists(tracker, count, per_page):
    standin, production = tracker
    for n in range(count):
        standin.world.add_issue(production, f"incident {n}", ["Incident::Active", "severity::2"])
    project = make_client(standin).projects.get(production.id, lazy=True)

    pages = project.issues.list(iterator=True, per_page=per_page, labels="Incident::Active,severity::2")
    walked = [i.title for i in pages]

    assert walked == [f"incident {n}" for n in reversed(range(count))]
    assert (pages.total, pages.total_pages) == (count, max(math.ceil(count / per_page), 1))
    assert standin.counters().requests_to("issues", "GET") == max(math.ceil(count / per_page), 1)


def test_freeze_periods_are_listed_oldest_first_and_paginated(gitlab_standin, gitlab_client):
    world = gitlab_standin.world
    world.add_freeze_period(DEPLOYER, "0 23 * * 5", "0 8 * * 1")
    world.advance(10)
    world.add_freeze_period(DEPLOYER, "0 0 24 12 *", "0 0 2 1 *", "Europe/Berlin")
    encoded = urllib.parse.quote(DEPLOYER_PATH, safe="")

    periods = gitlab_client.http_list(f"/projects/{encoded}/freeze_periods", get_all=True, per_page=1)

    assert [(p["freeze_start"], p["freeze_end"], p["cron_timezone"]) for p in periods] == [
        ("0 23 * * 5", "0 8 * * 1", "UTC"), ("0 0 24 12 *", "0 0 2 1 *", "Europe/Berlin")]
    assert gitlab_standin.counters().requests_to("freeze_periods", "GET") == 2
    world.remove_freeze_periods(DEPLOYER)
    assert gitlab_client.http_list(f"/projects/{DEPLOYER.id}/freeze_periods", get_all=True) == []
    with pytest.raises(gitlab.GitlabHttpError) as missing:
        gitlab_client.http_list("/projects/999/freeze_periods", get_all=True)
    assert missing.value.response_code == 404

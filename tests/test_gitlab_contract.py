"""The stand-in answers in GitLab's documented shapes: same field names, same JSON types.

The examples in ``data/gitlab_examples/`` are copied from GitLab's documentation (the REST API
pages, and the webhook events page for the Pipeline Hook; each file names its page and section).
A stand-in answer (or hook) is compared with the documented example of
the same call, in a comparable state (a failed job with a failed job, ...):

- every field of the documented example is present;
- every field it has appears in at least one documented example of that kind of object;
- each field's JSON type is the documented one; null is accepted where the docs show null, or
  where the compared example leaves the field out (the docs show no value for that state).
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploystate_backends.gitlab_standin import DEPLOYER, RELEASE_TOOLS, Script, VirtualClock, World
from deploystate_backends.gitlab_standin.hooks import HookFaults, HookSender
from standin_fixtures import DEPLOYER_TRIGGER_TOKEN, HookCapture, make_client

EXAMPLES = Path(__file__).parent / "data" / "gitlab_examples"
# Fields GitLab shows only in some states; the docs' examples happen to be in those states.
CONDITIONAL = {
    "failure_reason": "exposed only for failed jobs",
    "artifacts_file": "exposed only for jobs with an artifacts archive",
    "source_pipeline": "sent only for a pipeline started by another pipeline's trigger job",
}
# Fields GitLab sends that the docs' example does not show (yet), with where GitLab builds them.
NEWER_THAN_THE_EXAMPLE = {
    "protected_ref": "Gitlab::DataBuilder::Pipeline#hook_attrs (lib/gitlab/data_builder/pipeline.rb)",
}
# Fields the example shows with a value that GitLab sends as null in other states.
NULL_IN_OTHER_STATES = {
    "merge_request": "null for a pipeline of no merge request (pipeline.merge_request && ...)",
}
# The same, in REST answers (``problems`` without ``hook``), with where GitLab builds them.
NULL_IN_OTHER_STATES_REST = {
    "closed_as_duplicate_of": "null for an issue not closed as a duplicate (API::Entities::Issue, _links)",
}


def example(name: str) -> Any:
    return json.loads((EXAMPLES / f"{name}.json").read_text())["example"]


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def problems(actual: Any, documented: dict[str, Any], family: list[dict[str, Any]], path: str = "",
             *, names_only: bool = False, hook: bool = False) -> list[str]:
    """How ``actual`` differs from ``documented``, judged against all examples of its ``family``.

    ``names_only`` checks field names alone: for states no example shows (a skipped job has
    no start time, where every documented job has one).  ``hook``: a webhook payload, where
    NEWER_THAN_THE_EXAMPLE and NULL_IN_OTHER_STATES apply.
    """
    if not isinstance(actual, dict):
        return [f"{path or 'answer'}: expected an object, got {kind(actual)}"]
    found = [f"{path}{key}: missing" for key in documented
             if key not in actual and key not in CONDITIONAL]
    known = {key for member in family for key in member}
    for key, value in actual.items():
        if hook and key in NEWER_THAN_THE_EXAMPLE:
            continue
        if key not in known:
            found.append(f"{path}{key}: not in any documented example")
            continue
        if names_only:
            continue
        shown = [member[key] for member in family if key in member]
        kinds = {kind(v) for v in shown}
        if value is None and key in (NULL_IN_OTHER_STATES if hook else NULL_IN_OTHER_STATES_REST):
            continue
        if kinds == {"null"} or (value is None and ("null" in kinds or key not in documented)):
            # The docs show null here, or do not show this field in this state at all.
            continue
        if kind(value) not in kinds:
            found.append(f"{path}{key}: {kind(value)}, documented as {' or '.join(sorted(kinds))}")
        elif isinstance(value, dict):
            nested = [v for v in shown if isinstance(v, dict)]
            required = documented[key] if isinstance(documented.get(key), dict) else {}
            found += problems(value, required, nested, f"{path}{key}.", hook=hook)
        elif isinstance(value, list):
            elements = [e for v in shown if isinstance(v, list) for e in v]
            objects = [e for e in elements if isinstance(e, dict)]
            element_kinds = {kind(e) for e in elements}
            for index, item in enumerate(value):
                if objects and isinstance(item, dict):
                    common = {k: objects[0][k] for k in set.intersection(*(set(o) for o in objects))}
                    found += problems(item, common, objects, f"{path}{key}[{index}].", hook=hook)
                elif element_kinds and kind(item) not in element_kinds:
                    found.append(f"{path}{key}[{index}]: {kind(item)}, documented as {sorted(element_kinds)}")
    return found


PIPELINES = [example(n) for n in ("pipeline_single", "trigger_pipeline", "pipeline_retry", "pipeline_cancel")]
PIPELINES_BASIC = example("pipelines_list")
JOBS = [*example("pipeline_jobs"),
        *(example(n) for n in ("job_single", "job_retry", "job_play", "job_cancel"))]
BRIDGES = example("pipeline_bridges")
VARIABLES = example("pipeline_variables")
TRIGGERS = example("triggers_list")
PIPELINE_HOOK = example("pipeline_hook")
# The list's example is a closed issue with a milestone and an assignee; New issue's is an open one
# without either, so together they show every state the stand-in's issues can be in.
ISSUES = [*example("issues_list"), example("issue_new")]
FREEZE_PERIODS = example("freeze_periods_list")


@pytest.fixture
def answers(gitlab_standin, gitlab_client):
    """One sample of every documented call, each in a state comparable to its example."""
    world = gitlab_standin.world
    gl = gitlab_client
    world.script(DEPLOYER.path, "gprd", outcome=Script.fail())
    base = f"/projects/{DEPLOYER.id}"

    def trigger(env: str) -> dict[str, Any]:
        return gl.http_post(f"{base}/trigger/pipeline", post_data={
            "ref": "master", "token": DEPLOYER_TRIGGER_TOKEN,
            "variables": {"DEPLOY_ENVIRONMENT": env, "DEPLOY_VERSION": "13.10.202103011220-abc.def"}})

    triggered = trigger("gstg")
    failing, failing_too = trigger("gprd"), trigger("gprd")
    coordinator = world.seed_pipeline(RELEASE_TOOLS.path, "master", variables={"DEPLOY_ENVIRONMENT": "gstg"})
    world.advance(100 * 3600)
    to_cancel = trigger("gstg")
    world.advance(100)
    jobs = gl.http_list(f"{base}/pipelines/{failing['id']}/jobs", get_all=True)
    failed_job = next(j for j in jobs if j["status"] == "failed")
    manual_job = next(j for j in jobs if j["status"] == "manual")
    other_failed = next(j for j in gl.http_list(f"{base}/pipelines/{failing_too['id']}/jobs", get_all=True)
                        if j["status"] == "failed")
    running_job = next(j for j in gl.http_list(f"{base}/pipelines/{to_cancel['id']}/jobs", get_all=True)
                       if j["status"] == "running")
    return {
        "trigger": triggered,
        "pipeline": gl.http_get(f"{base}/pipelines/{triggered['id']}"),
        "pipelines": gl.http_list(f"{base}/pipelines", get_all=True),
        "jobs": jobs,
        "job": gl.http_get(f"{base}/jobs/{failed_job['id']}"),
        "variables": gl.http_list(f"{base}/pipelines/{triggered['id']}/variables", get_all=True),
        "bridges": gl.http_list(f"/projects/{RELEASE_TOOLS.id}/pipelines/{coordinator.pipeline_id}/bridges",
                                get_all=True),
        "job_retry": gl.http_post(f"{base}/jobs/{other_failed['id']}/retry"),
        "job_play": gl.http_post(f"{base}/jobs/{manual_job['id']}/play"),
        "job_cancel": gl.http_post(f"{base}/jobs/{running_job['id']}/cancel"),
        "pipeline_retry": gl.http_post(f"{base}/pipelines/{failing['id']}/retry"),
        "pipeline_cancel": gl.http_post(f"{base}/pipelines/{to_cancel['id']}/cancel"),
        "triggers": gl.http_list(f"{base}/triggers", get_all=True),
    }


def test_every_example_names_its_source_in_gitlabs_documentation():
    files = sorted(EXAMPLES.glob("*.json"))
    assert len(files) == 18
    for path in files:
        data = json.loads(path.read_text())
        assert data["_source"].startswith(("https://docs.gitlab.com/api/",
                                           "https://docs.gitlab.com/user/project/integrations/")), path.name
        assert data["_section"] and data["_from"] and "example" in data, path.name


def test_pipelines_have_the_documented_shape(answers):
    assert answers["pipeline"]["status"] == "success"
    assert problems(answers["trigger"], example("trigger_pipeline"), PIPELINES) == []
    assert problems(answers["pipeline"], example("pipeline_single"), PIPELINES) == []
    assert problems(answers["pipeline_retry"], example("pipeline_retry"), PIPELINES) == []
    assert problems(answers["pipeline_cancel"], example("pipeline_cancel"), PIPELINES) == []
    assert len(answers["pipelines"]) == 5
    for item in answers["pipelines"]:
        assert problems(item, PIPELINES_BASIC[0], PIPELINES_BASIC) == []


def test_jobs_have_the_documented_shape(answers):
    failed = [j for j in answers["jobs"] if j["status"] == "failed"]
    assert len(failed) == 1
    assert problems(failed[0], example("pipeline_jobs")[1], JOBS) == []
    finished = [j for j in answers["jobs"] if j["status"] == "success"]
    assert [j["name"] for j in finished] == ["prepare"]
    for job in finished:
        assert problems(job, example("pipeline_jobs")[0], JOBS) == []
    for job in answers["jobs"]:  # skipped and manual jobs: no documented example to compare types
        assert problems(job, example("pipeline_jobs")[0], JOBS, names_only=True) == [], job["name"]
    assert problems(answers["job"], example("job_single"), JOBS) == []
    assert problems(answers["job_retry"], example("job_retry"), JOBS) == []
    assert problems(answers["job_play"], example("job_play"), JOBS) == []
    assert problems(answers["job_cancel"], example("job_cancel"), JOBS) == []


def test_bridges_and_variables_have_the_documented_shape(answers):
    [bridge] = answers["bridges"]
    assert bridge["downstream_pipeline"] is not None
    assert problems(bridge, BRIDGES[0], BRIDGES) == []
    assert {v["key"] for v in answers["variables"]} >= {"DEPLOY_ENVIRONMENT", "DEPLOY_VERSION"}
    for variable in answers["variables"]:
        assert problems(variable, VARIABLES[0], VARIABLES) == []


def test_the_comparison_notices_renamed_missing_and_mistyped_fields(answers):
    pipeline = dict(answers["pipeline"])
    pipeline["state"] = pipeline.pop("status")
    pipeline["duration"] = "34"
    pipeline["user"] = {**pipeline["user"], "id": "1"}
    job = {**answers["job"], "tag_list": [1]}

    assert sorted(problems(pipeline, example("pipeline_single"), PIPELINES)) == [
        "duration: string, documented as null or number",
        "state: not in any documented example",
        "status: missing",
        "user.id: string, documented as number",
    ]
    assert problems(job, example("job_single"), JOBS) == ["tag_list[0]: number, documented as ['string']"]


def test_trigger_token_lists_have_the_documented_shape(answers):
    assert [t["token"] for t in answers["triggers"]] == [DEPLOYER_TRIGGER_TOKEN]
    for trigger in answers["triggers"]:
        assert problems(trigger, TRIGGERS[0], TRIGGERS) == []


def test_issues_and_freeze_periods_have_the_documented_shape(standin_factory):
    from deploystate_backends.gitlab_standin.issues import PRODUCTION
    standin = standin_factory(World([DEPLOYER, PRODUCTION], clock=VirtualClock()))
    world = standin.world
    world.add_issue(PRODUCTION, "Elevated error rates", ["Incident::Active", "severity::1"],
                    description="The API answers 500", issue_type="incident")
    resolved = world.add_issue(PRODUCTION, "Failed migration", ["Incident::Resolved", "severity::2"])
    world.advance(3600)
    world.close_issue(resolved)
    world.add_freeze_period(DEPLOYER, "0 23 * * 5", "0 8 * * 1", "Europe/Berlin")
    gl = make_client(standin)

    opened = gl.http_list(f"/projects/{PRODUCTION.id}/issues", state="opened", get_all=True)
    closed = gl.http_list(f"/projects/{PRODUCTION.id}/issues", state="closed", get_all=True)
    periods = gl.http_list(f"/projects/{DEPLOYER.id}/freeze_periods", get_all=True)

    assert [i["state"] for i in opened + closed] == ["opened", "closed"]
    for issue in opened + closed:  # the list's example, judged against every documented issue
        assert problems(issue, example("issues_list")[0], ISSUES) == [], issue["title"]
    assert [p["cron_timezone"] for p in periods] == ["Europe/Berlin"]
    assert problems(periods[0], FREEZE_PERIODS[0], FREEZE_PERIODS) == []


# --- Pipeline Hooks, as the stand-in posts them -----------------------------------------------


@pytest.fixture
def capture() -> Iterator[tuple[str, list[tuple[dict[str, str], dict[str, Any]]]]]:
    """A plain HTTP server that keeps every hook posted to it: (url, received)."""
    received: list[tuple[dict[str, str], dict[str, Any]]] = []
    handler = type("Capture", (HookCapture,), {"received": received})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", received
        finally:
            server.shutdown()


def deliver_all(world: World, sender: HookSender) -> None:
    for _ in range(200):  # a VirtualClock moves only when told: advance, then deliver what is due
        sender.pump()
        at = world.next_change_at()
        if at is None:
            return
        world.advance(at - world.now())
    raise AssertionError("the world still changes after 200 steps")


def test_pipeline_hooks_have_the_documented_shape(capture):
    url, received = capture
    world = World(clock=VirtualClock())
    sender = HookSender(world)
    for project in (DEPLOYER, RELEASE_TOOLS):
        sender.add_hook(project, f"{url}/hook", "secret")
    world.trigger(DEPLOYER.path, "master", {"DEPLOY_ENVIRONMENT": "gstg"})
    coordinator = world.seed_pipeline(RELEASE_TOOLS.path, "master", variables={"DEPLOY_ENVIRONMENT": "gprd"})
    deliver_all(world, sender)

    finished = [body for _, body in received if body["object_attributes"]["status"] == "success"]
    assert len(finished) == 3  # the triggered deployment, the coordinator, its downstream deployment
    for body in finished:
        assert problems(body, PIPELINE_HOOK, [PIPELINE_HOOK], hook=True) == [], body["object_attributes"]
    triggered, downstream = (b for b in finished if b["project"]["id"] == DEPLOYER.id)
    upstream = next(b for b in finished if b["project"]["id"] == RELEASE_TOOLS.id)
    # Like GitLab's data builder: the latest builds, trigger jobs (bridges) left out...
    assert [b["name"] for b in triggered["builds"]] == ["prepare", "deploy", "rollback-check", "finish"]
    assert [b["name"] for b in upstream["builds"]] == ["start", "notify"]
    assert {b["status"] for b in triggered["builds"]} == {"success", "manual"}
    # ...protected_ref, and source_pipeline only for a pipeline another one's trigger job started.
    assert triggered["object_attributes"]["protected_ref"] is True
    assert "source_pipeline" not in triggered and "source_pipeline" not in upstream
    assert downstream["source_pipeline"]["pipeline_id"] == coordinator.pipeline_id
    assert downstream["source_pipeline"]["project"]["path_with_namespace"] == RELEASE_TOOLS.path
    assert problems(downstream["source_pipeline"], PIPELINE_HOOK["source_pipeline"],
                    [PIPELINE_HOOK["source_pipeline"]]) == []


@pytest.mark.parametrize("idempotency_key", [True, False], ids=["GitLab 17.4+", "older GitLab"])
def test_pipeline_hooks_carry_a_webhook_uuid_an_event_uuid_and_an_idempotency_key(capture, idempotency_key):
    url, received = capture
    world = World(clock=VirtualClock())
    sender = HookSender(world, faults=HookFaults(duplicate=1.0), idempotency_key=idempotency_key)
    hooks = [sender.add_hook(DEPLOYER, f"{url}/{name}", "secret") for name in ("first", "second")]
    world.trigger(DEPLOYER.path, "master", {"DEPLOY_ENVIRONMENT": "gstg"})
    deliver_all(world, sender)

    by_change: dict[str, list[dict[str, str]]] = {}
    for headers, _ in received:
        by_change.setdefault(headers["X-Gitlab-Event-UUID"], []).append(headers)
    assert len(by_change) == 4  # created, pending, running, success: one event each
    for posts in by_change.values():
        assert len(posts) == 4  # each of the two hooks, each delivered twice
        assert sorted(h["X-Gitlab-Webhook-UUID"] for h in posts) == sorted(2 * [h.uuid for h in hooks])
        assert {h["X-Gitlab-Event"] for h in posts} == {"Pipeline Hook"}
        keys = {h["X-Gitlab-Webhook-UUID"]: h.get("Idempotency-Key") for h in posts}
        if idempotency_key:  # one per hook and change, the same when that delivery is repeated
            per_hook = {(h["X-Gitlab-Webhook-UUID"], h["Idempotency-Key"]) for h in posts}
            assert len(per_hook) == 2 and len(set(keys.values())) == 2
            assert not set(keys.values()) & set(by_change)
        else:
            assert set(keys.values()) == {None}
    assert hooks[0].uuid != hooks[1].uuid


def test_issue_notes_have_the_documented_shape(standin_factory):
    standin = standin_factory(World([RELEASE_TOOLS], clock=VirtualClock()))
    issue = standin.world.add_issue(RELEASE_TOOLS, "Release 13.10.202103011220")
    gl = make_client(standin)
    path = f"/projects/{RELEASE_TOOLS.id}/issues/{issue.iid}/notes"
    created = gl.http_post(path, post_data={"body": ":rocket: **Rollout started**"})
    standin.world.advance(60)
    gl.http_post(path, post_data={"body": "second", "internal": True})
    listed = gl.http_list(path, get_all=True)

    documented = example("issue_notes_list")
    assert [n["body"] for n in listed] == ["second", ":rocket: **Rollout started**"]  # newest first
    for note in [created, *listed]:
        assert problems(note, documented[0], documented) == [], note["body"]
    assert (listed[0]["internal"], created["noteable_iid"]) == (True, issue.iid)


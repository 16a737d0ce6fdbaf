"""The stand-in answers in GitLab's documented shapes: same field names, same JSON types.

The examples in ``data/gitlab_examples/`` are copied from GitLab's REST API documentation (each
file names its page and section).  A stand-in answer is compared with the documented example of
the same call, in a comparable state (a failed job with a failed job, ...):

- every field of the documented example is present;
- every field it has appears in at least one documented example of that kind of object;
- each field's JSON type is the documented one; null is accepted where the docs show null, or
  where the compared example leaves the field out (the docs show no value for that state).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from deploystate_backends.gitlab_standin import DEPLOYER, RELEASE_TOOLS, Script
from standin_fixtures import DEPLOYER_TRIGGER_TOKEN

EXAMPLES = Path(__file__).parent / "data" / "gitlab_examples"
# Fields GitLab shows only in some states; the docs' examples happen to be in those states.
CONDITIONAL = {
    "failure_reason": "exposed only for failed jobs",
    "artifacts_file": "exposed only for jobs with an artifacts archive",
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
             *, names_only: bool = False) -> list[str]:
    """How ``actual`` differs from ``documented``, judged against all examples of its ``family``.

    ``names_only`` checks field names alone: for states no example shows (a skipped job has
    no start time, where every documented job has one).
    """
    if not isinstance(actual, dict):
        return [f"{path or 'answer'}: expected an object, got {kind(actual)}"]
    found = [f"{path}{key}: missing" for key in documented
             if key not in actual and key not in CONDITIONAL]
    known = {key for member in family for key in member}
    for key, value in actual.items():
        if key not in known:
            found.append(f"{path}{key}: not in any documented example")
            continue
        if names_only:
            continue
        shown = [member[key] for member in family if key in member]
        kinds = {kind(v) for v in shown}
        if kinds == {"null"} or (value is None and ("null" in kinds or key not in documented)):
            # The docs show null here, or do not show this field in this state at all.
            continue
        if kind(value) not in kinds:
            found.append(f"{path}{key}: {kind(value)}, documented as {' or '.join(sorted(kinds))}")
        elif isinstance(value, dict):
            nested = [v for v in shown if isinstance(v, dict)]
            required = documented[key] if isinstance(documented.get(key), dict) else {}
            found += problems(value, required, nested, f"{path}{key}.")
        elif isinstance(value, list):
            elements = [e for v in shown if isinstance(v, list) for e in v]
            objects = [e for e in elements if isinstance(e, dict)]
            element_kinds = {kind(e) for e in elements}
            for index, item in enumerate(value):
                if objects and isinstance(item, dict):
                    common = {k: objects[0][k] for k in set.intersection(*(set(o) for o in objects))}
                    found += problems(item, common, objects, f"{path}{key}[{index}].")
                elif element_kinds and kind(item) not in element_kinds:
                    found.append(f"{path}{key}[{index}]: {kind(item)}, documented as {sorted(element_kinds)}")
    return found


PIPELINES = [example(n) for n in ("pipeline_single", "trigger_pipeline", "pipeline_retry", "pipeline_cancel")]
PIPELINES_BASIC = example("pipelines_list")
JOBS = [*example("pipeline_jobs"),
        *(example(n) for n in ("job_single", "job_retry", "job_play", "job_cancel"))]
BRIDGES = example("pipeline_bridges")
VARIABLES = example("pipeline_variables")


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
    }


def test_every_example_names_its_source_in_gitlabs_documentation():
    files = sorted(EXAMPLES.glob("*.json"))
    assert len(files) == 12
    for path in files:
        data = json.loads(path.read_text())
        assert data["_source"].startswith("https://docs.gitlab.com/api/"), path.name
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

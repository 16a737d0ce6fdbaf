"""``deploystate ci generate``: the child pipeline is valid GitLab CI and has the spec's shape.

Valid: checked against GitLab's CI JSON schema, the copy that check-jsonschema ships (its
``vendor.gitlab-ci`` built-in schema), with the ``jsonschema`` library it uses, for the built-in
specs and random valid specs; once through the ``check-jsonschema`` command itself.  The shape: a
job per step, ``needs`` exactly the spec's, each running ``deploystate step VERSION STEP``; the
promotion manual and blocking; deployments in their resource group and environment.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploystate_backends.gitlab.ci import RESERVED, generate, job_name
from hypothesis import given

from deploystate.spec import BUILTIN_SPECS, Spec, Step, StepKind, resolve_spec
from deploystate.strategy import Strategy
from deploystate.testing import valid_specs

VERSION = "13.10.202103011220"
TOP_LEVEL = frozenset({"stages", "default", "variables", "workflow", "include"})


@cache
def gitlab_ci_schema() -> jsonschema.protocols.Validator:
    text = resources.files("check_jsonschema").joinpath("builtin_schemas/vendor/gitlab-ci.json").read_text()
    schema = json.loads(text)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def validated(text: str) -> dict[str, Any]:
    config = yaml.safe_load(text)
    errors = sorted(gitlab_ci_schema().iter_errors(config), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    return config


def jobs_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in config.items() if name not in TOP_LEVEL}


def assert_shape(spec: Spec, config: dict[str, Any], version: str = VERSION) -> None:
    jobs = jobs_of(config)
    assert set(jobs) == {job_name(s.name) for s in spec.steps}
    for step in spec.steps:
        job = jobs[job_name(step.name)]
        assert job["needs"] == [job_name(n) for n in step.needs]  # exactly the spec's, [] for none
        [script] = job["script"]
        words = shlex.split(script)
        assert words[:4] == ["deploystate", "step", version, step.name]
        assert job["stage"] in config["stages"]
        # A job never sits in a stage before one of its needs (GitLab refuses that).
        stages = config["stages"]
        for need in step.needs:
            assert stages.index(jobs[job_name(need)]["stage"]) < stages.index(job["stage"])
        if step.kind is StepKind.PROMOTION:
            assert job["when"] == "manual" and job["allow_failure"] is False
            assert words[4:] == ["--by", "$GITLAB_USER_LOGIN"]  # the shell expands it: who played the job
        else:
            assert "when" not in job and len(words) == 4
        if step.targets:
            assert job["interruptible"] is False
        else:
            assert "interruptible" not in job and "resource_group" not in job and "environment" not in job
        if step.kind is StepKind.DEPLOYMENT:
            assert job["resource_group"] == step.environment
            assert job["environment"]["name"] == step.environment
        if step.kind is StepKind.LEGACY_DEPLOYMENT:
            # One group or environment cannot stand for several: deploystate's own claims serialize it.
            assert "resource_group" not in job and "environment" not in job


@pytest.mark.parametrize("name", sorted(BUILTIN_SPECS))
def test_the_built_in_specs_give_valid_gitlab_ci_of_their_shape(name):
    spec = resolve_spec(name)
    config = validated(generate(spec, VERSION))
    assert_shape(spec, config)


def test_the_seed_pipeline_in_detail():
    config = validated(generate(resolve_spec("seed"), VERSION))
    jobs = jobs_of(config)
    assert jobs["tag"]["needs"] == []
    assert jobs["trigger_gprd"]["needs"] == ["baking_time", "manual_promotion"]  # the join, as in the spec
    # The default plan: the legacy path is real, the per-environment deployments are dry runs, which
    # GitLab records as verifications, not deployments.
    assert jobs["trigger_gprd"]["environment"] == {"name": "gprd", "action": "verify"}
    # ...and a failed dry run is a warning (orange), the real path's job is the one that must pass.
    assert jobs["trigger_gprd"]["allow_failure"] is True
    assert "allow_failure" not in jobs["trigger_complete_deployment"]
    assert jobs["baking_time"]["timeout"] == "1h"  # the 30-minute bake and a margin
    assert jobs["trigger_gstg"]["timeout"] == "6h 30m"  # the deployment wait limit and a margin
    real = validated(generate(resolve_spec("seed"), VERSION, strategy=Strategy(individual_deployments=True)))
    assert jobs_of(real)["trigger_gprd"]["environment"] == {"name": "gprd"}
    assert "allow_failure" not in jobs_of(real)["trigger_gprd"]
    strict = validated(generate(resolve_spec("seed"), VERSION, strategy=Strategy(strict_shadow=True)))
    assert "allow_failure" not in jobs_of(strict)["trigger_gprd"]


@given(valid_specs())
def test_random_valid_specs_give_valid_gitlab_ci_with_the_specs_needs(spec):
    config = validated(generate(spec, VERSION))
    assert_shape(spec, config)


def test_a_step_named_like_a_gitlab_keyword_gets_a_job_name_of_its_own():
    spec = Spec(name="words", steps=(Step(name="image", kind="tag"),
                                     Step(name="default", kind="bake", duration_s=60, needs=("image",)),
                                     Step(name="stages", kind="tag", needs=("image", "default"))))
    config = validated(generate(spec, VERSION))
    assert {"image", "default", "stages"} <= RESERVED
    assert jobs_of(config)["step:stages"]["needs"] == ["step:image", "step:default"]
    assert_shape(spec, config)


def test_a_version_that_is_no_rollout_id_is_refused_before_it_reaches_a_shell():
    from deploystate.errors import DeploystateError

    with pytest.raises(DeploystateError, match="not valid"):
        generate(resolve_spec("seed"), "13.10; rm -rf /")


def test_the_command_writes_the_file_and_check_jsonschema_accepts_it(tmp_path):
    output = tmp_path / "child.yml"
    made = subprocess.run([sys.executable, "-m", "deploystate", "ci", "generate", VERSION,
                           "--spec", "reordered", "--output", str(output),
                           "--image", "registry.example/deploystate:1",
                           "--tag", "release"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert made.returncode == 0, made.stderr
    assert "wrote" in made.stderr and made.stdout == ""
    config = validated(output.read_text())
    assert config["default"] == {"image": "registry.example/deploystate:1", "tags": ["release"]}
    assert_shape(resolve_spec("reordered"), config)
    checked = subprocess.run([str(Path(sys.executable).with_name("check-jsonschema")), "--builtin-schema",
                              "vendor.gitlab-ci", str(output)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_bad_input_is_exit_2_with_one_line(tmp_path):
    made = subprocess.run([sys.executable, "-m", "deploystate", "ci", "generate", VERSION, "--spec",
                           "nosuch"], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert made.returncode == 2
    assert made.stderr.startswith("deploystate: error: no built-in spec 'nosuch'")

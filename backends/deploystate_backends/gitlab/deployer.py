"""The deployer project on GitLab: trigger, read, find by idempotency key, retry, cancel.

A trigger carries the real system's variables plus our idempotency key as a pipeline variable,
so after any doubt (a 5xx, a time-out, a dropped connection, a crash) the pipeline can be found
again by listing the deployer's newest triggered pipelines and reading their variables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import gitlab

from deploystate.ports import BackendError, Deployment, TriggerRequest
from deploystate_backends.gitlab import client
from deploystate_backends.gitlab.packages import GitLabPackages
from deploystate_backends.gitlab.settings import GitLabSettings
from deploystate_backends.gitlab.statuses import outcome


def _timestamp(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class GitLabDeployer:
    def __init__(self, gl: gitlab.Gitlab, settings: GitLabSettings, trigger_token: str,
                 packages: GitLabPackages, secrets: tuple[str, ...] = ()) -> None:
        self._gl = gl
        self._settings = settings
        self._token = trigger_token
        self._packages = packages
        self._secrets = secrets
        self._project = gl.projects.get(settings.deployer_project, lazy=True)
        # Pipeline variables never change: remember which key each pipeline carries.
        self._keys: dict[str, str] = {}

    def _deploy_version(self, version: str) -> str:
        tag = self._packages.tag("omnibus", version)
        if tag is None:
            raise BackendError(f"no Omnibus package tag for {version} yet; cannot deploy it", transient=True)
        return tag.replace("+", "-")

    def trigger(self, request: TriggerRequest) -> Deployment:
        variables = {
            "DEPLOY_ENVIRONMENT": ",".join(request.environments),
            "DEPLOY_VERSION": self._deploy_version(request.version),
            "DEPLOY_USER": request.user,
            "CHECKMODE": "true" if request.check_mode else "false",
            "SKIP_JOB_ON_COORDINATOR_PIPELINE": "true",
            self._settings.key_variable: request.key,
        }
        if request.rollback:
            # What release-tools' ChatOps rollback sets: the deployer's pipeline rolls back.
            variables["DEPLOY_ROLLBACK"] = "true"
        what = f"triggering {','.join(request.environments)} at {request.ref}"
        # GitLab answers a wrong trigger token with 404, exactly as a missing project.
        not_found = (f"check the trigger token in ${self._settings.trigger_token_env} and deployer_project "
                     f"{self._settings.deployer_project!r} in [backends.gitlab]")
        pipeline: Any = client.once(
            lambda: self._project.trigger_pipeline(request.ref, self._token, variables=variables),
            what, self._secrets, not_found)
        self._keys[str(pipeline.id)] = request.key
        return self._deployment(pipeline.attributes, request.key)

    def status(self, deployment_id: str) -> Deployment:
        pipeline: Any = client.read(lambda: self._project.pipelines.get(int(deployment_id)),
                                    f"reading deployer pipeline {deployment_id}", self._settings,
                                    self._secrets)
        return self._deployment(pipeline.attributes, self._keys.get(str(deployment_id), ""))

    def find(self, key: str) -> Deployment | None:
        depth = self._settings.find_depth
        recent: list[Any] = client.read(
            lambda: self._project.pipelines.list(source="trigger", order_by="id", sort="desc",
                                                 per_page=min(depth, 100), page=1),
            "listing deployer pipelines", self._settings, self._secrets)
        for pipeline in recent[:depth]:
            pid = str(pipeline.id)
            if pid not in self._keys:
                variables = self._variables(pipeline.id)
                found = {v.key: v.value for v in variables}
                self._keys[pid] = str(found.get(self._settings.key_variable, ""))
            if self._keys[pid] == key:
                return self._deployment(pipeline.attributes, key)
        return None

    def _variables(self, pipeline_id: int) -> list[Any]:
        lazy = self._project.pipelines.get(pipeline_id, lazy=True)
        found: list[Any] = client.read(lambda: lazy.variables.list(get_all=True),
                                       f"reading variables of pipeline {pipeline_id}", self._settings,
                                       self._secrets)
        return found

    def retry(self, deployment_id: str) -> Deployment:
        lazy = self._project.pipelines.get(int(deployment_id), lazy=True)
        client.once(lazy.retry, f"retrying deployer pipeline {deployment_id}", self._secrets)
        return self.status(deployment_id)

    def cancel(self, deployment_id: str) -> Deployment:
        lazy = self._project.pipelines.get(int(deployment_id), lazy=True)
        client.once(lazy.cancel, f"canceling deployer pipeline {deployment_id}", self._secrets)
        return self.status(deployment_id)

    def _deployment(self, attributes: dict[str, Any], key: str) -> Deployment:
        status = str(attributes.get("status", "unknown"))
        return Deployment(id=str(attributes["id"]), key=key, status=status, outcome=outcome(status),
                          web_url=attributes.get("web_url"),
                          started_at=_timestamp(attributes.get("started_at")),
                          finished_at=_timestamp(attributes.get("finished_at")))

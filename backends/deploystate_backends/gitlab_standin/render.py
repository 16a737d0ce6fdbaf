"""GitLab's JSON shapes for the stand-in's objects (field names as in GitLab's API docs).

Call these while holding ``World.lock``: they read live objects.
"""

from __future__ import annotations

import datetime
from typing import Any

from deploystate_backends.gitlab_standin.specs import TERMINAL_STATUSES, ProjectSpec
from deploystate_backends.gitlab_standin.world import Job, Pipeline, Variable, World

JSON = dict[str, Any]
_ARTIFACTS_KEPT_S = 30 * 24 * 3600.0
_STATUS_TEXT = {"success": "passed", "waiting_for_callback": "waiting", "manual": "manual action"}


def timestamp(seconds: float | None) -> str | None:
    """GitLab's timestamp format: UTC, milliseconds, ``Z``."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Renderer:
    """Renders world objects for a server reachable at ``base_url`` (for web_url fields)."""

    def __init__(self, world: World, base_url: str, now: float) -> None:
        self.world = world
        self.base_url = base_url.rstrip("/")
        self.now = now  # one moment for a whole response: durations of running jobs use it

    def _spec(self, project_id: int) -> ProjectSpec:
        spec = self.world.project(project_id)
        assert spec is not None, f"pipeline of unknown project {project_id}"
        return spec

    def user(self, username: str, *, detailed: bool = False) -> JSON:
        data: JSON = {
            "id": 1,
            "username": username,
            "name": username.replace("-", " ").title(),
            "state": "active",
            "avatar_url": f"{self.base_url}/uploads/-/system/user/avatar/1/avatar.png",
            "web_url": f"{self.base_url}/{username}",
        }
        if detailed:
            data.update({
                "created_at": timestamp(self.now - 365 * 86400.0),
                "bio": None, "location": None, "public_email": "", "linkedin": "", "twitter": "",
                "website_url": "", "organization": "",
            })
        return data

    def project(self, spec: ProjectSpec) -> JSON:
        namespace = spec.namespace
        return {
            "id": spec.id,
            "description": spec.description,
            "name": spec.name,
            "name_with_namespace": " / ".join([*namespace.split("/"), spec.name]) if namespace
            else spec.name,
            "path": spec.name,
            "path_with_namespace": spec.path,
            "created_at": timestamp(0.0),
            "default_branch": spec.default_branch,
            "visibility": "private",
            "archived": False,
            "web_url": f"{self.base_url}/{spec.path}",
        }

    def pipeline_web_url(self, pipeline: Pipeline) -> str:
        return f"{self.base_url}/{self._spec(pipeline.project_id).path}/-/pipelines/{pipeline.id}"

    def pipeline_basic(self, pipeline: Pipeline) -> JSON:
        return {
            "id": pipeline.id,
            "iid": pipeline.iid,
            "project_id": pipeline.project_id,
            "sha": pipeline.sha,
            "ref": pipeline.ref,
            "status": pipeline.status,
            "source": pipeline.source,
            "created_at": timestamp(pipeline.created_at),
            "updated_at": timestamp(pipeline.updated_at),
            "web_url": self.pipeline_web_url(pipeline),
            "name": pipeline.name,
        }

    def pipeline(self, pipeline: Pipeline) -> JSON:
        path = self._spec(pipeline.project_id).path
        return {
            **self.pipeline_basic(pipeline),
            "before_sha": pipeline.before_sha,
            "tag": pipeline.tag,
            "yaml_errors": None,
            "user": self.user(pipeline.user),
            "started_at": timestamp(pipeline.started_at),
            "finished_at": timestamp(pipeline.finished_at),
            "committed_at": None,
            "duration": pipeline.duration,
            "queued_duration": pipeline.queued_duration,
            "coverage": None,
            "detailed_status": self._detailed_status(pipeline.status, f"/{path}/-/pipelines/{pipeline.id}"),
            "archived": False,
        }

    @staticmethod
    def _detailed_status(status: str, details_path: str) -> JSON:
        text = _STATUS_TEXT.get(status, status)
        return {
            "icon": f"status_{status}",
            "text": text,
            "label": text,
            "group": status,
            "tooltip": text,
            "has_details": True,
            "details_path": details_path,
            "illustration": None,
            "favicon": f"/assets/ci_favicons/favicon_status_{status}.png",
        }

    def _pipeline_of(self, job: Job) -> Pipeline:
        pipeline = self.world.peek_pipeline(job.pipeline_id)
        assert pipeline is not None, f"job {job.id} of unknown pipeline {job.pipeline_id}"
        return pipeline

    def _job_common(self, job: Job) -> JSON:
        pipeline = self._pipeline_of(job)
        spec = self._spec(job.project_id)
        now = self.now
        # A clock that runs on its own can pass a job's start while a response is rendered.
        duration = None
        if job.started_at is not None:
            duration = max(0.0, (job.finished_at if job.finished_at is not None else now) - job.started_at)
        queued = None
        if job.queued_at is not None:
            queued = max(0.0, (job.started_at if job.started_at is not None else now) - job.queued_at)
        return {
            "commit": {
                "author_email": f"{pipeline.user}@example.com",
                "author_name": pipeline.user,
                "created_at": timestamp(pipeline.created_at),
                "id": pipeline.sha,
                "message": f"Build {pipeline.ref}",
                "short_id": pipeline.sha[:8],
                "title": f"Build {pipeline.ref}",
            },
            "coverage": None,
            "archived": False,
            "source": pipeline.source,
            "allow_failure": job.allow_failure,
            "created_at": timestamp(job.created_at),
            "started_at": timestamp(job.started_at),
            "finished_at": timestamp(job.finished_at),
            "erased_at": None,
            "duration": duration,
            "queued_duration": queued,
            "id": job.id,
            "name": job.name,
            "ref": pipeline.ref,
            "stage": job.stage,
            "status": job.status,
            "tag": pipeline.tag,
            "web_url": f"{self.base_url}/{spec.path}/-/jobs/{job.id}",
            "project": {"ci_job_token_scope_enabled": False},
            "user": self.user(pipeline.user, detailed=True),
        }

    def job(self, job: Job) -> JSON:
        """A job as the jobs API shows it (a bridge shows as a bridge there too)."""
        if job.is_bridge:
            return self.bridge(job)
        pipeline = self._pipeline_of(job)
        finished = job.status in TERMINAL_STATUSES and job.finished_at is not None
        data = self._job_common(job)
        data.update({
            "artifacts_expire_at": timestamp(job.finished_at + _ARTIFACTS_KEPT_S) if finished
            and job.finished_at is not None else None,
            "tag_list": ["gitlab-org", "deploy"],
            "pipeline": {
                "id": pipeline.id,
                "project_id": pipeline.project_id,
                "ref": pipeline.ref,
                "sha": pipeline.sha,
                "status": pipeline.status,
            },
            "artifacts": [{"file_type": "trace", "size": 1500, "filename": "job.log", "file_format": "raw"}]
            if finished else [],
            "runner": None,
            "runner_manager": None,
        })
        if job.status == "failed":
            data["failure_reason"] = job.failure_reason or "script_failure"
        return data

    def bridge(self, job: Job) -> JSON:
        pipeline = self._pipeline_of(job)
        data = self._job_common(job)
        data["pipeline"] = {
            "id": pipeline.id,
            "project_id": pipeline.project_id,
            "ref": pipeline.ref,
            "sha": pipeline.sha,
            "status": pipeline.status,
            "created_at": timestamp(pipeline.created_at),
            "updated_at": timestamp(pipeline.updated_at),
            "web_url": self.pipeline_web_url(pipeline),
        }
        downstream = self.world.peek_pipeline(job.downstream_id) if job.downstream_id else None
        data["downstream_pipeline"] = None if downstream is None else {
            "id": downstream.id,
            "sha": downstream.sha,
            "ref": downstream.ref,
            "status": downstream.status,
            "created_at": timestamp(downstream.created_at),
            "updated_at": timestamp(downstream.updated_at),
            "web_url": self.pipeline_web_url(downstream),
        }
        return data

    def trigger(self, spec: ProjectSpec, index: int, token: str, *, masked: bool) -> JSON:
        """A pipeline trigger token as ``GET /projects/:id/triggers`` lists it.  GitLab shows a
        token in full only to the user who created it; to others its first four characters."""
        return {
            "id": spec.id * 100 + index + 1,
            "description": f"{spec.name} trigger",
            "created_at": timestamp(0.0),
            "last_used": None,
            "token": token[:4] if masked else token,
            "updated_at": timestamp(0.0),
            "owner": self.user(self.world.user),
        }

    @staticmethod
    def variable(variable: Variable) -> JSON:
        return {"key": variable.key, "variable_type": variable.variable_type, "value": variable.value}

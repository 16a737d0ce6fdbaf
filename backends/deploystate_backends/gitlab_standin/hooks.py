"""Pipeline webhooks from the stand-in, as GitLab sends them, with the faults GitLab's have.

GitLab posts a *Pipeline Hook* to each project hook's URL whenever a pipeline is created or its
status changes.  Headers: ``X-Gitlab-Event: Pipeline Hook``, the hook's secret in
``X-Gitlab-Token``, the hook's own ``X-Gitlab-Webhook-UUID`` (the same on every post of that
hook), the event's ``X-Gitlab-Event-UUID`` (one per change, shared by every hook the change
fires, and by hooks fired recursively from it), and an ``Idempotency-Key`` per hook and change
that stays the same when that delivery is repeated (``idempotency_key=False``: none, as older
GitLab versions send).  The body is what GitLab's ``Gitlab::DataBuilder::Pipeline`` builds:
``object_attributes`` (with ``protected_ref``), ``merge_request``, ``user``, ``project``,
``commit``, the latest ``builds`` (trigger jobs are not builds) and, for a pipeline started by
another pipeline's trigger job, ``source_pipeline``.  Real deliveries come from a queue, so they
may be late, repeated, out of order or lost; :class:`HookFaults` injects each.

The world changes only when someone looks at it, so a sender thread sleeps on the world's clock
until the next scheduled change (``World.next_change_at()``), settles the world, and posts what
changed at the moment it changed (plus the configured latency).  With a plain ``VirtualClock``
moved by a test there is no thread: call ``pump()`` after each ``world.advance()``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import random
import threading
import uuid
from typing import Any

import attrs
import requests

from deploystate_backends.gitlab_standin.clock import VirtualClock
from deploystate_backends.gitlab_standin.shared_clock import Member, SharedVirtualClock
from deploystate_backends.gitlab_standin.specs import ProjectSpec
from deploystate_backends.gitlab_standin.world import Job, Pipeline, World

logger = logging.getLogger("deploystate_backends.gitlab_standin.hooks")

EVENT = "Pipeline Hook"
# detailed_status is the label of the pipeline's detailed status (Gitlab::Ci::Status::*).
_DETAILED = {"success": "passed", "waiting_for_callback": "waiting", "manual": "waiting for manual action",
             "scheduled": "waiting for delayed job"}


def hook_timestamp(seconds: float | None) -> str | None:
    """Webhook payloads use ``2016-08-12 15:23:28 UTC``, not the API's ISO 8601."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def commit_timestamp(seconds: float) -> str:
    """A commit's time in a payload is ISO 8601 (Ruby's ``xmlschema``): ``2016-08-12T17:23:21+02:00``."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def _probability(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability between 0 and 1, got {value}")


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be 0 or more seconds, got {value}")


@attrs.frozen
class HookFaults:
    """How deliveries go wrong.  Times are world seconds; probabilities apply per change."""

    latency_s: float = attrs.field(default=0.0, validator=_non_negative)  # every delivery is this late
    jitter_s: float = attrs.field(default=0.0, validator=_non_negative)  # plus up to this much more
    duplicate: float = attrs.field(default=0.0, validator=_probability)  # delivered twice
    drop: float = attrs.field(default=0.0, validator=_probability)  # never delivered
    late: float = attrs.field(default=0.0, validator=_probability)  # held back by late_s ...
    late_s: float = attrs.field(default=60.0, validator=_non_negative)  # ... so later changes overtake it
    seed: int = 0


@attrs.frozen
class Hook:
    """A project hook: where to post, the secret token GitLab sends along, and its UUID."""

    project_id: int
    url: str
    secret: str = attrs.field(repr=False)
    uuid: str = ""


@attrs.frozen
class Delivery:
    """One post (sent or planned).  ``answer`` is the HTTP status, 0 if the post failed."""

    key: str
    pipeline_id: int
    project_id: int
    status: str
    changed_at: float
    due: float
    copy: int  # 0 for the first post of a change, 1 for a duplicate
    sent_at: float | None = None
    answer: int | None = None
    event_uuid: str = ""  # X-Gitlab-Event-UUID: the change's, shared by every hook it fires
    hook_uuid: str = ""  # X-Gitlab-Webhook-UUID: the hook's


@attrs.define
class _Planned:
    delivery: Delivery
    hook: Hook
    body: bytes


class HookSender:
    """Posts Pipeline Hooks for ``world``'s changes to the hooks added with ``add_hook``."""

    def __init__(self, world: World, *, faults: HookFaults | None = None, base_url: str = "http://gitlab.example",
                 timeout_s: float = 5.0, idempotency_key: bool = True) -> None:
        self.world = world
        self.faults = faults or HookFaults()
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.idempotency_key = idempotency_key
        self._random = random.Random(self.faults.seed)
        self._ids = random.Random(f"uuids-{self.faults.seed}")  # apart, so faults draw as before
        self._lock = threading.Lock()
        self._hooks: list[Hook] = []
        self._planned: list[_Planned] = []
        self._log: list[Delivery] = []
        self._dropped = 0
        self._session = requests.Session()
        self._session.trust_env = False  # loopback: no proxies from the environment
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._poke = threading.Event()
        self._member: Member | None = None
        world.observe(self._on_change)

    # -- configuration ----------------------------------------------------------------------
    def add_hook(self, project: int | str | ProjectSpec, url: str, secret: str) -> Hook:
        spec = project if isinstance(project, ProjectSpec) else self.world.project(project)
        if spec is None:
            raise KeyError(f"no project {project!r} in the stand-in; add the hook to one of "
                           f"{', '.join(p.path for p in self.world.projects())}")
        with self._lock:
            hook = Hook(spec.id, url, secret, self._uuid())
            self._hooks.append(hook)
        return hook

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    # -- what happened ----------------------------------------------------------------------
    def deliveries(self) -> list[Delivery]:
        """Every post made so far, in the order it was made."""
        with self._lock:
            return list(self._log)

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    def pending(self) -> int:
        with self._lock:
            return len(self._planned)

    # -- planning (called by the world, under its lock) -------------------------------------
    def _on_change(self, pipeline: Pipeline, at: float) -> None:
        with self._lock:
            hooks = [h for h in self._hooks if h.project_id == pipeline.project_id]
            if not hooks:
                return
            body = json.dumps(self._payload(pipeline)).encode()
            faults, rng = self.faults, self._random
            event_uuid = self._uuid()
            for hook in hooks:
                if rng.random() < faults.drop:
                    self._dropped += 1
                    continue
                key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                due = at + faults.latency_s + rng.uniform(0.0, faults.jitter_s)
                if rng.random() < faults.late:
                    due += faults.late_s
                copies = 2 if rng.random() < faults.duplicate else 1
                for copy in range(copies):
                    delivery = Delivery(key, pipeline.id, pipeline.project_id, pipeline.status, at,
                                        due + copy * faults.jitter_s, copy, event_uuid=event_uuid,
                                        hook_uuid=hook.uuid)
                    self._planned.append(_Planned(delivery, hook, body))
        self._wake()

    def _payload(self, pipeline: Pipeline) -> dict[str, Any]:
        """The body GitLab's ``Gitlab::DataBuilder::Pipeline.build`` makes (its field order, too)."""
        spec = self.world.project(pipeline.project_id)
        assert spec is not None
        latest = pipeline.latest_jobs()
        stages = list(dict.fromkeys(j.stage for j in latest))
        payload: dict[str, Any] = {
            "object_kind": "pipeline",
            "object_attributes": {
                "id": pipeline.id, "iid": pipeline.iid, "name": pipeline.name, "ref": pipeline.ref,
                "tag": pipeline.tag, "sha": pipeline.sha, "before_sha": pipeline.before_sha,
                "source": pipeline.source, "status": pipeline.status,
                "detailed_status": _DETAILED.get(pipeline.status, pipeline.status), "stages": stages,
                "created_at": hook_timestamp(pipeline.created_at),
                "finished_at": hook_timestamp(pipeline.finished_at),
                "duration": pipeline.duration, "queued_duration": pipeline.queued_duration,
                # The stand-in protects each project's default branch and every tag.
                "protected_ref": pipeline.tag or pipeline.ref == spec.default_branch,
                "variables": [{"key": v.key, "value": v.value} for v in pipeline.variables
                              if v.variable_type == "env_var"],
                "url": f"{self.base_url}/{spec.path}/-/pipelines/{pipeline.id}",
            },
            "merge_request": None,  # only pipelines of a merge request have one
            "user": self._user(pipeline.user),
            "project": {
                "id": spec.id, "name": spec.name, "description": spec.description,
                "web_url": f"{self.base_url}/{spec.path}", "avatar_url": None,
                "git_ssh_url": f"git@gitlab.example:{spec.path}.git",
                "git_http_url": f"{self.base_url}/{spec.path}.git", "namespace": spec.namespace,
                "visibility_level": 0, "path_with_namespace": spec.path,
                "default_branch": spec.default_branch, "ci_config_path": None,
            },
            "commit": {"id": pipeline.sha, "message": f"Update {pipeline.ref}\n",
                       "title": f"Update {pipeline.ref}", "timestamp": commit_timestamp(pipeline.created_at),
                       "url": f"{self.base_url}/{spec.path}/-/commit/{pipeline.sha}",
                       "author": {"name": "Release Tools Bot", "email": "[REDACTED]"}},
            # The latest builds: trigger jobs (bridges) are not builds and are left out.
            "builds": [self._build(job, pipeline) for job in latest if not job.is_bridge],
        }
        if pipeline.upstream_bridge_id is not None:
            bridge = self.world.peek_job(pipeline.upstream_bridge_id)
            upstream = self.world.project(bridge.project_id) if bridge is not None else None
            if bridge is not None and upstream is not None:
                payload["source_pipeline"] = {
                    "project": {"id": upstream.id, "web_url": f"{self.base_url}/{upstream.path}",
                                "path_with_namespace": upstream.path},
                    "job_id": bridge.id, "pipeline_id": bridge.pipeline_id,
                }
        return payload

    def _user(self, username: str) -> dict[str, Any]:
        return {"id": 1, "name": username.replace("-", " ").title(), "username": username,
                "avatar_url": f"{self.base_url}/uploads/-/system/user/avatar/1/avatar.png",
                "email": "[REDACTED]"}

    def _build(self, job: Job, pipeline: Pipeline) -> dict[str, Any]:
        """One job as ``build_hook_attrs`` shows it."""
        duration = None
        if job.started_at is not None:
            duration = (job.finished_at if job.finished_at is not None else job.updated_at) - job.started_at
        queued = None
        if job.queued_at is not None and job.started_at is not None:
            queued = job.started_at - job.queued_at
        return {
            "id": job.id, "stage": job.stage, "name": job.name, "status": job.status,
            "created_at": hook_timestamp(job.created_at), "started_at": hook_timestamp(job.started_at),
            "finished_at": hook_timestamp(job.finished_at), "duration": duration, "queued_duration": queued,
            "failure_reason": job.failure_reason if job.status == "failed" else None,
            "when": job.when, "manual": job.when in ("manual", "delayed"), "allow_failure": job.allow_failure,
            "user": self._user(pipeline.user), "runner": None,
            "artifacts_file": {"filename": None, "size": None}, "environment": None,
        }

    # -- delivering --------------------------------------------------------------------------
    def next_due(self) -> float | None:
        with self._lock:
            return min((p.delivery.due for p in self._planned), default=None)

    def pump(self) -> int:
        """Post every delivery due by the world's ``now()``, earliest first; how many were posted."""
        self.world.settle()
        sent = 0
        while True:
            now = self.world.now()
            with self._lock:
                due = sorted((p for p in self._planned if p.delivery.due <= now),
                             key=lambda p: p.delivery.due)
                if not due:
                    return sent
                planned = due[0]
                self._planned.remove(planned)
            self._post(planned, now)
            sent += 1

    def _post(self, planned: _Planned, now: float) -> None:
        delivery = planned.delivery
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitLab/17.4.0-standin" if self.idempotency_key else "GitLab/17.3.0-standin",
            "X-Gitlab-Event": EVENT,
            "X-Gitlab-Webhook-UUID": delivery.hook_uuid,
            "X-Gitlab-Instance": self.base_url,
            "X-Gitlab-Event-UUID": delivery.event_uuid,
            "X-Gitlab-Token": planned.hook.secret,
        }
        if self.idempotency_key:
            headers["Idempotency-Key"] = delivery.key
        try:
            answer = self._session.post(planned.hook.url, data=planned.body, headers=headers,
                                        timeout=self.timeout_s).status_code
        except requests.RequestException as error:
            # The URL only: the secret travels in a header and stays out of the log.
            logger.warning("pipeline hook to %s failed: %s", planned.hook.url, type(error).__name__)
            answer = 0
        with self._lock:
            self._log.append(attrs.evolve(delivery, sent_at=now, answer=answer))

    # -- the sender thread -------------------------------------------------------------------
    def start(self) -> HookSender:
        """Deliver in a background thread, on time by the world's clock."""
        clock = self.world.clock
        if isinstance(clock, VirtualClock):
            raise TypeError("a VirtualClock moves only when a test moves it; call pump() after each "
                            "world.advance(), or build the world on a SharedVirtualClock or real time")
        if self._thread is not None:
            raise RuntimeError("the hook sender is running already")
        if isinstance(clock, SharedVirtualClock):
            # Joined here, not in the thread: time must not move before the thread first looks.
            self._member = clock.member("hook-sender")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="standin-hooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._session.close()

    def __enter__(self) -> HookSender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        member = self._member
        try:
            while not self._stopping.is_set():
                self.pump()
                targets = [t for t in (self.world.next_change_at(), self.next_due()) if t is not None]
                wait = max(0.0, min(targets) - self.world.now()) if targets else math.inf
                self._wait(wait, member)
        except Exception:
            logger.exception("stand-in hook sender stopped by a bug")
            raise
        finally:
            if member is not None:
                member.leave()
                self._member = None

    def _wait(self, seconds: float, member: Member | None) -> None:
        if member is not None:
            member.sleep(seconds)
            return
        # Real or accelerated time: convert world seconds to wall seconds; look again at least
        # every second so that stop() is prompt even if a wake-up is missed.
        rate = float(getattr(self.world.clock, "factor", 1.0))
        self._poke.wait(min(1.0, seconds / rate))
        self._poke.clear()

    def _wake(self) -> None:
        member = self._member
        if member is not None:
            member.wake()
        self._poke.set()


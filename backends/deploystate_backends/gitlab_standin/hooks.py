"""Pipeline webhooks from the stand-in, as GitLab sends them, with the faults GitLab's have.

GitLab posts a *Pipeline Hook* to each project hook's URL whenever a pipeline is created or its
status changes: headers ``X-Gitlab-Event: Pipeline Hook``, the hook's secret in
``X-Gitlab-Token``, an ``Idempotency-Key`` that stays the same when a delivery is repeated; body
``object_kind: pipeline`` with ``object_attributes`` and ``project``.  Real deliveries come from
a queue, so they may be late, repeated, out of order or lost; :class:`HookFaults` injects each.

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
from deploystate_backends.gitlab_standin.world import Pipeline, World

logger = logging.getLogger("deploystate_backends.gitlab_standin.hooks")

EVENT = "Pipeline Hook"
_DETAILED = {"success": "passed", "waiting_for_callback": "waiting", "manual": "manual action"}


def hook_timestamp(seconds: float | None) -> str | None:
    """Webhook payloads use ``2016-08-12 15:23:28 UTC``, not the API's ISO 8601."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


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
    """A project hook: where to post, and the secret token GitLab sends along."""

    project_id: int
    url: str
    secret: str = attrs.field(repr=False)


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


@attrs.define
class _Planned:
    delivery: Delivery
    hook: Hook
    body: bytes


class HookSender:
    """Posts Pipeline Hooks for ``world``'s changes to the hooks added with ``add_hook``."""

    def __init__(self, world: World, *, faults: HookFaults | None = None, base_url: str = "http://gitlab.example",
                 timeout_s: float = 5.0) -> None:
        self.world = world
        self.faults = faults or HookFaults()
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._random = random.Random(self.faults.seed)
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
        hook = Hook(spec.id, url, secret)
        with self._lock:
            self._hooks.append(hook)
        return hook

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
                                        due + copy * faults.jitter_s, copy)
                    self._planned.append(_Planned(delivery, hook, body))
        self._wake()

    def _payload(self, pipeline: Pipeline) -> dict[str, Any]:
        spec = self.world.project(pipeline.project_id)
        assert spec is not None
        stages = list(dict.fromkeys(j.stage for j in pipeline.latest_jobs()))
        return {
            "object_kind": "pipeline",
            "object_attributes": {
                "id": pipeline.id, "iid": pipeline.iid, "name": pipeline.name, "ref": pipeline.ref,
                "tag": pipeline.tag, "sha": pipeline.sha, "before_sha": pipeline.before_sha,
                "source": pipeline.source, "status": pipeline.status,
                "detailed_status": _DETAILED.get(pipeline.status, pipeline.status), "stages": stages,
                "created_at": hook_timestamp(pipeline.created_at),
                "finished_at": hook_timestamp(pipeline.finished_at),
                "duration": pipeline.duration, "queued_duration": pipeline.queued_duration,
                "variables": [{"key": v.key, "value": v.value} for v in pipeline.variables
                              if v.variable_type == "env_var"],
                "url": f"{self.base_url}/{spec.path}/-/pipelines/{pipeline.id}",
            },
            "merge_request": None,
            "user": {"id": 1, "name": pipeline.user.replace("-", " ").title(), "username": pipeline.user,
                     "avatar_url": None, "email": "[REDACTED]"},
            "project": {
                "id": spec.id, "name": spec.name, "description": spec.description,
                "web_url": f"{self.base_url}/{spec.path}", "avatar_url": None,
                "git_ssh_url": f"git@gitlab.example:{spec.path}.git",
                "git_http_url": f"{self.base_url}/{spec.path}.git", "namespace": spec.namespace,
                "visibility_level": 0, "path_with_namespace": spec.path,
                "default_branch": spec.default_branch,
            },
            "commit": {"id": pipeline.sha, "message": f"Update {pipeline.ref}",
                       "title": f"Update {pipeline.ref}", "timestamp": hook_timestamp(pipeline.created_at),
                       "url": None,
                       "author": {"name": "Release Tools Bot", "email": "[REDACTED]"}},
            "builds": [],
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
            "User-Agent": "GitLab/17.0.0-standin",
            "X-Gitlab-Event": EVENT,
            "X-Gitlab-Token": planned.hook.secret,
            "X-Gitlab-Event-UUID": delivery.key,
            "X-Gitlab-Instance": self.base_url,
            "Idempotency-Key": delivery.key,
        }
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


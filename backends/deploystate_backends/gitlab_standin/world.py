"""The stand-in's GitLab: projects, pipelines and jobs that move by themselves over time.

Nothing runs in the background.  Every change is an event with a due time on a heap; whoever
looks at the world first settles it, applying due events in time order with their own
timestamps.  So the result does not depend on how often anyone polls, and a virtual clock
gives the same history every run.

Jobs go created -> pending -> running -> (the script's status for this attempt).  Stages run in
order; a failed stage skips the rest; a retry creates a new job (the old one is marked retried)
and puts skipped jobs back to created, as GitLab does.  A bridge job starts a pipeline in
another project and mirrors its status, so a downstream retry moves the upstream again.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import string
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import attrs

from deploystate_backends.gitlab_standin.clock import Clock, RealClock, VirtualClock
from deploystate_backends.gitlab_standin.counters import Counters
from deploystate_backends.gitlab_standin.issues import ISSUE_TYPES, FreezePeriod, Issue
from deploystate_backends.gitlab_standin.notes import Note
from deploystate_backends.gitlab_standin.specs import (
    DEFAULT_PROJECTS,
    KNOWN_STATUSES,
    TERMINAL_STATUSES,
    ProjectSpec,
    Script,
    Timing,
)

RETRYABLE = frozenset({"failed", "canceled", "success"})
CANCELABLE = frozenset({
    "created", "waiting_for_resource", "preparing", "pending", "running", "scheduled",
    "waiting_for_callback",
})
# Statuses a bridge copies from its downstream pipeline as they are; any other active status
# shows as running on the bridge.
_MIRRORED = TERMINAL_STATUSES | {"manual", "waiting_for_callback", "canceling"}
ENVIRONMENT_VARIABLE = "DEPLOY_ENVIRONMENT"
TRIGGER_PAYLOAD = "TRIGGER_PAYLOAD"


@attrs.frozen
class Variable:
    key: str
    value: str
    variable_type: str = "env_var"


@attrs.define(eq=False)
class Job:
    """One attempt of one job.  Read it under ``World.lock``: it changes as time passes."""

    id: int
    pipeline_id: int
    project_id: int
    name: str
    stage: str
    stage_index: int
    when: str
    allow_failure: bool
    scripted: bool
    trigger: str | None
    attempt: int
    created_at: float
    status: str = "created"
    opened: bool = False  # its stage has been reached
    skip_created: bool = False  # a retry goes straight to pending, as GitLab's answer shows
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    retried: bool = False
    failure_reason: str | None = None
    downstream_id: int | None = None
    next_at: float | None = None
    version: int = 0
    start_in_s: float = 0.0  # a delayed job waits this long as "scheduled"

    @property
    def is_bridge(self) -> bool:
        return self.trigger is not None

    @property
    def blocks_stage(self) -> bool:
        """Non-blocking manual jobs never hold their stage; other active jobs do."""
        if self.status in TERMINAL_STATUSES:
            return False
        return not (self.when == "manual" and self.allow_failure and self.status == "manual")


@attrs.define(eq=False)
class Pipeline:
    """One pipeline.  Read it under ``World.lock``: it changes as time passes."""

    id: int
    iid: int
    project_id: int
    ref: str
    sha: str
    before_sha: str
    tag: bool
    source: str
    name: str | None
    created_at: float
    variables: tuple[Variable, ...]
    script: Script
    timing: Timing
    user: str
    upstream_bridge_id: int | None = None
    status: str = "created"
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    duration: int | None = None
    queued_duration: float | None = None
    jobs: list[Job] = attrs.Factory(list)

    def latest_jobs(self) -> list[Job]:
        return [j for j in self.jobs if not j.retried]

    def variable(self, key: str) -> str | None:
        for v in self.variables:
            if v.key == key:
                return v.value
        return None

    @property
    def environment(self) -> str:
        return self.variable(ENVIRONMENT_VARIABLE) or ""


@attrs.define
class Seed:
    """A pipeline that will appear at ``at`` (e.g. a package build for a new tag)."""

    project_id: int
    ref: str
    variables: tuple[Variable, ...]
    source: str
    at: float
    script: Script | None
    timing: Timing | None
    sha: str | None
    pipeline_id: int | None = None  # set when it has appeared


@attrs.define
class _Rule:
    project_id: int
    environment: str | None
    outcome: Script | None
    timing: Timing | None
    remaining: int | None


def fake_sha(*parts: str) -> str:
    """A stable, realistic-looking commit SHA for a project and ref."""
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()


class World:
    """All projects, pipelines and jobs, and the scripts that decide how they end.

    Thread-safe: every public method takes ``lock`` and settles due events first.  Objects it
    returns are live; read them while holding ``lock`` if the clock may move meanwhile.
    """

    def __init__(
        self,
        projects: Iterable[ProjectSpec] = DEFAULT_PROJECTS,
        *,
        clock: Clock | None = None,
        counters: Counters | None = None,
        canceling_s: float = 0.0,
        user: str = "deploy-bot",
    ) -> None:
        self.clock: Clock = clock if clock is not None else RealClock()
        self.counters = counters if counters is not None else Counters()
        self.canceling_s = canceling_s  # > 0: canceled running jobs pass through "canceling"
        self.user = user
        self.lock = threading.RLock()
        self._projects: dict[int, ProjectSpec] = {}
        self._paths: dict[str, int] = {}
        self._pipelines: dict[int, Pipeline] = {}
        self._jobs: dict[int, Job] = {}
        self._iids: dict[int, int] = {}
        self._pipeline_ids = itertools.count(1001)
        self._job_ids = itertools.count(5001)
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, str, int, int]] = []
        self._rules: list[_Rule] = []
        self._seeds: list[Seed] = []
        self._observers: list[Callable[[Pipeline, float], None]] = []
        self._issues: dict[int, list[Issue]] = {}
        self._issue_ids = itertools.count(80001)
        self._freeze_periods: dict[int, list[FreezePeriod]] = {}
        self._freeze_ids = itertools.count(1)
        self._notes: dict[int, list[Note]] = {}  # by issue id
        self._note_ids = itertools.count(9001)
        for spec in projects:
            self.add_project(spec)

    # --- projects and scripts ---------------------------------------------------------

    def observe(self, callback: Callable[[Pipeline, float], None]) -> None:
        """Call ``callback(pipeline, at)`` when a pipeline is created and on every status change.

        It runs under ``lock`` at the moment of the change (``at`` may lie before ``now()``
        when nobody looked for a while): read what you need at once and return quickly.
        """
        with self.lock:
            self._observers.append(callback)

    def _changed(self, pipeline: Pipeline, at: float) -> None:
        for callback in self._observers:
            callback(pipeline, at)

    def add_project(self, spec: ProjectSpec) -> None:
        with self.lock:
            if spec.id in self._projects or spec.path.casefold() in self._paths:
                raise ValueError(f"project {spec.id} ({spec.path}) exists already; pick another id/path")
            self._projects[spec.id] = spec
            self._paths[spec.path.casefold()] = spec.id

    def project(self, ref: int | str) -> ProjectSpec | None:
        """A project by numeric id, id as text, path (any case) or its last path segment."""
        with self.lock:
            if isinstance(ref, int) or ref.isdigit():
                return self._projects.get(int(ref))
            pid = self._paths.get(ref.casefold())
            if pid is None:
                short = [p for p in self._projects.values() if p.name.casefold() == ref.casefold()]
                return short[0] if len(short) == 1 else None
            return self._projects[pid]

    def projects(self) -> tuple[ProjectSpec, ...]:
        with self.lock:
            return tuple(self._projects.values())

    def _require(self, project: int | str | ProjectSpec) -> ProjectSpec:
        if isinstance(project, ProjectSpec):
            return project
        spec = self.project(project)
        if spec is None:
            known = ", ".join(p.path for p in self._projects.values())
            raise KeyError(f"no project {project!r} in the stand-in; known: {known}")
        return spec

    def script(
        self,
        project: int | str | ProjectSpec,
        environment: str | None = None,
        *,
        outcome: Script | None = None,
        timing: Timing | None = None,
        times: int | None = None,
    ) -> None:
        """Decide how the next pipelines of ``project`` (for ``environment``) end and take.

        The newest matching rule wins; ``times`` limits it to that many pipelines.
        ``environment`` matches the DEPLOY_ENVIRONMENT variable exactly (None: any).
        """
        if outcome is None and timing is None:
            raise ValueError("script() needs an outcome, a timing, or both")
        if times is not None and times < 1:
            raise ValueError(f"times must be 1 or more (or None for always), got {times}")
        with self.lock:
            spec = self._require(project)
            self._rules.append(_Rule(spec.id, environment, outcome, timing, times))

    def _resolve(self, spec: ProjectSpec, environment: str) -> tuple[Script, Timing]:
        outcome: Script | None = None
        timing: Timing | None = None
        for rule in reversed(self._rules):
            if rule.project_id != spec.id or rule.environment not in (None, environment):
                continue
            if rule.remaining is not None and rule.remaining <= 0:
                continue
            used = False
            if outcome is None and rule.outcome is not None:
                outcome, used = rule.outcome, True
            if timing is None and rule.timing is not None:
                timing, used = rule.timing, True
            if used and rule.remaining is not None:
                rule.remaining -= 1
            if outcome is not None and timing is not None:
                break
        return outcome or spec.script, timing or spec.timing

    # --- time ----------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        """Move a virtual clock on and apply everything that became due."""
        if not isinstance(self.clock, VirtualClock):
            raise TypeError(
                f"advance() needs a VirtualClock; this world runs on {type(self.clock).__name__}. "
                "Build the world with clock=VirtualClock() to control time from a test."
            )
        self.clock.advance(seconds)
        self.settle()

    def settle(self) -> None:
        """Apply every event due by now, in time order."""
        with self.lock:
            now = self.clock.now()
            while self._heap and self._heap[0][0] <= now:
                at, _, kind, obj_id, version = heapq.heappop(self._heap)
                if kind == "seed":
                    self._appear(self._seeds[obj_id], at)
                    continue
                job = self._jobs[obj_id]
                if job.version == version and job.next_at == at:
                    job.next_at = None
                    self._step(job, at)

    def next_change_at(self) -> float | None:
        """When the next scheduled change happens (None: nothing will change by itself)."""
        with self.lock:
            self.settle()
            while self._heap:
                at, _, kind, obj_id, version = self._heap[0]
                if kind == "seed" or self._jobs[obj_id].version == version:
                    return at
                heapq.heappop(self._heap)
            return None

    def _push(self, at: float, kind: str, obj_id: int, version: int) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), kind, obj_id, version))

    def _schedule(self, job: Job, at: float) -> None:
        job.version += 1
        job.next_at = at
        self._push(at, "job", job.id, job.version)

    def _unschedule(self, job: Job) -> None:
        job.version += 1
        job.next_at = None

    # --- creating pipelines ----------------------------------------------------------------

    def trigger(
        self,
        project: int | str | ProjectSpec,
        ref: str,
        variables: Mapping[str, str] | None = None,
        *,
        source: str = "trigger",
        trigger_payload: str | None = None,
    ) -> Pipeline:
        """Create a pipeline now, with the script and timing the rules give its environment."""
        with self.lock:
            self.settle()
            spec = self._require(project)
            pairs = tuple(Variable(k, v) for k, v in (variables or {}).items())
            if trigger_payload is not None:
                pairs += (Variable(TRIGGER_PAYLOAD, trigger_payload, "file"),)
            env = (variables or {}).get(ENVIRONMENT_VARIABLE, "")
            script, timing = self._resolve(spec, env)
            return self._create(spec, ref, pairs, source, self.clock.now(), script, timing, None)

    def seed_pipeline(
        self,
        project: int | str | ProjectSpec,
        ref: str,
        *,
        variables: Mapping[str, str] | None = None,
        source: str = "push",
        after_s: float = 0.0,
        script: Script | None = None,
        timing: Timing | None = None,
        sha: str | None = None,
    ) -> Seed:
        """A pipeline that appears ``after_s`` seconds from now (a package build for a tag)."""
        if after_s < 0:
            raise ValueError(f"after_s must be 0 or more, got {after_s}")
        with self.lock:
            self.settle()
            spec = self._require(project)
            seed = Seed(spec.id, ref, tuple(Variable(k, v) for k, v in (variables or {}).items()),
                        source, self.clock.now() + after_s, script, timing, sha)
            self._seeds.append(seed)
            self._push(seed.at, "seed", len(self._seeds) - 1, 0)
            self.settle()
            return seed

    def _appear(self, seed: Seed, at: float) -> None:
        spec = self._projects[seed.project_id]
        env = next((v.value for v in seed.variables if v.key == ENVIRONMENT_VARIABLE), "")
        script, timing = self._resolve(spec, env)
        pipeline = self._create(spec, seed.ref, seed.variables, seed.source, at,
                                seed.script or script, seed.timing or timing, seed.sha)
        seed.pipeline_id = pipeline.id

    def _create(
        self,
        spec: ProjectSpec,
        ref: str,
        variables: tuple[Variable, ...],
        source: str,
        at: float,
        script: Script,
        timing: Timing,
        sha: str | None,
        upstream_bridge_id: int | None = None,
    ) -> Pipeline:
        iid = self._iids.get(spec.id, 0) + 1
        self._iids[spec.id] = iid
        values = {v.key: v.value for v in variables}
        name = None
        if spec.pipeline_name is not None:
            # Like GitLab's workflow:name, a variable that is not set expands to nothing.
            name = string.Template(spec.pipeline_name).safe_substitute(defaultdict(str, values))
        pipeline = Pipeline(
            id=next(self._pipeline_ids), iid=iid, project_id=spec.id, ref=ref,
            sha=sha or fake_sha(spec.path, ref),
            before_sha=fake_sha(spec.path, ref, "parent") if source == "push" else "0" * 40,
            tag=ref not in spec.branches, source=source, name=name, created_at=at,
            variables=variables, script=script, timing=timing, user=self.user,
            upstream_bridge_id=upstream_bridge_id, updated_at=at,
        )
        stages = spec.stages()
        environment = values.get(ENVIRONMENT_VARIABLE, "")
        for job_spec in spec.jobs:
            if not job_spec.in_pipeline_for(environment):
                continue  # its rules leave it out of this pipeline
            job = Job(
                id=next(self._job_ids), pipeline_id=pipeline.id, project_id=spec.id,
                name=job_spec.name, stage=job_spec.stage, stage_index=stages.index(job_spec.stage),
                when=job_spec.when, allow_failure=job_spec.allow_failure,
                scripted=job_spec.name == spec.scripted_job(), trigger=job_spec.trigger,
                attempt=0, created_at=at, updated_at=at, start_in_s=job_spec.start_in_s,
            )
            pipeline.jobs.append(job)
            self._jobs[job.id] = job
        self._pipelines[pipeline.id] = pipeline
        self._changed(pipeline, at)
        self.counters.pipeline_created(spec.path, source, values.get(ENVIRONMENT_VARIABLE, ""))
        self._process(pipeline, at)
        return pipeline

    # --- issues and deploy freezes (what production checks read) ------------------------------

    def add_issue(self, project: int | str | ProjectSpec, title: str, labels: Iterable[str] = (), *,
                  description: str | None = None, issue_type: str = "issue") -> Issue:
        """Open an issue in ``project`` now, with ``labels`` (e.g. ``Incident::Active``, ``severity::1``)."""
        if issue_type not in ISSUE_TYPES:
            raise ValueError(f"issue_type must be one of {', '.join(ISSUE_TYPES)}, got {issue_type!r}")
        with self.lock:
            spec = self._require(project)
            found = self._issues.setdefault(spec.id, [])
            now = self.clock.now()
            issue = Issue(id=next(self._issue_ids), iid=len(found) + 1, project_id=spec.id, title=title,
                          labels=tuple(labels), created_at=now, updated_at=now, description=description,
                          issue_type=issue_type, author=self.user)
            found.append(issue)
            return issue

    def close_issue(self, issue: Issue, *, by: str | None = None) -> None:
        with self.lock:
            if issue.state != "closed":
                now = self.clock.now()
                issue.state, issue.closed_at, issue.updated_at = "closed", now, now
                issue.closed_by = by or self.user

    def issues(self, project: int | str | ProjectSpec) -> list[Issue]:
        """``project``'s issues, oldest first (live objects: read them under ``lock``)."""
        with self.lock:
            return list(self._issues.get(self._require(project).id, ()))

    def add_freeze_period(self, project: int | str | ProjectSpec, freeze_start: str, freeze_end: str,
                          cron_timezone: str = "UTC") -> FreezePeriod:
        """A deploy freeze of ``project``: cron ``freeze_start`` to ``freeze_end``, in ``cron_timezone``."""
        with self.lock:
            spec = self._require(project)
            now = self.clock.now()
            period = FreezePeriod(id=next(self._freeze_ids), project_id=spec.id, freeze_start=freeze_start,
                                  freeze_end=freeze_end, cron_timezone=cron_timezone, created_at=now,
                                  updated_at=now)
            self._freeze_periods.setdefault(spec.id, []).append(period)
            return period

    def remove_freeze_periods(self, project: int | str | ProjectSpec) -> None:
        with self.lock:
            self._freeze_periods.pop(self._require(project).id, None)

    def freeze_periods(self, project: int | str | ProjectSpec) -> list[FreezePeriod]:
        """``project``'s freeze periods, oldest first (as GitLab lists them: by ``created_at``)."""
        with self.lock:
            return list(self._freeze_periods.get(self._require(project).id, ()))

    # --- notes on issues (what the release-issue notifier posts) ------------------------------

    def issue(self, project: int | str | ProjectSpec, iid: int) -> Issue | None:
        with self.lock:
            return next((i for i in self.issues(project) if i.iid == iid), None)

    def add_note(self, issue: Issue, body: str, *, author: str | None = None, internal: bool = False) -> Note:
        """A note on ``issue`` now (as the API's POST does); the issue counts as updated."""
        with self.lock:
            now = self.clock.now()
            note = Note(id=next(self._note_ids), issue_id=issue.id, issue_iid=issue.iid,
                        project_id=issue.project_id, body=body, author=author or self.user, created_at=now,
                        updated_at=now, internal=internal)
            self._notes.setdefault(issue.id, []).append(note)
            issue.updated_at = now
            return note

    def notes(self, issue: Issue) -> list[Note]:
        """``issue``'s notes, oldest first (tests count them)."""
        with self.lock:
            return list(self._notes.get(issue.id, ()))

    # --- reading -------------------------------------------------------------------------

    def pipeline(self, pipeline_id: int) -> Pipeline | None:
        with self.lock:
            self.settle()
            return self._pipelines.get(pipeline_id)

    def pipelines(self, project: int | str | ProjectSpec | None = None) -> list[Pipeline]:
        """Pipelines (of one project, or all), oldest first."""
        with self.lock:
            self.settle()
            if project is None:
                return list(self._pipelines.values())
            pid = self._require(project).id
            return [p for p in self._pipelines.values() if p.project_id == pid]

    def job(self, job_id: int) -> Job | None:
        with self.lock:
            self.settle()
            return self._jobs.get(job_id)

    def peek_pipeline(self, pipeline_id: int) -> Pipeline | None:
        """Like ``pipeline()`` but without settling: a renderer holding ``lock`` sees one moment."""
        with self.lock:
            return self._pipelines.get(pipeline_id)

    def peek_job(self, job_id: int) -> Job | None:
        """Like ``job()`` but without settling (for observers, called while the world settles)."""
        with self.lock:
            return self._jobs.get(job_id)

    # --- what people (and clients) do ----------------------------------------------------------

    def retry_job(self, job: Job) -> Job | None:
        """Retry a finished job; None if it cannot be retried (running, skipped, retried)."""
        with self.lock:
            self.settle()
            return self._retry(job, self.clock.now())

    def retry_pipeline(self, pipeline: Pipeline) -> list[Job]:
        """Retry every failed or canceled job; nothing happens if there is none."""
        with self.lock:
            self.settle()
            now = self.clock.now()
            targets = [j for j in pipeline.latest_jobs() if j.status in ("failed", "canceled")]
            return [new for j in targets if (new := self._retry(j, now)) is not None]

    def cancel_pipeline(self, pipeline: Pipeline) -> None:
        with self.lock:
            self.settle()
            now = self.clock.now()
            for job in pipeline.latest_jobs():
                self._cancel(job, now, process=False)
            self._process(pipeline, now)

    def cancel_job(self, job: Job) -> bool:
        with self.lock:
            self.settle()
            return self._cancel(job, self.clock.now(), process=True)

    def play_job(self, job: Job) -> bool:
        """Start a manual job, or a delayed one before its time; False if the job is not waiting
        for a human."""
        with self.lock:
            self.settle()
            if job.retried or job.status not in ("manual", "scheduled"):
                return False
            now = self.clock.now()
            self._set_status(job, "pending", now)
            job.queued_at = now
            self._schedule(job, now + self._pipelines[job.pipeline_id].timing.pending_s)
            self._process(self._pipelines[job.pipeline_id], now)
            return True

    # --- the machinery ------------------------------------------------------------------

    def _set_status(self, job: Job, status: str, at: float) -> None:
        job.status = status
        job.updated_at = at
        if status in TERMINAL_STATUSES:
            job.finished_at = at if job.started_at is not None or status != "skipped" else None
        else:
            job.finished_at = None
        job.failure_reason = "script_failure" if status == "failed" else None

    def _step(self, job: Job, at: float) -> None:
        pipeline = self._pipelines[job.pipeline_id]
        timing = pipeline.timing
        if job.status == "created":
            self._set_status(job, "pending", at)
            job.queued_at = at
            self._schedule(job, at + timing.pending_s)
        elif job.status == "pending":
            self._set_status(job, "running", at)
            job.started_at = at
            if job.is_bridge:
                self._start_downstream(job, pipeline, at)
            else:
                self._schedule(job, at + (timing.running_s if job.scripted else timing.other_running_s))
        elif job.status == "running":
            result = pipeline.script.result(job.attempt) if job.scripted else "success"
            if result != "running":
                self._set_status(job, result, at)
        elif job.status == "canceling":
            self._set_status(job, "canceled", at)
        elif job.status == "scheduled":  # a delayed job's time has come
            self._set_status(job, "pending", at)
            job.queued_at = at
            self._schedule(job, at + timing.pending_s)
        self._process(pipeline, at)

    def _open(self, job: Job, at: float) -> None:
        job.opened = True
        if job.when == "manual":
            self._set_status(job, "manual", at)
        elif job.when == "delayed":
            self._set_status(job, "scheduled", at)
            self._schedule(job, at + job.start_in_s)
        elif job.skip_created:
            self._set_status(job, "pending", at)
            job.queued_at = at
            self._schedule(job, at + self._pipelines[job.pipeline_id].timing.pending_s)
        else:
            self._schedule(job, at + self._pipelines[job.pipeline_id].timing.created_s)

    def _process(self, pipeline: Pipeline, at: float) -> None:
        """Open the next stage when one completes, skip the rest after a failure, then
        recompute the pipeline's status."""
        latest = pipeline.latest_jobs()
        blocked = False
        for index in sorted({j.stage_index for j in latest}):
            stage = [j for j in latest if j.stage_index == index]
            if blocked:
                for job in stage:
                    if job.status == "created" and not job.opened:
                        self._set_status(job, "skipped", at)
                continue
            for job in stage:
                if job.status == "created" and not job.opened:
                    self._open(job, at)
            if any(j.blocks_stage for j in stage):
                break
            blocked = any(j.status in ("failed", "canceled") and not j.allow_failure for j in stage)
        self._update_pipeline(pipeline, composite_status(latest), at)

    def _update_pipeline(self, pipeline: Pipeline, status: str, at: float) -> None:
        if status == pipeline.status:
            return
        pipeline.status = status
        pipeline.updated_at = at
        if status == "running" and pipeline.started_at is None:
            pipeline.started_at = at
            pipeline.queued_duration = at - pipeline.created_at
        if status in TERMINAL_STATUSES:
            # GitLab keeps finished_at and duration from the last completion while a retried
            # pipeline runs again; it only overwrites them when it completes anew.
            pipeline.finished_at = at
            if pipeline.started_at is not None:
                pipeline.duration = int(at - pipeline.started_at)
        self._changed(pipeline, at)
        if pipeline.upstream_bridge_id is not None:
            self._mirror(self._jobs[pipeline.upstream_bridge_id], pipeline, at)

    def _start_downstream(self, bridge: Job, upstream: Pipeline, at: float) -> None:
        assert bridge.trigger is not None
        spec = self._require(bridge.trigger)
        passed = tuple(v for v in upstream.variables if v.key != TRIGGER_PAYLOAD)
        env = next((v.value for v in passed if v.key == ENVIRONMENT_VARIABLE), "")
        script, timing = self._resolve(spec, env)
        downstream = self._create(spec, spec.default_branch, passed, "pipeline", at, script, timing,
                                  None, upstream_bridge_id=bridge.id)
        bridge.downstream_id = downstream.id
        self._mirror(bridge, downstream, at)

    def _mirror(self, bridge: Job, downstream: Pipeline, at: float) -> None:
        if bridge.retried:
            return
        status = downstream.status if downstream.status in _MIRRORED or (
            downstream.status not in KNOWN_STATUSES) else "running"
        if status == bridge.status:
            return
        reactivated = bridge.status in TERMINAL_STATUSES and status not in TERMINAL_STATUSES
        self._set_status(bridge, status, at)
        upstream = self._pipelines[bridge.pipeline_id]
        if reactivated:
            self._reset_skipped_after(upstream, bridge.stage_index, at)
        self._process(upstream, at)

    def _reset_skipped_after(self, pipeline: Pipeline, stage_index: int, at: float) -> None:
        for job in pipeline.latest_jobs():
            if job.stage_index > stage_index and job.status == "skipped":
                job.status = "created"
                job.opened = False
                job.updated_at = at
                job.finished_at = None

    def _retry(self, job: Job, at: float) -> Job | None:
        if job.retried or job.status not in RETRYABLE:
            return None
        self._unschedule(job)
        job.retried = True
        pipeline = self._pipelines[job.pipeline_id]
        new = Job(
            id=next(self._job_ids), pipeline_id=job.pipeline_id, project_id=job.project_id,
            name=job.name, stage=job.stage, stage_index=job.stage_index, when="on_success",
            allow_failure=job.allow_failure, scripted=job.scripted, trigger=job.trigger,
            attempt=job.attempt + 1, created_at=at, updated_at=at, skip_created=True,
        )
        pipeline.jobs.append(new)
        self._jobs[new.id] = new
        self._reset_skipped_after(pipeline, job.stage_index, at)
        self._process(pipeline, at)
        return new

    def _cancel(self, job: Job, at: float, *, process: bool) -> bool:
        if job.retried or job.status not in CANCELABLE:
            return False
        self._unschedule(job)
        if job.status == "running" and self.canceling_s > 0:
            self._set_status(job, "canceling", at)
            self._schedule(job, at + self.canceling_s)
        else:
            self._set_status(job, "canceled", at)
        if job.downstream_id is not None:
            # Canceling a bridge cancels its downstream pipeline; that pipeline's passing
            # statuses (canceling) must not flow back and revive the bridge meanwhile.
            downstream = self._pipelines[job.downstream_id]
            bridge_id, downstream.upstream_bridge_id = downstream.upstream_bridge_id, None
            try:
                for child in downstream.latest_jobs():
                    self._cancel(child, at, process=False)
                self._process(downstream, at)
            finally:
                downstream.upstream_bridge_id = bridge_id
        if process:
            self._process(self._pipelines[job.pipeline_id], at)
        return True


def composite_status(jobs: Iterable[Job]) -> str:
    """A pipeline's status from its latest jobs, in the order GitLab's composite status uses.

    Allowed failures count as success; non-blocking manual jobs are ignored; a status nobody
    knows yet is passed on as it is rather than guessed.
    """
    seen: set[str] = set()
    for job in jobs:
        status = job.status
        if job.allow_failure and status in ("failed", "canceled"):
            status = "success"
        if job.when == "manual" and job.allow_failure and status == "manual":
            continue
        seen.add(status)

    def only(*allowed: str) -> bool:
        return seen <= set(allowed)

    unknown = sorted(seen - KNOWN_STATUSES)
    checks: tuple[tuple[bool, str], ...] = (
        (not seen or only("skipped"), "skipped"),
        (only("success", "skipped"), "success"),
        (only("created"), "created"),
        (only("preparing"), "preparing"),
        (only("canceled", "success", "skipped"), "canceled"),
        (only("pending", "created", "skipped"), "pending"),
        (bool(seen & {"running", "pending"}), "running"),
        (bool(unknown), unknown[0] if unknown else ""),
        ("waiting_for_resource" in seen, "waiting_for_resource"),
        ("waiting_for_callback" in seen, "waiting_for_callback"),
        ("manual" in seen, "manual"),
        ("scheduled" in seen, "scheduled"),
        ("preparing" in seen, "preparing"),
        ("created" in seen, "running"),
        ("canceling" in seen, "canceling"),
    )
    for matched, status in checks:
        if matched:
            return status
    return "failed"

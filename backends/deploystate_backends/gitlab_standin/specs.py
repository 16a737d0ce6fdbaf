"""What the stand-in's world is made of: projects, their pipeline templates, timings, scripts.

All of it is frozen data; the mutable state (pipelines, jobs) lives in ``world.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

TERMINAL_STATUSES = frozenset({"success", "failed", "canceled", "skipped"})
# Statuses GitLab documents for pipelines and jobs, newest included.  A script may use any other
# string too: clients must survive statuses they have never seen.
KNOWN_STATUSES = frozenset({
    "created", "waiting_for_resource", "preparing", "pending", "running", "success", "failed",
    "canceled", "canceling", "skipped", "manual", "scheduled", "waiting_for_callback",
})
PIPELINE_SOURCES = frozenset({
    "push", "web", "trigger", "schedule", "api", "external", "pipeline", "chat", "webide",
    "merge_request_event", "external_pull_request_event", "parent_pipeline",
    "ondemand_dast_scan", "ondemand_dast_validation", "security_orchestration_policy",
})


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be 0 or more seconds, got {value}")


@attrs.frozen
class Timing:
    """How long each job spends in each status, in clock seconds.

    ``running_s`` is the run time of the scripted job (the deployment itself); the other jobs of
    the pipeline (prepare, finish, ...) run for ``other_running_s``.
    """

    created_s: float = attrs.field(default=1.0, validator=_non_negative)
    pending_s: float = attrs.field(default=5.0, validator=_non_negative)
    running_s: float = attrs.field(default=60.0, validator=_non_negative)
    other_running_s: float = attrs.field(default=10.0, validator=_non_negative)


def _attempts(value: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _check_attempts(_: object, __: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    if not value or not all(isinstance(s, str) and s for s in value):
        raise ValueError(
            f"a script needs at least one non-empty status per attempt, got {value!r}; "
            "e.g. ('failed', 'success') for 'fails, then a retry succeeds'"
        )


@attrs.frozen
class Script:
    """What the scripted job ends in, attempt by attempt (a retry is the next attempt).

    After running for ``Timing.running_s`` the job takes the status for its attempt; the last
    entry repeats for later attempts.  A terminal status (success, failed, canceled, skipped)
    ends the job; any other status (``running`` = hang, ``waiting_for_callback``,
    ``canceling``, or a status GitLab has not invented yet) is kept forever.
    """

    attempts: tuple[str, ...] = attrs.field(default=("success",), converter=_attempts,
                                            validator=_check_attempts)

    def result(self, attempt: int) -> str:
        return self.attempts[min(attempt, len(self.attempts) - 1)]

    @classmethod
    def succeed(cls) -> Script:
        return cls(("success",))

    @classmethod
    def fail(cls) -> Script:
        """Fails on every attempt, retries included."""
        return cls(("failed",))

    @classmethod
    def fail_then_succeed(cls, failures: int = 1) -> Script:
        """Fails ``failures`` times; the retry after that (by a human, or the API) succeeds."""
        return cls(("failed",) * failures + ("success",))

    @classmethod
    def hang(cls) -> Script:
        """Starts running and never finishes."""
        return cls(("running",))

    @classmethod
    def stuck(cls, status: str) -> Script:
        """Reaches ``status`` (e.g. ``waiting_for_callback``) after running, and stays there."""
        return cls((status,))


WHEN = ("on_success", "manual", "delayed")


def _check_when(_: object, __: attrs.Attribute[str], value: str) -> None:
    if value not in WHEN:
        raise ValueError(f"job 'when' must be one of {', '.join(WHEN)}, got {value!r}")


def _environments(value: Iterable[str] | str | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset((value,) if isinstance(value, str) else value)


@attrs.frozen
class JobSpec:
    """One job of a pipeline template.  Stages run in the order they first appear.

    ``scripted`` marks the job whose end the world's scripts decide (the deployment); a
    ``trigger`` makes the job a bridge that starts a pipeline in that project (path) and mirrors
    its status.

    ``when="manual"`` waits for a person to play it (status ``manual``; with ``allow_failure=False``
    it blocks its stage and the pipeline shows ``manual``); ``when="delayed"`` waits
    ``start_in_s`` seconds as ``scheduled`` (GitLab's ``when: delayed``), or until played.
    ``environments`` limits the job to pipelines whose DEPLOY_ENVIRONMENT is one of them (GitLab's
    ``rules: - if: $DEPLOY_ENVIRONMENT == ...``); None: every pipeline has it.
    """

    name: str
    stage: str
    when: str = attrs.field(default="on_success", validator=_check_when)
    allow_failure: bool = False
    scripted: bool = False
    trigger: str | None = None
    start_in_s: float = attrs.field(default=0.0, validator=_non_negative)
    environments: frozenset[str] | None = attrs.field(default=None, converter=_environments)

    def __attrs_post_init__(self) -> None:
        if self.start_in_s and self.when != "delayed":
            raise ValueError(f"job {self.name!r}: start_in_s is for when='delayed' jobs only")

    def in_pipeline_for(self, environment: str) -> bool:
        return self.environments is None or environment in self.environments


def _job_tuple(value: Iterable[JobSpec]) -> tuple[JobSpec, ...]:
    return tuple(value)


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _check_jobs(_: object, __: attrs.Attribute[tuple[JobSpec, ...]], value: tuple[JobSpec, ...]) -> None:
    if not value:
        raise ValueError("a project needs at least one job in its pipeline template")
    names = [j.name for j in value]
    if len(set(names)) != len(names):
        raise ValueError(f"job names in a pipeline template must be unique, got {names}")


@attrs.frozen
class ProjectSpec:
    """A GitLab project.  ``known_refs=None`` accepts any ref; refs outside ``branches`` are tags.

    ``pipeline_name`` is a ``string.Template`` filled from the pipeline's variables (GitLab's
    ``workflow:name``); None leaves pipelines unnamed (``"name": null``).
    """

    id: int
    path: str
    jobs: tuple[JobSpec, ...] = attrs.field(converter=_job_tuple, validator=_check_jobs)
    trigger_tokens: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    timing: Timing = Timing()
    script: Script = Script()
    default_branch: str = "master"
    branches: frozenset[str] = frozenset({"master", "main", "next-gen"})
    known_refs: frozenset[str] | None = None
    pipeline_name: str | None = None
    description: str = ""

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def namespace(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    def stages(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for job in self.jobs:
            seen.setdefault(job.stage, None)
        return tuple(seen)

    def scripted_job(self) -> str:
        """The job scripts apply to: the one marked ``scripted``, else the last automatic job."""
        for job in self.jobs:
            if job.scripted:
                return job.name
        automatic = [j for j in self.jobs if j.when == "on_success" and j.trigger is None]
        return (automatic or list(self.jobs))[-1].name


DEPLOYER = ProjectSpec(
    id=10,
    path="gitlab-com/gl-infra/deployer",
    description="Deploys a package to one or more environments",
    jobs=(
        JobSpec("prepare", "prepare"),
        JobSpec("deploy", "deploy", scripted=True),
        JobSpec("rollback-check", "deploy", when="manual", allow_failure=True),
        JobSpec("finish", "finish"),
    ),
    trigger_tokens=("deployer-trigger-token",),
    timing=Timing(created_s=1, pending_s=5, running_s=3600, other_running_s=60),
    pipeline_name="Deploy $DEPLOY_VERSION to $DEPLOY_ENVIRONMENT",
)
CNG = ProjectSpec(
    id=20,
    path="gitlab-org/build/CNG-mirror",
    description="Cloud native images",
    jobs=(JobSpec("build", "build", scripted=True), JobSpec("publish", "release")),
    trigger_tokens=("cng-trigger-token",),
    timing=Timing(created_s=1, pending_s=10, running_s=1800, other_running_s=120),
    pipeline_name="CNG images",
)
OMNIBUS = ProjectSpec(
    id=30,
    path="gitlab-org/security/omnibus-gitlab",
    description="Omnibus packages",
    jobs=(JobSpec("package", "package", scripted=True), JobSpec("upload", "release")),
    trigger_tokens=("omnibus-trigger-token",),
    timing=Timing(created_s=1, pending_s=10, running_s=2700, other_running_s=120),
    pipeline_name="Omnibus packages",
)
RELEASE_TOOLS = ProjectSpec(
    id=40,
    path="gitlab-org/release/tools",
    description="The coordinator: triggers the deployer through a bridge job",
    jobs=(
        JobSpec("start", "start"),
        JobSpec("deploy:gstg", "deploy", trigger=DEPLOYER.path),
        JobSpec("notify", "finish"),
    ),
    trigger_tokens=("release-tools-trigger-token",),
    timing=Timing(created_s=1, pending_s=2, running_s=30, other_running_s=30),
    pipeline_name="Coordinated deployment $DEPLOY_VERSION",
)
DEFAULT_PROJECTS = (DEPLOYER, CNG, OMNIBUS, RELEASE_TOOLS)
DEFAULT_TOKENS = frozenset({"standin-token"})

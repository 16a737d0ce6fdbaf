"""A GitLab API stand-in: a real HTTP server on loopback that python-gitlab talks to.

For tests and rehearsals of the GitLab adapter: projects with pipelines that progress by
themselves on an injectable clock, scripted outcomes per environment, and injected faults.

    from deploystate_backends.gitlab_standin import Standin, World, VirtualClock
    with Standin(World(clock=VirtualClock())) as standin:
        gl = gitlab.Gitlab(standin.url, private_token="standin-token", timeout=5)
"""

from deploystate_backends.gitlab_standin.clock import AcceleratedClock, Clock, RealClock, VirtualClock
from deploystate_backends.gitlab_standin.counters import Counters, CountersSnapshot
from deploystate_backends.gitlab_standin.faults import Fault, FaultKind, FaultPlan
from deploystate_backends.gitlab_standin.issues import PRODUCTION, FreezePeriod, Issue
from deploystate_backends.gitlab_standin.server import Standin, serve
from deploystate_backends.gitlab_standin.specs import (
    CNG,
    DEFAULT_PROJECTS,
    DEFAULT_TOKENS,
    DEPLOYER,
    OMNIBUS,
    RELEASE_TOOLS,
    JobSpec,
    ProjectSpec,
    Script,
    Timing,
)
from deploystate_backends.gitlab_standin.tags import Tag, package_tags, seed_package_builds
from deploystate_backends.gitlab_standin.world import Job, Pipeline, Seed, Variable, World

__all__ = [
    "CNG",
    "DEFAULT_PROJECTS",
    "DEFAULT_TOKENS",
    "DEPLOYER",
    "OMNIBUS",
    "PRODUCTION",
    "RELEASE_TOOLS",
    "AcceleratedClock",
    "Clock",
    "Counters",
    "CountersSnapshot",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FreezePeriod",
    "Issue",
    "Job",
    "JobSpec",
    "Pipeline",
    "ProjectSpec",
    "RealClock",
    "Script",
    "Seed",
    "Standin",
    "Tag",
    "Timing",
    "Variable",
    "VirtualClock",
    "World",
    "package_tags",
    "seed_package_builds",
    "serve",
]

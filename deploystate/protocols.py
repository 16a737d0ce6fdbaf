"""The small protocols the core talks to; adapters in ``backends/`` implement them.

Like httpx's transports: each protocol is a handful of methods, with a real implementation
(GitLab), a simulated one (check mode on a virtual clock) and room for a user's own.  The core
in ``deploystate/`` imports nothing else from the outside world.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import attrs

from deploystate.errors import DeploystateError


class Outcome(enum.StrEnum):
    """What a status from outside means to a rollout."""

    WAITING = "waiting"  # not finished yet (created, pending, running, ...)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed, canceled, skipped, manual
    MISSING = "missing"  # does not exist (yet)
    UNKNOWN = "unknown"  # a status we do not know: treated as waiting, and announced


class BackendError(DeploystateError):
    """An outside system failed.  ``transient`` errors are retried later; others need a human.

    After a transient error on ``trigger`` nobody knows whether the deployment started: the
    runner looks the idempotency key up before it triggers again.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _environments(value: object) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (str(value),)


@attrs.frozen
class TriggerRequest:
    """Deploy ``version`` to ``environments`` at deployer ref ``ref``.

    ``key`` is the idempotency key: the deployer must be able to find a deployment by it, so
    that a runner resuming after a crash can learn whether its trigger really happened.
    """

    key: str = attrs.field(validator=attrs.validators.min_len(1))
    version: str = attrs.field(validator=attrs.validators.min_len(1))
    environments: tuple[str, ...] = attrs.field(converter=_environments,
                                                validator=attrs.validators.min_len(1))
    ref: str = attrs.field(validator=attrs.validators.min_len(1))
    check_mode: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    user: str = "deploystate"


@attrs.frozen
class Deployment:
    """A deployer's record of one triggered deployment (a downstream pipeline)."""

    id: str
    key: str
    status: str  # the deployer's own word, e.g. GitLab's "running"
    outcome: Outcome
    web_url: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


@runtime_checkable
class Deployer(Protocol):
    def trigger(self, request: TriggerRequest) -> Deployment:
        """Start a deployment.  Must not be retried blindly: on doubt, ``find(key)`` first."""
        ...

    def status(self, deployment_id: str) -> Deployment:
        """The deployment's own current status (the truth, not a mirror of it)."""
        ...

    def find(self, key: str) -> Deployment | None:
        """The deployment triggered with idempotency ``key``, or None if there is none."""
        ...

    def retry(self, deployment_id: str) -> Deployment:
        """Retry the failed jobs of a deployment (what a human does in the deployer's UI)."""
        ...

    def cancel(self, deployment_id: str) -> Deployment:
        ...


@attrs.frozen
class PackageBuild:
    package: str  # "cng" or "omnibus"
    tag: str
    status: str
    outcome: Outcome
    web_url: str | None = None


@runtime_checkable
class PackageWatcher(Protocol):
    def status(self, package: str, version: str) -> PackageBuild:
        """The newest build of ``package`` for auto-deploy ``version``; MISSING if none yet."""
        ...


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (virtual clocks start wherever they like)."""
        ...

    def sleep(self, seconds: float) -> None:
        ...


@attrs.frozen
class Notice:
    """One thing worth telling people: every journal record becomes one."""

    rollout_id: str
    at: float
    severity: str  # "info", "warning" or "error"
    message: str
    action: str
    step: str | None = None
    data: Mapping[str, object] = attrs.field(factory=dict)


@runtime_checkable
class Notifier(Protocol):
    def notify(self, notice: Notice) -> None:
        ...


@runtime_checkable
class Hints(Protocol):
    """Optional: a backend that knows when its next change happens (simulations do).

    The runner then wakes exactly then instead of polling; real backends need not implement it.
    """

    def next_change_at(self) -> float | None:
        ...


@attrs.frozen
class Backends:
    """What a backend factory (entry point group ``deploystate.backends``) returns."""

    deployer: Deployer
    packages: PackageWatcher
    clock: Clock
    description: str = ""

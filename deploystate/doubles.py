"""In-memory doubles of the ports, for tests of code that embeds deploystate (ours included).

What httpx's ``MockTransport(handler)`` is to httpx: the test writes a small function that says
what the outside world answers, and plugs it in::

    def deployer(request: TriggerRequest, reads: int) -> Outcome:
        # staging fails on its first read, everything else succeeds on its second
        if "staging" in request.environments:
            return Outcome.FAILED
        return Outcome.SUCCEEDED if reads >= 2 else Outcome.WAITING

    backends = fake_backends(deployer=FakeDeployer(deployer))

A handler may also raise :class:`~deploystate.ports.BackendError` to play an outage.  Nothing
here sleeps for real: :class:`ManualClock` moves on when slept on or advanced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from deploystate.ports import (
    BackendError,
    Backends,
    CheckContext,
    CheckResult,
    Clock,
    Deployment,
    Notice,
    Outcome,
    PackageBuild,
    TriggerRequest,
    Verdict,
)

DeploymentHandler = Callable[[TriggerRequest, int], Outcome]
PackageHandler = Callable[[str, str, int], Outcome]

_STATUS = {Outcome.WAITING: "running", Outcome.BLOCKED: "manual", Outcome.SUCCEEDED: "success",
           Outcome.FAILED: "failed",
           Outcome.MISSING: "missing", Outcome.UNKNOWN: "unknown"}


def succeed_at_once(request: TriggerRequest, reads: int) -> Outcome:
    """The default deployment handler: every deployment has succeeded when first read."""
    return Outcome.SUCCEEDED


def built_at_once(package: str, version: str, reads: int) -> Outcome:
    """The default package handler: every build has succeeded when first read."""
    return Outcome.SUCCEEDED


class ManualClock:
    """A clock that only moves when told to: ``sleep`` and ``advance`` move it on at once."""

    def __init__(self, start: float = 1_614_601_200.0) -> None:  # 2021-03-01 12:20 UTC
        self._now = float(start)
        self.slept: list[float] = []

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


@attrs.define
class FakeTrigger:
    """One deployment the fake deployer started, and how often its status was read."""

    id: str
    request: TriggerRequest
    at: float
    reads: int = 0
    canceled: bool = False

    @property
    def key(self) -> str:
        return self.request.key

    @property
    def environments(self) -> tuple[str, ...]:
        return self.request.environments


class FakeDeployer:
    """A deployer whose answers come from ``handler(request, reads)`` (reads counts from 1).

    Keeps every trigger (:attr:`triggers`), so a test can check that nothing was triggered twice;
    ``find`` answers by idempotency key like a real deployer.
    """

    def __init__(self, handler: DeploymentHandler = succeed_at_once, *, clock: Clock | None = None) -> None:
        self.handler = handler
        self.clock = clock
        self._triggers: list[FakeTrigger] = []

    def triggers(self) -> list[FakeTrigger]:
        return list(self._triggers)

    def trigger(self, request: TriggerRequest) -> Deployment:
        made = FakeTrigger(str(len(self._triggers) + 1), request, self._now())
        self._triggers.append(made)
        return self._deployment(made, "created", Outcome.WAITING)

    def status(self, deployment_id: str) -> Deployment:
        made = self._get(deployment_id)
        if made.canceled:
            return self._deployment(made, "canceled", Outcome.FAILED)
        made.reads += 1
        outcome = self.handler(made.request, made.reads)
        return self._deployment(made, _STATUS[outcome], outcome)

    def find(self, key: str) -> Deployment | None:
        for made in reversed(self._triggers):
            if made.key == key:
                return self._deployment(made, "created", Outcome.WAITING)
        return None

    def cancel(self, deployment_id: str) -> Deployment:
        made = self._get(deployment_id)
        made.canceled = True
        return self._deployment(made, "canceled", Outcome.FAILED)

    def _get(self, deployment_id: str) -> FakeTrigger:
        for made in self._triggers:
            if made.id == deployment_id:
                return made
        raise BackendError(f"no deployment {deployment_id}", transient=False, gone=True)

    def _deployment(self, made: FakeTrigger, status: str, outcome: Outcome) -> Deployment:
        finished = self._now() if outcome in (Outcome.SUCCEEDED, Outcome.FAILED) else None
        return Deployment(made.id, made.key, status, outcome, started_at=made.at, finished_at=finished)

    def _now(self) -> float:
        return self.clock.now() if self.clock is not None else 0.0


class FakePackages:
    """Package builds whose answers come from ``handler(package, version, reads)``."""

    def __init__(self, handler: PackageHandler = built_at_once) -> None:
        self.handler = handler
        self.reads: dict[tuple[str, str], int] = {}

    def status(self, package: str, version: str) -> PackageBuild:
        reads = self.reads[(package, version)] = self.reads.get((package, version), 0) + 1
        outcome = self.handler(package, version, reads)
        return PackageBuild(package, version, _STATUS[outcome], outcome)


class RecordingNotifier:
    """Keeps every notice, for a test to read."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def notify(self, notice: Notice) -> None:
        self.notices.append(notice)

    @property
    def messages(self) -> list[str]:
        return [notice.message for notice in self.notices]


class FaultyNotifier:
    """A notifier that refuses as scripted, then accepts (a receiver with an outage, in-process).

    Each call to ``notify`` takes the next item of ``faults``: an exception to raise (e.g.
    ``NotifierError("429 rate limited", retry_after=1)``), or None to accept; once the script is used
    up, ``then`` is raised for every notice (None: every notice is accepted).  ``delay_s``: each call
    takes that long first (a slow receiver).  Thread-safe: delivery calls it from its own thread.
    """

    def __init__(self, faults: Sequence[BaseException | None] = (), *, then: BaseException | None = None,
                 delay_s: float = 0.0) -> None:
        self._faults = list(faults)
        self.then = then
        self.delay_s = delay_s
        self.attempts: list[Notice] = []  # every call, refused or not
        self.notices: list[Notice] = []  # the accepted ones, in order
        self._lock = threading.Lock()

    def notify(self, notice: Notice) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.attempts.append(notice)
            fault = self._faults.pop(0) if self._faults else self.then
            if fault is None:
                self.notices.append(notice)
        if fault is not None:
            raise fault

    @property
    def messages(self) -> list[str]:
        with self._lock:
            return [notice.message for notice in self.notices]


CheckHandler = Callable[[CheckContext], "Verdict | CheckResult"]


class FakeCheck:
    """A production check whose answer a handler gives (a verdict, or a whole result)::

        incidents = FakeCheck("active_incidents", lambda context: Verdict.FAILED)
    """

    def __init__(self, name: str, handler: CheckHandler | None = None, *, rollback: bool = False) -> None:
        self.name = name
        self.rollback = rollback
        self.handler: CheckHandler = handler or (lambda context: Verdict.PASSED)
        self.contexts: list[CheckContext] = []  # every question it was asked, in order

    def run(self, context: CheckContext) -> CheckResult:
        self.contexts.append(context)
        answer = self.handler(context)
        if isinstance(answer, CheckResult):
            return answer
        return CheckResult(self.name, answer, f"{self.name} {answer.value} (a fake check)")


def fake_backends(deployer: FakeDeployer | None = None, packages: FakePackages | None = None,
                  clock: Clock | None = None, **options: Any) -> Backends:
    """Backends made of the doubles above (each made with its defaults unless given).

    ``clock`` may be any clock, a real one included (``deploystate.clock.SystemClock``).
    """
    clock = clock or ManualClock()
    deployer = deployer or FakeDeployer()
    if deployer.clock is None:
        deployer.clock = clock
    return Backends(deployer=deployer, packages=packages or FakePackages(), clock=clock,
                    description=options.pop("description", "in-memory doubles; nothing is deployed"),
                    **options)

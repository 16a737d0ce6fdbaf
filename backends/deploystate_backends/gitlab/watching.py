"""Waiting on GitLab by webhooks, with safety polls: fast and cheap at once.

The runner asks ``status()`` whenever it wakes.  These wrappers answer from their last read of a
pipeline while no hook said that pipeline changed and the read is younger than the safety
interval; otherwise they read through the API, which stays the truth.  A Pipeline Hook marks the
pipeline changed and wakes the runner's clock, so a finished pipeline is noticed within moments
instead of at the next poll.

A hook is used only to decide whether reading is worth it: one whose status means the same to
a rollout as the last read (``running`` after ``pending``) marks nothing.  Late, repeated or
out-of-order hooks therefore cost at most one extra read, and a lost one is caught by the next
safety poll, which also logs that a change arrived without its hook.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import attrs

from deploystate.ports import (
    Clock,
    Deployer,
    Deployment,
    Outcome,
    PackageBuild,
    PackageWatcher,
    TriggerRequest,
)
from deploystate.waiting import WaitPolicy
from deploystate_backends.gitlab.hooks import HookReceiver, HookSetupError, PipelineEvent, parse_listen
from deploystate_backends.gitlab.settings import GitLabSettings
from deploystate_backends.gitlab.statuses import outcome

logger = logging.getLogger("deploystate_backends.gitlab.watching")

_FINISHED = frozenset({Outcome.SUCCEEDED, Outcome.FAILED})
EARLY_MARKS_KEPT = 1000

V = TypeVar("V", Deployment, PackageBuild)


class RetryingDeployer(Deployer, Protocol):
    """A deployer that can also retry a deployment (the GitLab deployer: retry a pipeline)."""

    def retry(self, deployment_id: str) -> Deployment:
        ...


# Safety polls while Pipeline Hooks report changes: a lost hook is noticed within minutes.
SAFETY_POLLS = WaitPolicy(min_interval_s=150.0, max_interval_s=1200.0, approach=0.5)


def project_matches(configured: str, event: PipelineEvent) -> bool:
    """Settings name a project by id or path; a hook carries both."""
    if configured.isdigit():
        return event.project_id == int(configured)
    return configured.casefold() == event.project_path.casefold()


def wake_of(clock: object) -> Callable[[], None]:
    """The clock's ``wake`` (SystemClock and the stand-in's shared clock have one), or nothing."""
    wake = getattr(clock, "wake", None)
    return wake if callable(wake) else (lambda: None)


@attrs.define
class _Seen(Generic[V]):
    value: V
    first_at: float
    next_read_at: float
    marked: bool = False


@attrs.define
class WatchStats:
    reads: int = 0  # status reads through the API
    answered_from_memory: int = 0
    marks: int = 0  # hooks that made a read worthwhile
    missed_hooks: int = 0  # changes a safety poll found that no hook had announced


class _Memory(Generic[V]):
    """Last reads by key, with the safety schedule and the marks hooks left."""

    def __init__(self, now: Callable[[], float], safety: WaitPolicy, expected_s: float, what: str,
                 listening: Callable[[], bool]) -> None:
        self._now = now
        self.listening = listening
        self._safety = safety
        self._expected_s = expected_s
        self._what = what
        self.lock = threading.Lock()
        self.items: dict[Any, _Seen[V]] = {}
        self.stats = WatchStats()

    def fresh(self, key: object) -> tuple[V | None, bool]:
        """The remembered answer if no read is due (else None), and whether a hook asked for the
        read; that hook's mark is taken off, so a hook arriving during the read marks again."""
        if not self.listening():
            return None, False  # no hooks will come: read every time, as plain polling does
        now = self._now()
        with self.lock:
            seen = self.items.get(key)
            if seen is None:
                return None, False
            if not seen.marked and now < seen.next_read_at:
                self.stats.answered_from_memory += 1
                return seen.value, False
            hooked, seen.marked = seen.marked, False
            return None, hooked

    def remark(self, key: object) -> None:
        """A read failed: the next ask must read again, not trust the old answer."""
        with self.lock:
            seen = self.items.get(key)
            if seen is not None:
                seen.marked = True

    def store(self, key: object, value: V, *, read: bool, hooked: bool = False) -> None:
        now = self._now()
        with self.lock:
            before = self.items.get(key)
            first_at = before.first_at if before is not None else now
            if read:
                self.stats.reads += 1
                if before is not None and not hooked and before.value.outcome != value.outcome:
                    self.stats.missed_hooks += 1
                    logger.warning("%s %s became %s with no webhook announcing it; check that the project's "
                                   "Pipeline Hook is enabled and reaches deploystate", self._what,
                                   " ".join(key) if isinstance(key, tuple) else key, value.status)
            if value.outcome in _FINISHED:
                # Only a human's retry changes a finished pipeline, and that sends a hook too.
                wait = self._safety.max_interval_s
            else:
                wait = self._safety.delay(now - first_at, self._expected_s)
            self.items[key] = _Seen(value, first_at, now + wait, before.marked if before else False)

    def mark_if_changed(self, key: object, status: str) -> bool:
        with self.lock:
            seen = self.items.get(key)
            if seen is None or seen.marked or outcome(status) == seen.value.outcome:
                return False
            seen.marked = True
            self.stats.marks += 1
            return True


class WatchingDeployer:
    """A :class:`Deployer` whose ``status`` reads GitLab only when a hook or the safety net says so."""

    def __init__(self, inner: RetryingDeployer, project: str, now: Callable[[], float], safety: WaitPolicy,
                 listening: Callable[[], bool] = lambda: True) -> None:
        self.inner = inner
        self.project = project
        self.on_close: Callable[[], None] = lambda: None
        self._memory: _Memory[Deployment] = _Memory(now, safety, safety.expected_for("deployment"),
                                                     "deployer pipeline", listening)
        # Hooks for pipelines not known yet: a trigger's answer can arrive after its first hook.
        self._early: dict[str, str] = {}

    @property
    def stats(self) -> WatchStats:
        return self._memory.stats

    def close(self) -> None:
        """Stop listening for hooks (the process is done waiting)."""
        self.on_close()

    def trigger(self, request: TriggerRequest) -> Deployment:
        self._memory.listening()  # be there for the new pipeline's first hooks
        deployment = self.inner.trigger(request)
        self._remember(deployment)
        return deployment

    def find(self, key: str) -> Deployment | None:
        found = self.inner.find(key)
        if found is not None:
            self._remember(found)
        return found

    def status(self, deployment_id: str) -> Deployment:
        remembered, hooked = self._memory.fresh(deployment_id)
        if remembered is not None:
            return remembered
        try:
            deployment = self.inner.status(deployment_id)
        except Exception:
            self._memory.remark(deployment_id)
            raise
        self._memory.store(deployment_id, deployment, read=True, hooked=hooked)
        return deployment

    def retry(self, deployment_id: str) -> Deployment:
        deployment = self.inner.retry(deployment_id)
        self._memory.store(deployment_id, deployment, read=True, hooked=True)
        return deployment

    def cancel(self, deployment_id: str) -> Deployment:
        deployment = self.inner.cancel(deployment_id)
        self._memory.store(deployment_id, deployment, read=True, hooked=True)
        return deployment

    def _remember(self, deployment: Deployment) -> None:
        self._memory.store(deployment.id, deployment, read=False)
        with self._memory.lock:
            status = self._early.pop(deployment.id, None)
        if status is not None:
            self._memory.mark_if_changed(deployment.id, status)

    def hooked(self, event: PipelineEvent) -> bool:
        """Take note of a hook; True if it is worth waking the runner for."""
        if not project_matches(self.project, event):
            return False
        key = str(event.pipeline_id)
        with self._memory.lock:
            known = key in self._memory.items
            if not known:
                self._early[key] = event.status
                while len(self._early) > EARLY_MARKS_KEPT:
                    self._early.pop(next(iter(self._early)))
        return known and self._memory.mark_if_changed(key, event.status)


class WatchingPackages:
    """A :class:`PackageWatcher` that reads a package's builds only when a hook or the safety net says so."""

    def __init__(self, inner: PackageWatcher, projects: Mapping[str, str], now: Callable[[], float],
                 safety: WaitPolicy, listening: Callable[[], bool] = lambda: True) -> None:
        self.inner = inner
        self.projects = dict(projects)
        self._memory: _Memory[PackageBuild] = _Memory(now, safety, safety.expected_for("package_wait"),
                                                      "package build", listening)

    @property
    def stats(self) -> WatchStats:
        return self._memory.stats

    def status(self, package: str, version: str) -> PackageBuild:
        key = (package, version)
        remembered, hooked = self._memory.fresh(key)
        if remembered is not None:
            return remembered
        try:
            build = self.inner.status(package, version)
        except Exception:
            self._memory.remark(key)
            raise
        self._memory.store(key, build, read=True, hooked=hooked)
        return build

    def hooked(self, event: PipelineEvent) -> bool:
        packages = [name for name, project in self.projects.items() if project_matches(project, event)]
        worth = False
        for package in packages:
            with self._memory.lock:
                versions = [v for (p, v) in self._memory.items if p == package]
            for version in versions:
                # Package tags are the version plus commit ids: 13.10.202103011220+abc.def
                if event.ref == version or event.ref.startswith(f"{version}+"):
                    worth |= self._memory.mark_if_changed((package, version), event.status)
        return worth


class HookRouter:
    """Hands each hook to the watchers and wakes the runner when one of them wants a read."""

    def __init__(self, deployer: WatchingDeployer, packages: WatchingPackages,
                 wake: Callable[[], None]) -> None:
        self.deployer = deployer
        self.packages = packages
        self._wake = wake

    def __call__(self, event: PipelineEvent) -> None:
        worth = self.deployer.hooked(event)
        worth = self.packages.hooked(event) or worth
        if worth:
            self._wake()


class Listener:
    """The hook receiver, started on first use: only a process that waits (``run``) binds the port,
    not every command that merely builds the backend (``status``, ``promote``).

    If the port cannot be bound, that is logged as an error once and waiting falls back to
    polling by the runner's own policy (the watchers then always read).  ``stop()`` shuts the
    server down, frees the port and joins its thread, for good: a read after it polls.
    """

    def __init__(self, listen: str, secret: str) -> None:
        self.host, self.port = parse_listen(listen)
        self._secret = secret
        self.on_event: Callable[[PipelineEvent], None] = lambda event: None
        self._lock = threading.Lock()
        self._receiver: HookReceiver | None = None
        self._failed = False
        self._stopped = False

    def __repr__(self) -> str:
        return f"Listener({self.host}:{self.port})"

    def ensure(self) -> bool:
        """Listening (now or already); False if it cannot."""
        with self._lock:
            if self._receiver is None and not self._failed and not self._stopped:
                try:
                    self._receiver = HookReceiver(self.host, self.port, self._secret,
                                                  lambda event: self.on_event(event)).start()
                except HookSetupError as error:
                    self._failed = True
                    logger.error("%s; waiting falls back to polling", error)
            return self._receiver is not None

    @property
    def listening(self) -> bool:
        """Whether the server runs now (without starting it)."""
        with self._lock:
            return self._receiver is not None

    @property
    def receiver(self) -> HookReceiver:
        if not self.ensure():
            why = "it was stopped" if self._stopped else "see the log"
            raise HookSetupError(f"not listening for webhooks on {self.host}:{self.port}; {why}")
        assert self._receiver is not None
        return self._receiver

    def stop(self) -> None:
        """Shut the server down (its port is free once this returns); it does not start again."""
        with self._lock:
            self._stopped = True
            receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.stop()


@attrs.frozen
class Webhooks:
    """The watching wrappers and the listener that feeds them (``listener.stop()`` ends it)."""

    deployer: WatchingDeployer
    packages: WatchingPackages
    listener: Listener

    @property
    def receiver(self) -> HookReceiver:
        return self.listener.receiver


def watch(deployer: RetryingDeployer, packages: PackageWatcher, settings: GitLabSettings, clock: Clock, *,
          secret: str, listen: str, safety: WaitPolicy | None = None, start: bool = True) -> Webhooks:
    """Wrap the GitLab deployer and package watcher and listen for their hooks (now, or with
    ``start=False`` on the first status read)."""
    safety = safety or SAFETY_POLLS
    listener = Listener(listen, secret)
    watching_deployer = WatchingDeployer(deployer, settings.deployer_project, clock.now, safety,
                                         listener.ensure)
    watching_packages = WatchingPackages(
        packages, {"cng": settings.cng_project, "omnibus": settings.omnibus_project}, clock.now, safety,
        listener.ensure)
    listener.on_event = HookRouter(watching_deployer, watching_packages, wake_of(clock))
    watching_deployer.on_close = listener.stop
    if start:
        listener.ensure()
    return Webhooks(watching_deployer, watching_packages, listener)

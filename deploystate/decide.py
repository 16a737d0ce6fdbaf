"""Deciding what to do next: a pure function of the rollout, what was just seen outside, and now.

``decide(view, outside, config)`` returns a :class:`Decision`: records to append, then calls to
make (a deployer's status, a package build's status, a look-up, a trigger), and when to look
again.  It calls nothing and writes nothing; :mod:`deploystate.runner` carries decisions out and
journals them.  Like a Temporal workflow, it can be replayed and property-tested without a
backend: the same inputs give the same decision.

Exactly-once triggering rests on three rules kept here:

1. a deployment's ``start`` (its intent, with its idempotency key) is recorded before any call
   that could trigger it;
2. every key is looked up before it is triggered, even one this runner has just written: a
   journal that was lost and started again writes the same keys, and only the deployer knows
   whether they ran (a fresh journal cannot);
3. after a trigger failed in doubt (time-out, 5xx, dropped connection), the look-up waits
   ``trigger_doubt_s`` so that a late pipeline is found, not doubled.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from deploystate.actions import Action
from deploystate.config import RunnerConfig
from deploystate.environments import (
    Claim,
    EnvironmentView,
    Move,
    Success,
    claim,
    claimed,
    newer_of,
    queued,
    released,
)
from deploystate.journal import Entry
from deploystate.machine import Phase
from deploystate.ports import (
    CheckResult,
    Deployment,
    Outcome,
    PackageBuild,
    TriggerRequest,
    Verdict,
    natural_key,
)
from deploystate.rollout import RolloutView, StepState
from deploystate.spec import Step, StepKind
from deploystate.standing import Where


class Ask(enum.StrEnum):
    PACKAGE = "package"  # the package build's status
    STATUS = "status"  # the deployment's status
    FIND = "find"  # the deployment triggered with this key, if any
    TRIGGER = "trigger"  # start the deployment
    CANCEL = "cancel"  # stop a deployment of an aborted rollout
    CHECK = "check"  # run the production checks for the step's environments


@attrs.frozen
class Call:
    """One call to make outside, for one step's current attempt."""

    ask: Ask
    step: str
    attempt: int
    package: str | None = None
    version: str | None = None
    deployment_id: str | None = None
    request: TriggerRequest | None = None
    # A look-up made just after the production checks passed: only then may a gated step trigger.
    checked: bool = False
    environments: tuple[str, ...] = ()  # CHECK: where the deployment would go
    rollback: bool = False  # CHECK: for a rollback (checks not marked for rollbacks are not run)


@attrs.frozen
class Seen:
    """What a call answered: a deployment (None from a look-up that found nothing), a build, or an error."""

    call: Call
    deployment: Deployment | None = None
    build: PackageBuild | None = None
    error: str | None = None
    transient: bool = False
    checks: tuple[CheckResult, ...] = ()


@attrs.frozen
class Outside:
    """What the runner knows beyond the journal."""

    now: float
    seen: Mapping[str, Seen] = attrs.field(factory=dict)  # by step, this pass's answers
    hinted: bool = False  # the backend says when its next change happens: no polling
    # The environments this rollout's real deployments go to, as their journals stand.
    environments: Mapping[str, EnvironmentView] = attrs.field(factory=dict)
    gate: tuple[str, ...] = ()  # the production checks configured (none: nothing is checked)
    version_key: Callable[[str], tuple[Any, ...]] = natural_key


class Stop(enum.StrEnum):
    DONE = "done"
    ABORTED = "aborted"
    FAILED = "failed"  # a step failed; a human must retry or abort
    PROMOTION = "waiting_for_promotion"
    SUPERSEDED = "superseded"  # a newer version got to an environment first
    PAUSED = "paused"  # the caller's wake-up budget ran out


@attrs.frozen
class EnvironmentEntries:
    """Records for an environment's journal, to append after its record ``expected_seq``."""

    environment: str
    expected_seq: int
    entries: tuple[Entry, ...]


@attrs.frozen
class Decision:
    entries: tuple[Entry, ...] = ()  # record these first, in one append
    calls: tuple[Call, ...] = ()  # then make these
    wake_at: float | None = None  # nothing to do before this (None: no deadline of our own)
    stop: Stop | None = None  # the runner has nothing more to do: why
    environments: tuple[EnvironmentEntries, ...] = ()  # then append these (claims, releases)

    @property
    def idle(self) -> bool:
        return not self.entries and not self.calls and not self.environments


def decide(view: RolloutView, outside: Outside, config: RunnerConfig) -> Decision:
    """What to record and what to call now, for every step of ``view``."""
    return _Decider(view, outside, config).all_steps()


def decide_step(view: RolloutView, step: str, outside: Outside, config: RunnerConfig) -> Decision:
    """The same, for the one named step (starting it if it is ready); the others are left alone."""
    view.spec.step(step)  # an unknown name is refused here
    return _Decider(view, outside, config).one_step(step)


def stop_of(view: RolloutView, now: float, config: RunnerConfig) -> Stop | None:
    """Why a runner that has nothing to do now may stop for good (None: it should wait)."""
    standing = view.standing
    if standing.where is Where.DONE:
        return Stop.DONE
    if standing.where is Where.ABORTED:
        return Stop.ABORTED
    if standing.where is Where.SUPERSEDED:
        return Stop.SUPERSEDED
    for step in view.spec.steps:
        state = view.steps[step.name]
        if state.phase is Phase.RUNNING:
            if step.kind is StepKind.PROMOTION and (config.auto_promote is None
                                                    or _refused(view, PROMOTION_CHECKS, state.attempt)):
                continue
            return None
        if state.phase is Phase.FAILED and still_watched(step, state, now, config):
            return None
    if view.ready_steps:
        return None
    if standing.failed:
        return Stop.FAILED
    if standing.promotion:
        return Stop.PROMOTION
    return Stop.FAILED


def still_watched(step: Step, state: StepState, now: float, config: RunnerConfig) -> bool:
    """A failed step is watched a while for a retry made outside (in the deployer's UI)."""
    watchable = step.kind is StepKind.PACKAGE_WAIT or state.deployment_id is not None
    return watchable and state.failed_at is not None and now - state.failed_at < config.failed_watch_s


_LEFT_TO_THE_ROLLOUT = frozenset({Phase.PENDING, Phase.SUCCEEDED})  # a step's own pass skips these
PROMOTION_CHECKS = "promotion"  # what the checks run at a promotion are recorded for
# A lock is lifted by unlocking, never by an override.
NOT_OVERRIDABLE = frozenset({"environment_lock"})
_FAILING = frozenset({Verdict.FAILED, Verdict.ERROR})


def _refused(view: RolloutView, what: str, attempt: int) -> bool:
    """The checks last recorded for ``what`` (this attempt) refused it."""
    last = view.checks.get(what)
    return last is not None and last.get("attempt") == attempt and not last.get("passed")


def failing_checks(results: tuple[CheckResult, ...]) -> frozenset[str]:
    return frozenset(r.name for r in results if r.verdict in _FAILING)


def checks_pass(view: RolloutView, results: tuple[CheckResult, ...], now: float) -> bool:
    """Every check passed, or those failing are covered by live overrides (a lock never is)."""
    failing = failing_checks(results)
    return not failing or (not failing & NOT_OVERRIDABLE and view.overridden(failing, now))


def protected_environments(view: RolloutView) -> tuple[str, ...]:
    """Where the production checks look: the environments of the real protected deployments (of
    every protected deployment when none is real), or a rollback's own environment."""
    if view.rollback is not None:
        return (str(view.rollback.get("environment")),)
    protected = [s for s in view.spec.steps if s.protected]
    real = set(view.strategy.real_steps(view.spec))
    chosen = [s for s in protected if s.name in real] or protected
    return tuple(sorted({env for s in chosen for env in s.targets}))


class _Decider:
    def __init__(self, view: RolloutView, outside: Outside, config: RunnerConfig) -> None:
        self.view = view
        self.outside = outside
        self.config = config
        self.now = outside.now
        self.active = view.active
        # Aborted without --leave-running: what still deploys is stopped, a trigger in flight or
        # in doubt included (found by its key), and nothing is triggered.
        self.cleaning = view.status == "aborted" and not view.leave_running
        self.cleanup_pending = False
        self.entries: list[Entry] = []
        self.calls: list[Call] = []
        self.wake: list[float] = []
        self.env_entries: dict[str, list[Entry]] = {}
        self._real: frozenset[str] | None = None

    # -- the whole rollout ----------------------------------------------------------------
    def all_steps(self) -> Decision:
        view = self.view
        self._releases()
        states = view.steps
        for step in view.spec.steps:
            if states[step.name].phase not in _LEFT_TO_THE_ROLLOUT:  # _step would do nothing
                self._step(step)
        if self.entries or self.calls or not self.active:
            return self._decision()
        for name in view.ready_steps:
            self._start(view.spec.step(name))
        if not self.entries and view.can_finish():
            self.entries.append(self._entry(Action.FINISH, None, {}))
        return self._decision()

    def one_step(self, name: str) -> Decision:
        step = self.view.spec.step(name)
        self._releases()
        self._step(step)
        if not self.entries and not self.calls and name in self.view.ready_steps:
            self._start(step)
        return self._decision()

    def _decision(self) -> Decision:
        stop = None
        envs = tuple(EnvironmentEntries(env, self.outside.environments.get(env, EnvironmentView(env)).seq,
                                        tuple(entries)) for env, entries in sorted(self.env_entries.items()))
        if not self.entries and not self.calls and not envs and not self.cleanup_pending:
            stop = stop_of(self.view, self.now, self.config)
            if stop is Stop.FAILED:
                self._last_looks()
                if self.calls:
                    stop = None
        return Decision(tuple(self.entries), tuple(self.calls), min(self.wake) if self.wake else None, stop,
                        envs)

    # -- one step -------------------------------------------------------------------------
    def _step(self, step: Step) -> None:
        state = self.view.steps[step.name]
        phase = state.phase
        if phase is Phase.PENDING or phase is Phase.SUCCEEDED:
            return  # started (or not) by the rollout as a whole
        seen = self.outside.seen.get(step.name)
        if seen is not None and seen.call.attempt != state.attempt:
            seen = None  # an answer for an attempt that is over
        if phase is Phase.RUNNING and step.targets and state.deployment_id is None:
            # Even an ended rollout keeps a trigger the deployer accepted: it happened.
            self._trigger(step, state, seen)
        elif not self.active:
            if self.cleaning and phase is Phase.RUNNING and step.targets and not state.canceled:
                self._cancel(step, state, seen)
            elif self._left_running(step, state):
                self._watch_left_running(step, state, seen)
            return
        elif phase is Phase.RUNNING:
            self._running(step, state, seen)
        else:
            self._failed(step, state, seen)

    def _start(self, step: Step) -> None:
        state = self.view.steps[step.name]
        data: dict[str, Any] = {}
        if step.targets:
            attempt = state.attempt + 1
            strategy = self.view.strategy  # the plan the rollout was created with, not today's
            data = {"key": f"{self.view.rollout_id}/{step.name}/{attempt}", "attempt": attempt,
                    "environments": list(step.targets), "ref": strategy.ref_for(step),
                    "check_mode": strategy.check_mode_for(step), "version": self.view.version}
        elif step.kind is StepKind.BAKE:
            # The soak counts from when the deployment before it really finished, not from when
            # we noticed (a late look would otherwise lengthen every bake).
            ends = [self.view.steps[n].finished_at for n in step.needs]
            known = [at for at in ends if at is not None and at <= self.now]
            if known:
                data = {"from": max(known)}
        self.entries.append(self._entry(Action.START, step.name, data))

    def _running(self, step: Step, state: StepState, seen: Seen | None) -> None:
        kind = step.kind
        if kind is StepKind.TAG:
            self.entries.append(self._entry(Action.SUCCEED, step.name, {"version": self.view.version}))
        elif kind is StepKind.BAKE:
            assert state.started_at is not None and step.duration_s is not None
            since = state.timed_from if state.timed_from is not None else state.started_at
            elapsed = self.now - since
            if elapsed >= step.duration_s:
                self.entries.append(self._entry(Action.SUCCEED, step.name, {"elapsed_s": elapsed}))
            else:
                self.wake.append(since + step.duration_s)
        elif kind is StepKind.PROMOTION:
            by = self.config.auto_promote
            if by is None or _refused(self.view, PROMOTION_CHECKS, state.attempt):
                return  # a person promotes (or overrides the checks that refused it)
            data: dict[str, Any] = {"by": by, "reason": "automatic promotion (simulation)"}
            if self.outside.gate:
                if seen is None or seen.call.ask is not Ask.CHECK:
                    self.calls.append(self._check_call(step, state, protected_environments(self.view)))
                    return
                passed = checks_pass(self.view, seen.checks, self.now)
                self.entries.append(self._checked(PROMOTION_CHECKS, state, seen.checks, passed))
                if not passed:
                    return
                data["checks"] = "passed"
            self.entries.append(Entry(Action.SUCCEED.value, self.now, by, step.name, data))
        elif seen is None:
            self.calls.append(self._look(step, state))
        elif seen.error is not None:
            self._trouble(step, state, seen)
        elif kind is StepKind.PACKAGE_WAIT:
            assert seen.build is not None
            self._outcome(step, state, seen.build.outcome, seen.build.status, {},
                          self.config.package_wait_limit_s,
                          f"{step.package} build {seen.build.status}",
                          f"no finished {step.package} build after {{minutes}} min ({seen.build.status})")
        else:
            deployment = seen.deployment
            assert deployment is not None
            extra: dict[str, Any] = {"deployment_id": deployment.id}
            if deployment.web_url:  # so a notice of its end can link it, whoever delivers it
                extra["web_url"] = deployment.web_url
            if deployment.finished_at is not None:
                extra["finished_at"] = deployment.finished_at
            self._outcome(step, state, deployment.outcome, deployment.status, extra,
                          self.config.deployment_wait_limit_s,
                          f"deployer pipeline {deployment.id} {deployment.status}",
                          f"deployer pipeline {deployment.id} still {deployment.status} "
                          "after {minutes} min")

    def _look(self, step: Step, state: StepState) -> Call:
        if step.kind is StepKind.PACKAGE_WAIT:
            return Call(Ask.PACKAGE, step.name, state.attempt, package=step.package,
                        version=self.view.version)
        return Call(Ask.STATUS, step.name, state.attempt, deployment_id=state.deployment_id)

    def _outcome(self, step: Step, state: StepState, outcome: Outcome, status: str, extra: dict[str, Any],
                 limit: float, failed: str, timed_out: str) -> None:
        assert state.started_at is not None
        elapsed = self.now - state.started_at
        if outcome is Outcome.SUCCEEDED:
            self.entries.append(self._entry(Action.SUCCEED, step.name,
                                            {"status": status, **extra, "duration_s": elapsed}))
        elif outcome is Outcome.FAILED:
            self.entries.append(self._entry(Action.FAIL, step.name,
                                            {"status": status, **extra, "reason": failed}))
        elif elapsed > limit:
            reason = "timed out: " + timed_out.format(minutes=int(elapsed // 60))
            self.entries.append(self._entry(Action.FAIL, step.name,
                                            {"status": status, **extra, "timed_out": True, "reason": reason}))
        else:
            if outcome is Outcome.UNKNOWN and status != state.last_status:
                self.entries.append(self._entry(Action.OBSERVED, step.name, {
                    "status": status, "severity": "warning",
                    "message": f"unknown status {status!r}; treated as still running"}))
            elif outcome is Outcome.BLOCKED and status != state.last_status:
                where = f"pipeline {extra['deployment_id']}" if "deployment_id" in extra else "its build"
                self.entries.append(self._entry(Action.OBSERVED, step.name, {
                    "status": status, "severity": "warning",
                    "message": f"blocked on a {status} job in {where}; "
                               + ("it starts at its scheduled time" if status == "scheduled"
                                  else "a person must play it")
                               + f". Still waiting, within the limit of {int(limit // 60)} min"}))
            self.wake.append(self._next_poll(step, state, limit))

    def _next_poll(self, step: Step, state: StepState, limit: float) -> float:
        assert state.started_at is not None
        # Wake at the wait's limit at the latest, so a time-out is announced when it happens.
        deadline = state.started_at + limit + 1.0
        if self.outside.hinted:
            return deadline
        policy = self.config.wait_policy
        elapsed = self.now - state.started_at
        return min(deadline, self.now + policy.delay(elapsed, policy.expected_for(step.kind.value)))

    def _trouble(self, step: Step, state: StepState, seen: Seen) -> None:
        message = str(seen.error)
        if seen.transient:
            if state.last_status != f"error: {message}":
                self.entries.append(self._entry(Action.OBSERVED, step.name, {
                    "status": f"error: {message}", "severity": "warning",
                    "message": f"{message} (will try again)"}))
            self.wake.append(self.now + self.config.wait_policy.min_interval_s)
        else:
            self.entries.append(self._entry(Action.FAIL, step.name, {"reason": message, "status": "error"}))

    # -- triggering ------------------------------------------------------------------------
    def _trigger(self, step: Step, state: StepState, seen: Seen | None) -> None:
        assert state.key is not None
        if seen is not None and seen.call.ask in (Ask.FIND, Ask.TRIGGER):
            if seen.error is None and seen.deployment is not None:
                deployment = seen.deployment
                data: dict[str, Any] = {"deployment_id": deployment.id, "key": deployment.key,
                                        "status": deployment.status}
                if deployment.web_url:
                    data["web_url"] = deployment.web_url
                self.entries.append(self._entry(Action.TRIGGERED, step.name, data))
                return
            if not self.active:
                if self.cleaning and seen.error is not None and seen.transient:
                    self._clean_up_later(self.now + self.config.wait_policy.min_interval_s)
                return  # looked up (or failed for good): nothing to stop, and nothing is triggered
            if seen.error is None:  # looked up: nobody triggered it
                if self._gated(step) and not seen.call.checked:
                    # Production never starts on stale checks: run them now, then look up again.
                    self.calls.append(self._check_call(step, state, step.targets))
                    return
                self.calls.append(self._trigger_call(step, state, Ask.TRIGGER))
                return
            if not seen.transient:
                self._trouble(step, state, seen)
                return
            if seen.call.ask is Ask.TRIGGER:
                doubt = self.config.trigger_doubt_s
                self.entries.append(self._entry(Action.OBSERVED, step.name, {
                    "status": f"error: {seen.error}", "severity": "warning", "trigger_in_doubt": True,
                    "message": f"{seen.error}; the trigger is in doubt: will try again after looking its "
                               f"key up in {int(doubt)} s"}))
                self.wake.append(self.now + doubt)
                return
            self._trouble(step, state, seen)  # the look-up itself failed: look again later
            return
        if not self.active and not self.cleaning:
            return
        doubt_ends = (state.doubt_since or 0.0) + self.config.trigger_doubt_s
        if state.doubt_since is not None and self.now < doubt_ends:
            if self.active:
                self.wake.append(doubt_ends)
            else:
                self._clean_up_later(doubt_ends)
            return
        if self.active and step.name in self.real and not self._hold_environments(step, state):
            return
        if seen is not None and seen.call.ask is Ask.CHECK and self.active:
            if self._checks_let(step, state, seen):
                self.calls.append(self._trigger_call(step, state, Ask.FIND, checked=True))
            return
        self.calls.append(self._trigger_call(step, state, Ask.FIND))

    # -- the gate: environments and production checks ------------------------------------------
    @property
    def real(self) -> frozenset[str]:
        """The steps of the rollout's real path (what claims environments), worked out once."""
        if self._real is None:
            self._real = frozenset(self.view.strategy.real_steps(self.view.spec))
        return self._real

    def _gated(self, step: Step) -> bool:
        """Whether the production checks must pass right before ``step`` triggers."""
        return (bool(self.outside.gate) and self.active and step.name in self.real
                and (step.protected or self.view.rollback is not None))

    def _env(self, name: str) -> EnvironmentView:
        return self.outside.environments.get(name) or EnvironmentView(name)

    def _hold_environments(self, step: Step, state: StepState) -> bool:
        """True when the step holds every environment it deploys to; else the records and waits
        that bring it closer (a claim, a place in the queue, or the end: superseded)."""
        assert state.key is not None
        rollback = self.view.rollback is not None
        want = Claim(self.view.rollout_id, step.name, state.key, self.view.version, self.now, rollback)
        for env in sorted(set(step.targets)):  # one order for everyone: no two rollouts wait on each other
            view = self._env(env)
            answer = claim(view, want, self.outside.version_key)
            if answer.move is Move.HELD:
                continue
            if answer.move is Move.SUPERSEDED:
                self._supersede(step, env, answer.why, answer.by_version)
                return False
            if answer.move is Move.CLAIM:
                self.env_entries.setdefault(env, []).append(claimed(want, self.now, self.config.actor))
                return False
            if not any(q.key == want.key for q in view.queued):
                self.env_entries.setdefault(env, []).append(queued(want, self.now, self.config.actor))
            self._held(step, state, f"waiting: {answer.why}", answer.why, env)
            return False
        return True

    def _held(self, step: Step, state: StepState, status: str, why: str, env: str) -> None:
        """The step waits before its trigger (a lock, a busy environment, failing checks): said
        once, looked at again soon, and given up at the deployment's wait limit."""
        assert state.started_at is not None
        limit = self.config.deployment_wait_limit_s
        waited = self.now - state.started_at
        if waited > limit:
            self.entries.append(self._entry(Action.FAIL, step.name, {
                "status": status, "timed_out": True,
                "reason": f"timed out after {int(waited // 60)} min before its trigger: {why}"}))
            return
        if state.last_status != status:
            self.entries.append(self._entry(Action.OBSERVED, step.name, {
                "status": status, "severity": "warning", "environment": env, "message": why}))
        self.wake.append(min(self.now + self.config.wait_policy.min_interval_s,
                             state.started_at + limit + 1.0))

    def _supersede(self, step: Step, env: str, why: str, by_version: str | None) -> None:
        """A newer version got to ``env`` first: this rollout ends there, superseded, not failed."""
        data = {"environment": env, "by_version": by_version, "why": why}
        self.entries.append(self._entry(Action.SUPERSEDED, step.name, data))
        self.entries.append(self._entry(Action.FAIL, step.name, {
            "status": "superseded", "superseded": True, "reason": f"superseded: {why}"}))
        self.entries.append(self._entry(Action.ABORT, None, {
            "by": self.config.actor, "reason": f"superseded in {env}: {why}", "superseded": True}))

    def _checks_let(self, step: Step, state: StepState, seen: Seen) -> bool:
        passed = checks_pass(self.view, seen.checks, self.now)
        last = self.view.checks.get(step.name)
        summary = [(r.name, r.verdict.value, r.detail) for r in seen.checks]
        same = (last is not None and last.get("attempt") == state.attempt and not last.get("passed")
                and [(r.get("name"), r.get("verdict"), r.get("detail")) for r in last.get("results", ())]
                == summary)
        if passed or not same:
            self.entries.append(self._checked(step.name, state, seen.checks, passed))
        if passed:
            return True
        failing = sorted(failing_checks(seen.checks))
        locked = sorted(set(failing) & NOT_OVERRIDABLE)
        how = ("unlock the environment" if locked else
               f"'deploystate override {self.view.rollout_id} --by YOU --reason TEXT'")
        self._held(step, state, "held: checks failing: " + ", ".join(failing),
                   f"held before its trigger: production checks failing ({', '.join(failing)}); it goes on "
                   f"when they pass, or after {how}", ",".join(step.targets))
        return False

    def _checked(self, what: str, state: StepState, results: tuple[CheckResult, ...], passed: bool) -> Entry:
        failing = failing_checks(results)
        data: dict[str, Any] = {"for": what, "attempt": state.attempt, "passed": passed,
                                "results": [r.as_dict() for r in results]}
        if passed and failing:
            data["overridden"] = sorted(failing)
        return self._entry(Action.CHECKED, None if what == PROMOTION_CHECKS else what, data)

    def _check_call(self, step: Step, state: StepState, environments: tuple[str, ...]) -> Call:
        return Call(Ask.CHECK, step.name, state.attempt, environments=environments,
                    rollback=self.view.rollback is not None)

    def _releases(self) -> None:
        """Give back the environments (and queue places) this rollout no longer needs."""
        rid = self.view.rollout_id
        for env, view in self.outside.environments.items():
            for held in view.holds(rid):
                outcome = self._release_outcome(held, is_holder=held is view.holder)
                if outcome is None:
                    continue
                newest = None
                if outcome == "succeeded":
                    done = Success(held.version, held.rollout, self.now, held.rollback)
                    newest = newer_of(view.newest, done, self.outside.version_key)
                self.env_entries.setdefault(env, []).append(
                    released(held, outcome, self.now, self.config.actor, newest=newest))

    def _release_outcome(self, held: Claim, *, is_holder: bool) -> str | None:
        """None while the claim is still needed; else how it ended (succeeded, failed...)."""
        state = self.view.steps.get(held.step)
        if state is None or state.key != held.key:
            return "over"  # an earlier attempt's
        phase = state.phase
        if self.view.active:
            if phase is Phase.RUNNING and (is_holder or state.deployment_id is None):
                return None
            if phase is Phase.FAILED and state.timed_out and state.deployment_id is not None and is_holder:
                return None  # given up waiting, but it may still deploy there
        elif self.cleaning and phase is Phase.RUNNING and state.deployment_id is not None \
                and not state.canceled and is_holder:
            return None  # being canceled
        elif is_holder and self._left_running(self.view.spec.step(held.step), state):
            return None  # left running by the abort: it may still deploy there
        if is_holder and (phase is Phase.SUCCEEDED or state.outside_outcome == Outcome.SUCCEEDED.value):
            return "succeeded"
        if self.view.superseded is not None:
            return "superseded"
        return "failed" if phase is Phase.FAILED else self.view.status

    def _clean_up_later(self, at: float) -> None:
        self.wake.append(at)
        self.cleanup_pending = True

    def _left_running(self, step: Step, state: StepState) -> bool:
        """A deployment an abort left running, whose end is not known yet: its environment stays
        held until it ends, so it is watched (by whichever runner drives the rollout still)."""
        still = state.phase is Phase.RUNNING or (state.phase is Phase.FAILED and state.timed_out)
        return (self.view.leave_running and still and state.deployment_id is not None
                and state.outside_outcome is None and step.name in self.real)

    def _watch_left_running(self, step: Step, state: StepState, seen: Seen | None) -> None:
        if seen is None or seen.call.ask is not Ask.STATUS:
            self.calls.append(self._look(step, state))
            return
        deployment = seen.deployment
        if seen.error is None and deployment is not None and deployment.outcome in (Outcome.SUCCEEDED,
                                                                                     Outcome.FAILED):
            self.entries.append(self._entry(Action.OBSERVED, step.name, {
                "status": deployment.status, "deployment_id": deployment.id,
                "ended": deployment.outcome.value,
                "severity": "info", "message": f"pipeline {deployment.id}, left running by the abort, "
                                               f"ended {deployment.status}; its environments are free"}))
            return
        if seen.error is not None and not seen.transient:
            self.entries.append(self._entry(Action.OBSERVED, step.name, {
                "status": f"error: {seen.error}", "ended": Outcome.UNKNOWN.value, "severity": "error",
                "message": f"pipeline {state.deployment_id}, left running by the abort, cannot be read "
                           f"any more ({seen.error}); its environments are given back: check it in the "
                           "deployer"}))
            return
        self._clean_up_later(self.now + self.config.wait_policy.min_interval_s)

    def _cancel(self, step: Step, state: StepState, seen: Seen | None) -> None:
        """Stop the deployment of an aborted rollout (one the abort itself could not know of)."""
        if seen is None or seen.call.ask is not Ask.CANCEL:
            self.calls.append(Call(Ask.CANCEL, step.name, state.attempt, deployment_id=state.deployment_id))
            return
        if seen.error is None and seen.deployment is not None:
            self.entries.append(self._entry(Action.CANCELED, step.name, {
                "deployment_id": seen.deployment.id, "status": seen.deployment.status,
                "by": self.config.actor, "reason": "abort", "outcome": seen.deployment.outcome.value}))
        elif state.last_status != f"error: {seen.error}":
            self.entries.append(self._entry(Action.OBSERVED, step.name, {
                "status": f"error: {seen.error}", "severity": "error", "deployment_id": state.deployment_id,
                "message": f"could not cancel pipeline {state.deployment_id} ({seen.error}); it may still "
                           "be deploying: cancel it in the deployer"}))

    def _trigger_call(self, step: Step, state: StepState, ask: Ask, *, checked: bool = False) -> Call:
        assert state.key is not None
        request = TriggerRequest(key=state.key, version=self.view.version, environments=state.environments,
                                 ref=state.ref or "", check_mode=bool(state.check_mode),
                                 user=self.config.deploy_user, rollback=self.view.rollback is not None)
        return Call(ask, step.name, state.attempt, request=request, checked=checked)

    # -- a failed step may come back ---------------------------------------------------------
    def _failed(self, step: Step, state: StepState, seen: Seen | None) -> None:
        watched = still_watched(step, state, self.now, self.config)
        if seen is None:
            if watched:
                self.calls.append(self._look(step, state))
            return
        interval = self.config.wait_policy.max_interval_s
        if seen.error is None:
            outcome, status = ((seen.build.outcome, seen.build.status) if seen.build is not None
                               else (seen.deployment.outcome, seen.deployment.status) if seen.deployment
                               else (Outcome.MISSING, "missing"))
            # A step failed by our time-out is still running out there: that is no sign of a
            # retry, and resuming it would time it out again at once, forever.  Only success counts.
            alive = outcome in (Outcome.WAITING, Outcome.BLOCKED)
            if outcome is Outcome.SUCCEEDED or (alive and not state.timed_out):
                self.entries.append(self._entry(Action.RESUME, step.name, {"status": status}))
                return
        if watched:
            assert state.failed_at is not None
            self.wake.append(min(self.now + interval, state.failed_at + self.config.failed_watch_s))

    def _last_looks(self) -> None:
        """Before a rollout is left stopped, each failed step's last deployment (or build) is read
        once more, however long ago it failed: a person may have retried it in the deployer since,
        and it is picked up rather than triggered anew."""
        for step in self.view.spec.steps:
            state = self.view.steps[step.name]
            seen = self.outside.seen.get(step.name)
            looked = seen is not None and seen.call.attempt == state.attempt
            lookable = step.kind is StepKind.PACKAGE_WAIT or state.deployment_id is not None
            if state.phase is Phase.FAILED and lookable and not looked:
                self.calls.append(self._look(step, state))

    def _entry(self, action: Action, step: str | None, data: dict[str, Any]) -> Entry:
        return Entry(action.value, self.now, self.config.actor, step, data)

"""The runner: advances rollouts by asking the outside world and recording what it saw.

Every change goes through the journal first.  For deployments the order is what makes
triggering exactly-once:

1. append ``start`` with a fresh idempotency key (the intent), then
2. call the deployer with that key, then
3. append ``triggered`` with the deployment id.

A runner that resumes and finds a step started but not ``triggered`` asks the deployer for the
key before triggering again.  Only one runner per rollout may run at a time (``Store.hold``);
operator commands (promote, retry, abort) write with the expected sequence number and simply
try again on conflict, since they call nothing outside.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from deploystate.errors import DeploystateError
from deploystate.journal import Entry, JournalConflict, Record
from deploystate.machine import Action, Phase
from deploystate.notices import LOG, LogNotifier, notice_for
from deploystate.ports import (
    BackendError,
    Backends,
    Deployment,
    Hints,
    Notifier,
    Outcome,
    Store,
    TriggerRequest,
)
from deploystate.replay import (
    CREATED,
    OBSERVED,
    TRIGGERED,
    Machines,
    RolloutView,
    StepRun,
    apply_records,
    rebuild,
)
from deploystate.spec import Spec, Step, StepKind, spec_to_mapping
from deploystate.strategy import Strategy
from deploystate.version import check_version
from deploystate.waiting import WaitPolicy

OPERATOR_ATTEMPTS = 5
CHECKPOINTS = (
    "recorded",  # after any append to the journal
    "before-trigger",  # the intent is durable, the deployer has not been called
    "after-trigger",  # the deployer accepted, the journal does not know yet
    "before-call",  # about to ask the outside world (status, find, trigger)
    "before-sleep",  # about to wait (e.g. in the middle of the bake)
)


class Stop(enum.StrEnum):
    DONE = "done"
    ABORTED = "aborted"
    FAILED = "failed"  # a step failed; a human must retry or abort
    PROMOTION = "waiting_for_promotion"
    PAUSED = "paused"  # the caller's wake-up budget ran out


@attrs.frozen
class RunResult:
    view: RolloutView
    stop: Stop
    message: str


@attrs.frozen
class RunnerConfig:
    strategy: Strategy = attrs.field(factory=Strategy)
    actor: str = "deploystate"
    deploy_user: str = "deploystate"
    # Promote automatically as this actor once the promotion gate opens (simulations only).
    auto_promote: str | None = None
    package_wait_limit_s: float = 4 * 3600
    deployment_wait_limit_s: float = 6 * 3600
    # How long a failed step is still watched for a retry made outside (in the deployer's UI).
    failed_watch_s: float = 2 * 3600
    wait_policy: WaitPolicy = attrs.field(factory=WaitPolicy)
    # After a trigger failed in a way that leaves it in doubt (time-out, 5xx, dropped connection),
    # the deployer may still be processing it: wait this long before looking its key up, or a
    # late pipeline could appear after our search and the retry would make a second one.
    trigger_doubt_s: float = 60.0


class Runner:
    def __init__(self, store: Store, backends: Backends, *, config: RunnerConfig | None = None,
                 notifier: Notifier | None = None, machines: Machines | None = None,
                 checkpoint: Callable[[str], None] | None = None) -> None:
        self.store = store
        # Called at the points where a crash matters most (see CHECKPOINTS); crash tests kill the
        # process there.  Does nothing by default.
        self.checkpoint = checkpoint or (lambda name: None)
        self.backends = backends
        self.config = config or RunnerConfig()
        self.notifier = notifier or LogNotifier()
        # None: share the process-wide cache rebuild() uses.  A fresh machine has learnt no
        # transition yet and made a simulated rollout cost twice as much; and the command line
        # rebuilds a rollout before it makes its runner, so a cache of its own compiled twice.
        self.machines = machines
        self.api_calls = 0
        # A backend that knows when its next change happens (a simulation) is looked at exactly
        # then; polling by the wait policy is for backends that cannot tell.
        self._hinted = isinstance(backends.deployer, Hints)
        # Keys whose intent this runner wrote itself and has not tried yet: nobody can have
        # triggered them, so no look-up is needed (a look-up can cost many API calls).
        self._fresh_keys: set[str] = set()

    @property
    def clock(self) -> Any:
        return self.backends.clock

    # -- reading ----------------------------------------------------------------------------
    def view(self, rollout_id: str) -> RolloutView:
        records = self.store.read(rollout_id)
        return rebuild(records) if self.machines is None else rebuild(records, self.machines)

    # -- operator commands --------------------------------------------------------------------
    def create(self, version: str, spec: Spec) -> RolloutView:
        check_version(version)
        strategy = self.config.strategy
        entry = Entry(CREATED, self.clock.now(), self.config.actor, None, {
            "version": version, "spec": spec_to_mapping(spec), "settings": strategy.as_dict(),
            "plan": strategy.describe(), "backend": self.backends.description,
        })
        records = self.store.append(version, 0, [entry])
        self._announce(records)
        return self.view(version)

    def promote(self, rollout_id: str, by: str, reason: str | None = None) -> RolloutView:
        def decide(view: RolloutView) -> list[Entry]:
            gates = [s.name for s in view.spec.steps if s.kind is StepKind.PROMOTION]
            waiting = [g for g in gates if view.phases.get(g) is Phase.RUNNING]
            if not waiting:
                states = ", ".join(f"{g} is {view.phases.get(g, '?')}" for g in gates) or "no promotion gate"
                raise DeploystateError(f"rollout {rollout_id} is not waiting for promotion ({states}); "
                                       "promote once the canary deployment has succeeded")
            data = {"by": by, **({"reason": reason} if reason else {})}
            return [Entry(Action.SUCCEED.value, self.clock.now(), by, g, data) for g in waiting]
        return self._operator(rollout_id, decide)

    def skip_bake(self, rollout_id: str, by: str, reason: str) -> RolloutView:
        def decide(view: RolloutView) -> list[Entry]:
            bakes = [s.name for s in view.spec.steps
                     if s.kind is StepKind.BAKE and view.phases.get(s.name) is Phase.RUNNING]
            if not bakes:
                raise DeploystateError(f"rollout {rollout_id} has no bake running; nothing to skip")
            return [Entry(Action.SKIP.value, self.clock.now(), by, b, {"by": by, "reason": reason})
                    for b in bakes]
        return self._operator(rollout_id, decide)

    def retry(self, rollout_id: str, target: str, by: str) -> RolloutView:
        """Ask for a new attempt of a failed step (named by step or environment)."""
        def decide(view: RolloutView) -> list[Entry]:
            step = _resolve_target(view.spec, target)
            phase = view.phases.get(step.name)
            if phase is not Phase.FAILED:
                raise DeploystateError(f"{step.name} is {phase}, not failed; only a failed step can be "
                                       "retried")
            return [Entry(Action.RETRY.value, self.clock.now(), by, step.name, {"by": by})]
        return self._operator(rollout_id, decide)

    def abort(self, rollout_id: str, by: str, reason: str) -> RolloutView:
        def decide(view: RolloutView) -> list[Entry]:
            return [Entry(Action.ABORT.value, self.clock.now(), by, None, {"by": by, "reason": reason})]
        return self._operator(rollout_id, decide)

    def _operator(self, rollout_id: str, decide: Callable[[RolloutView], list[Entry]]) -> RolloutView:
        for _ in range(OPERATOR_ATTEMPTS):
            view = self.view(rollout_id)
            entries = decide(view)
            _check_allowed(view, entries)
            try:
                records = self.store.append(rollout_id, view.seq, entries)
            except JournalConflict:
                continue  # a runner wrote meanwhile; decide again on the new state
            self._announce(records)
            return self.view(rollout_id)
        raise JournalConflict(f"rollout {rollout_id} kept changing; nothing was written, try again")

    # -- driving ------------------------------------------------------------------------------
    def run(self, rollout_id: str, *, max_wakeups: int | None = None) -> RunResult:
        """Advance ``rollout_id`` until it is done, aborted, or needs a human."""
        with self.store.hold(rollout_id):
            wakeups = 0
            view: RolloutView | None = None
            while True:
                try:
                    view, wake_at = self.advance(rollout_id, view)
                except JournalConflict:
                    # An operator wrote meanwhile (promote, abort...).  Nothing outside was called for
                    # the refused write, so deciding again on the new state is safe.
                    view = None
                    continue
                stop = self._stop(view)
                if stop is not None:
                    return RunResult(view, stop, _stop_message(view, stop))
                if max_wakeups is not None and wakeups >= max_wakeups:
                    return RunResult(view, Stop.PAUSED, "stopped after the allowed number of wake-ups")
                wakeups += 1
                self.checkpoint("before-sleep")
                now = self.clock.now()
                self.clock.sleep(max(0.0, wake_at - now) if wake_at is not None else
                                 self.config.wait_policy.max_interval_s)

    def advance(self, rollout_id: str, view: RolloutView | None = None) -> tuple[RolloutView, float | None]:
        """One pass over every step.  Returns the rollout and when to look again.

        ``view``, the rollout as this runner last returned it, is brought up to date with what
        others appended since (operator commands) instead of being replayed from the start.
        """
        if view is None:
            view = self.view(rollout_id)
        else:
            apply_records(view, self.store.read(rollout_id, after=view.seq))
        wake: list[float] = []
        for _ in range(len(view.spec.steps) * 4 + 4):  # each round records at least one thing
            if not view.active:
                break
            progressed = False
            wake.clear()
            # Read once per round (each read decodes every step's phase): handling one step
            # changes only that step's phase, and a write by someone else ends the pass with
            # JournalConflict, so the phases read here stay true for every step still to come.
            phases = view.phases
            for step in view.spec.steps:
                phase = phases[step.name]
                if phase is Phase.RUNNING:
                    changed, when = self._watch(view, step)
                elif phase is Phase.FAILED:
                    changed, when = self._watch_failed(view, step)
                else:
                    continue
                progressed |= changed
                if when is not None:
                    wake.append(when)
            for name in view.machine.ready(view.rollout):
                self._start(view, view.spec.step(name))
                progressed = True
            if view.machine.can_finish(view.rollout):
                self._append(view, [self._entry(Action.FINISH.value, None, {})])
                progressed = True
            if not progressed:
                break
        hint = self._hint()
        if hint is not None:
            wake.append(hint)
        return view, (min(wake) if wake else None)

    def _hint(self) -> float | None:
        deployer = self.backends.deployer
        if isinstance(deployer, Hints):
            at = deployer.next_change_at()
            if at is not None and at > self.clock.now():
                return at
        return None

    def _stop(self, view: RolloutView) -> Stop | None:
        if view.status == "done":
            return Stop.DONE
        if view.status == "aborted":
            return Stop.ABORTED
        now = self.clock.now()
        phases = view.phases
        waiting_promotion = False
        for step in view.spec.steps:
            phase = phases[step.name]
            run = view.steps[step.name]
            if phase is Phase.RUNNING:
                if step.kind is StepKind.PROMOTION and self.config.auto_promote is None:
                    waiting_promotion = True
                    continue
                return None
            if phase is Phase.FAILED and self._still_watched(step, run, now):
                return None
        if view.machine.ready(view.rollout):
            return None
        if any(p is Phase.FAILED for p in phases.values()):
            return Stop.FAILED
        if waiting_promotion:
            return Stop.PROMOTION
        return Stop.FAILED

    def _still_watched(self, step: Step, run: StepRun, now: float) -> bool:
        watchable = step.kind is StepKind.PACKAGE_WAIT or run.deployment_id is not None
        return watchable and run.failed_at is not None and now - run.failed_at < self.config.failed_watch_s

    # -- one step ---------------------------------------------------------------------------
    def _start(self, view: RolloutView, step: Step) -> None:
        run = view.steps[step.name]
        data: dict[str, Any] = {}
        if step.targets:
            attempt = run.attempt + 1
            strategy = self.config.strategy
            data = {"key": f"{view.rollout_id}/{step.name}/{attempt}", "attempt": attempt,
                    "environments": list(step.targets), "ref": strategy.ref_for(step),
                    "check_mode": strategy.check_mode_for(step), "version": view.version}
        self._append(view, [self._entry(Action.START.value, step.name, data)])
        if "key" in data:
            self._fresh_keys.add(data["key"])

    def _watch(self, view: RolloutView, step: Step) -> tuple[bool, float | None]:
        run = view.steps[step.name]
        now = self.clock.now()
        kind = step.kind
        if kind is StepKind.TAG:
            self._append(view, [self._entry(Action.SUCCEED.value, step.name, {"version": view.version})])
            return True, None
        if kind is StepKind.BAKE:
            assert run.started_at is not None and step.duration_s is not None
            elapsed = now - run.started_at
            if elapsed >= step.duration_s:
                self._append(view, [self._entry(Action.SUCCEED.value, step.name, {"elapsed_s": elapsed})])
                return True, None
            return False, run.started_at + step.duration_s
        if kind is StepKind.PROMOTION:
            if self.config.auto_promote is None:
                return False, None
            data = {"by": self.config.auto_promote, "reason": "automatic promotion (simulation)"}
            self._append(view, [Entry(Action.SUCCEED.value, now, self.config.auto_promote, step.name, data)])
            return True, None
        if kind is StepKind.PACKAGE_WAIT:
            return self._watch_package(view, step, run, now)
        return self._watch_deployment(view, step, run, now)

    def _watch_package(self, view: RolloutView, step: Step, run: StepRun,
                       now: float) -> tuple[bool, float | None]:
        assert step.package is not None and run.started_at is not None
        try:
            build = self._call(lambda: self.backends.packages.status(step.package or "", view.version))
        except BackendError as error:
            return self._backend_trouble(view, step, run, error, now)
        elapsed = now - run.started_at
        if build.outcome is Outcome.SUCCEEDED:
            self._append(view, [self._entry(Action.SUCCEED.value, step.name,
                                            {"status": build.status, "duration_s": elapsed})])
            return True, None
        if build.outcome is Outcome.FAILED:
            self._append(view, [self._entry(Action.FAIL.value, step.name, {
                "status": build.status, "reason": f"{step.package} build {build.status}"})])
            return True, None
        if elapsed > self.config.package_wait_limit_s:
            self._append(view, [self._entry(Action.FAIL.value, step.name, {
                "status": build.status, "timed_out": True,
                "reason": f"timed out: no finished {step.package} build after "
                          f"{int(elapsed // 60)} min ({build.status})"})])
            return True, None
        changed = self._observe_unknown(view, step, run, build.status, build.outcome)
        return changed, self._next_poll(step, run, now, elapsed)

    def _watch_deployment(self, view: RolloutView, step: Step, run: StepRun,
                          now: float) -> tuple[bool, float | None]:
        assert run.key is not None and run.started_at is not None
        elapsed = now - run.started_at
        if run.deployment_id is None:
            return self._trigger(view, step, run, now)
        try:
            deployment = self._call(lambda: self.backends.deployer.status(run.deployment_id or ""))
        except BackendError as error:
            return self._backend_trouble(view, step, run, error, now)
        if deployment.outcome is Outcome.SUCCEEDED:
            self._append(view, [self._entry(Action.SUCCEED.value, step.name, {
                "status": deployment.status, "deployment_id": deployment.id, "duration_s": elapsed})])
            return True, None
        if deployment.outcome is Outcome.FAILED:
            self._append(view, [self._entry(Action.FAIL.value, step.name, {
                "status": deployment.status, "deployment_id": deployment.id,
                "reason": f"deployer pipeline {deployment.id} {deployment.status}"})])
            return True, None
        if elapsed > self.config.deployment_wait_limit_s:
            self._append(view, [self._entry(Action.FAIL.value, step.name, {
                "status": deployment.status, "deployment_id": deployment.id, "timed_out": True,
                "reason": f"timed out: deployer pipeline {deployment.id} still {deployment.status} after "
                          f"{int(elapsed // 60)} min"})])
            return True, None
        changed = self._observe_unknown(view, step, run, deployment.status, deployment.outcome)
        return changed, self._next_poll(step, run, now, elapsed)

    def _next_poll(self, step: Step, run: StepRun, now: float, elapsed: float) -> float | None:
        # Wake at the wait's limit at the latest, so a time-out is announced when it happens.
        limit = (self.config.package_wait_limit_s if step.kind is StepKind.PACKAGE_WAIT
                 else self.config.deployment_wait_limit_s)
        deadline = (run.started_at or now) + limit + 1.0
        if self._hinted:
            return deadline
        policy = self.config.wait_policy
        return min(deadline, now + policy.delay(elapsed, policy.expected_for(step.kind.value)))

    def _trigger(self, view: RolloutView, step: Step, run: StepRun, now: float) -> tuple[bool, float | None]:
        """Trigger the current attempt exactly once: look the key up first, unless it is brand new."""
        assert run.key is not None
        deployer = self.backends.deployer
        request = TriggerRequest(key=run.key, version=view.version, environments=run.environments,
                                 ref=run.ref or "", check_mode=bool(run.check_mode),
                                 user=self.config.deploy_user)
        fresh = request.key in self._fresh_keys
        doubt_ends = (run.doubt_since or 0.0) + self.config.trigger_doubt_s
        if not fresh and run.doubt_since is not None and now < doubt_ends:
            return False, doubt_ends
        self.checkpoint("before-trigger")
        self._fresh_keys.discard(request.key)
        try:
            found = None if fresh else self._call(lambda: deployer.find(request.key))
            deployment = found if found is not None else self._call(lambda: deployer.trigger(request))
        except BackendError as error:
            if not error.transient:
                return self._backend_trouble(view, step, run, error, now)
            self._append(view, [self._entry(OBSERVED, step.name, {
                "status": f"error: {error}", "severity": "warning", "trigger_in_doubt": True,
                "message": f"{error}; the trigger is in doubt: will try again after looking its key "
                           f"up in {int(self.config.trigger_doubt_s)} s"})])
            return False, now + self.config.trigger_doubt_s
        self.checkpoint("after-trigger")
        self._record_trigger(view, step, deployment)
        return True, None

    def _record_trigger(self, view: RolloutView, step: Step, deployment: Deployment) -> None:
        entry = self._entry(TRIGGERED, step.name, {"deployment_id": deployment.id, "key": deployment.key,
                                                   "status": deployment.status,
                                                   **({"web_url": deployment.web_url}
                                                      if deployment.web_url else {})})
        # This fact must be kept even if an operator wrote meanwhile, an abort included (the
        # deployer has the pipeline either way): retry on conflict.
        replaced = False
        for _ in range(OPERATOR_ATTEMPTS):
            try:
                self._append(view, [entry])
            except JournalConflict:
                fresh = self.view(view.rollout_id)
                if fresh.steps[step.name].key != deployment.key:
                    raise  # the attempt was superseded; its key stays findable
                _replace(view, fresh)
                replaced = True
                continue
            if replaced:
                # The rest of this pass was decided on the old state; going on after an abort
                # triggered the next deployment of the aborted rollout.  Make run() decide again.
                raise JournalConflict(f"rollout {view.rollout_id} changed while {step.name} was "
                                      "triggered; the trigger is recorded, deciding again")
            return
        raise JournalConflict(f"rollout {view.rollout_id}: could not record trigger of {step.name}")

    def _watch_failed(self, view: RolloutView, step: Step) -> tuple[bool, float | None]:
        """A failed step may come back: a human retried the downstream pipeline or build."""
        run = view.steps[step.name]
        now = self.clock.now()
        if not self._still_watched(step, run, now):
            return False, None
        try:
            if step.kind is StepKind.PACKAGE_WAIT:
                build = self._call(lambda: self.backends.packages.status(step.package or "", view.version))
                outcome, status = build.outcome, build.status
            else:
                deployment = self._call(lambda: self.backends.deployer.status(run.deployment_id or ""))
                outcome, status = deployment.outcome, deployment.status
        except BackendError:
            return False, now + self.config.wait_policy.max_interval_s
        # A step failed by our time-out is still running out there: that is no sign of a retry,
        # and resuming it would time it out again at once, forever.  Only its success counts.
        if outcome is Outcome.SUCCEEDED or (outcome is Outcome.WAITING and not _timed_out(view, step.name)):
            self._append(view, [self._entry(Action.RESUME.value, step.name, {"status": status})])
            return True, None
        assert run.failed_at is not None
        watch_ends = run.failed_at + self.config.failed_watch_s
        return False, min(now + self.config.wait_policy.max_interval_s, watch_ends)

    def _observe_unknown(self, view: RolloutView, step: Step, run: StepRun, status: str,
                         outcome: Outcome) -> bool:
        if outcome is not Outcome.UNKNOWN or status == run.last_status:
            return False
        self._append(view, [self._entry(OBSERVED, step.name, {
            "status": status, "severity": "warning",
            "message": f"unknown status {status!r}; treated as still running"})])
        return True

    def _backend_trouble(self, view: RolloutView, step: Step, run: StepRun, error: BackendError,
                         now: float) -> tuple[bool, float | None]:
        if error.transient:
            message = f"{error} (will try again)"
            if run.last_status != f"error: {error}":
                self._append(view, [self._entry(OBSERVED, step.name, {
                    "status": f"error: {error}", "severity": "warning", "message": message})])
            return False, now + self.config.wait_policy.min_interval_s
        self._append(view, [self._entry(Action.FAIL.value, step.name,
                                        {"reason": str(error), "status": "error"})])
        return True, None

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, call: Callable[[], Any]) -> Any:
        self.checkpoint("before-call")
        self.api_calls += 1
        return call()

    def _entry(self, action: str, step: str | None, data: dict[str, Any]) -> Entry:
        return Entry(action, self.clock.now(), self.config.actor, step, data)

    def _append(self, view: RolloutView, entries: Sequence[Entry]) -> list[Record]:
        records = self.store.append(view.rollout_id, view.seq, entries)
        self.checkpoint("recorded")
        apply_records(view, records)
        self._announce(records)
        return records

    def _announce(self, records: Sequence[Record]) -> None:
        for record in records:
            notice = notice_for(record)
            try:
                self.notifier.notify(notice)
            except Exception as error:  # a notifier must never stop a rollout; say so loudly instead
                LOG.error("notifier %s failed (%s); the notice was: %s", type(self.notifier).__name__,
                          error, notice.message)


def _replace(view: RolloutView, fresh: RolloutView) -> None:
    for field in attrs.fields(RolloutView):
        setattr(view, field.name, getattr(fresh, field.name))


def _timed_out(view: RolloutView, step: str) -> bool:
    """Whether ``step``'s last failure was the runner giving up waiting (not a failed status)."""
    for record in reversed(view.records):
        if record.step == step and record.action == Action.FAIL.value:
            return bool(record.data.get("timed_out"))
    return False


def _check_allowed(view: RolloutView, entries: Sequence[Entry]) -> None:
    """Refuse an operator command that the machine would refuse, before writing anything."""
    probe = view.machine.new(view.rollout_id + "~probe")
    try:
        probe.state = list(view.rollout.state) if isinstance(view.rollout.state, list) else view.rollout.state
        for entry in entries:
            view.machine.fire(probe, entry.action, entry.step, **dict(entry.data))
    finally:
        view.machine.release(probe)


def _resolve_target(spec: Spec, target: str) -> Step:
    # An environment means its own deployment first (gprd: trigger_gprd, not the legacy
    # all-environments step that also lists gprd); the legacy step only when it is the sole one.
    for matches in ((lambda s: s.name == target), (lambda s: s.targets == (target,)),
                    (lambda s: target in s.targets)):
        found = [step for step in spec.steps if matches(step)]
        if len(found) == 1:
            return found[0]
        if found:
            raise DeploystateError(f"{target!r} is deployed by several steps "
                                   f"({', '.join(s.name for s in found)}); name the step to retry")
    names = ", ".join(s.name for s in spec.steps)
    envs = ", ".join(sorted({e for s in spec.steps for e in s.targets}))
    raise DeploystateError(f"no step or environment {target!r} in spec {spec.name!r}; steps: {names}; "
                           f"environments: {envs}")


def _stop_message(view: RolloutView, stop: Stop) -> str:
    if stop is Stop.DONE:
        return f"rollout {view.rollout_id} is done"
    if stop is Stop.ABORTED:
        return f"rollout {view.rollout_id} was aborted: {view.abort_reason}"
    if stop is Stop.PROMOTION:
        return (f"rollout {view.rollout_id} is waiting for promotion: 'deploystate promote "
                f"{view.rollout_id} --by YOU'")
    failed = [n for n, p in view.phases.items() if p is Phase.FAILED]
    return (f"rollout {view.rollout_id} stopped: {', '.join(failed) or 'nothing can proceed'} failed; "
            f"retry with 'deploystate retry {view.rollout_id} STEP' or 'deploystate abort "
            f"{view.rollout_id} --reason TEXT'")

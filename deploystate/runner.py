"""The runner: carries out decisions and journals what happened.

What to do is decided by :func:`deploystate.decide.decide`, a pure function; the runner only
appends the records a decision names (with the rollout's summary, in one transaction), makes its
calls, and hands the answers to the next decision.  Order is what makes triggering exactly-once:
the intent (``start`` with its idempotency key) is durable before the deployer is called,
and ``triggered`` is appended after it answered.

Only one runner per rollout may run at a time (``Store.hold``).  Operator commands (promote,
retry, skip-bake, abort) write with the expected sequence number and decide again on conflict,
since they call nothing outside; a runner that meets such a write decides again on the new state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import attrs

from deploystate import environments as envs
from deploystate import gates, operator
from deploystate.actions import Action
from deploystate.config import RunnerConfig
from deploystate.decide import (
    NOT_OVERRIDABLE,
    PROMOTION_CHECKS,
    Ask,
    Call,
    Decision,
    Outside,
    Seen,
    Stop,
    decide,
    decide_step,
    failing_checks,
    protected_environments,
)
from deploystate.environments import EnvironmentView
from deploystate.errors import DeploystateError, EventRefused
from deploystate.journal import Entry, JournalConflict, Record
from deploystate.machine import Phase
from deploystate.notices import LOG, notice_for
from deploystate.ports import (
    BackendError,
    Backends,
    Check,
    CheckResult,
    Deployment,
    Hints,
    Notifier,
    Outcome,
    Store,
    Wakeable,
)
from deploystate.rollout import Machines, RolloutView, rebuild, summary_of
from deploystate.spec import Spec, spec_to_mapping

__all__ = ["CHECKPOINTS", "RunResult", "Runner", "RunnerConfig", "Stop"]

OPERATOR_ATTEMPTS = 5
JOURNAL_WATCH_S = 0.5  # how often a sleeping runner asks the journal whether someone wrote
_STILL_RUNNING = frozenset({Outcome.WAITING, Outcome.BLOCKED, Outcome.UNKNOWN})
CHECKPOINTS = (
    "before-record",  # a decision is made, its records are not appended yet
    "recorded",  # after any append to the journal
    "before-trigger",  # the intent is durable, the deployer has not been called
    "after-trigger",  # the deployer accepted, the journal does not know yet
    "before-call",  # about to ask the outside world (status, find, trigger)
    "before-sleep",  # about to wait (e.g. in the middle of the bake)
)


@attrs.frozen
class RunResult:
    view: RolloutView
    stop: Stop
    message: str


class Runner:
    def __init__(self, store: Store, backends: Backends, *, config: RunnerConfig | None = None,
                 notifier: Notifier | None = None, machines: Machines | None = None,
                 checkpoint: Callable[[str], None] | None = None, checks: Sequence[Check] = ()) -> None:
        self.store = store
        self.backends = backends
        self.config = config or RunnerConfig()
        # Never silent: without a notifier of the embedder's, each notice is a line on stderr.  A
        # deploystate.delivery.Delivery given here (alone or in a FanOut) delivers from the journal.
        self.notifier: Notifier = notifier if notifier is not None else _stderr_notifier()
        # None: share the process-wide cache of compiled machines (compiling one costs ms, and a
        # newly compiled machine has learnt no transition yet).
        self.machines = machines
        # Called at the points where a crash matters most (see CHECKPOINTS); crash tests kill the
        # process there.  Does nothing by default.
        self.checkpoint = checkpoint or (lambda name: None)
        self.api_calls = 0
        self.checks = tuple(checks)  # the production checks (none: the gate checks nothing)
        self._checking = ("", "")
        # Environments' journals grow with every rollout of the store: each is read once, then
        # only what was appended since.
        self._environments_read: dict[str, EnvironmentView] = {}
        self._capabilities: dict[tuple[int, type], tuple[object, bool]] = {}

    @property
    def clock(self) -> Any:
        return self.backends.clock

    # -- reading ----------------------------------------------------------------------------
    def view(self, rollout_id: str) -> RolloutView:
        records = self.store.read(rollout_id)
        return rebuild(records) if self.machines is None else rebuild(records, self.machines)

    def _ours(self, view: RolloutView) -> RolloutView:
        """``view``, if these backends may drive it: a rollout belongs to the backend it was made with.

        A simulation driving a real rollout would record it done; a real backend driving a
        simulated one would deploy what nobody asked for.
        """
        recorded = view.created.get("belongs_to")
        if recorded is None and view.deploys != self.backends.deploys:
            # Made before rollouts recorded it: at least a simulation and a real backend differ.
            recorded = str(view.created.get("backend"))
        if recorded is not None and recorded != self.backends.belongs_to:
            raise DeploystateError(
                f"rollout {view.rollout_id} belongs to {recorded!r}, but this command uses "
                f"{self.backends.belongs_to!r}; nothing was written. Run it with the backend and "
                "settings it was created with, or start a new journal for this backend")
        return view

    def _caught_up(self, view: RolloutView) -> RolloutView:
        """``view`` with what others appended since (operator commands), without replaying it all."""
        if self.store.last_seq(view.rollout_id) == view.seq:
            return view
        return view.applied(self.store.read(view.rollout_id, after=view.seq))

    # -- operator commands --------------------------------------------------------------------
    def create(self, version: str, spec: Spec, *, rollout_id: str | None = None,
               rollback: Mapping[str, Any] | None = None) -> RolloutView:
        """Record a new rollout of ``version`` (its id: the version, unless ``rollout_id``).

        ``rollback`` (environment, by, reason, from_version): a deliberate redeploy of an older
        version, made by :meth:`rollback`.
        """
        version = self.backends.check_version(version)
        rollout_id = rollout_id or version
        strategy = self.config.strategy
        strategy.check(spec)  # a plan under which nothing really deploys is refused
        self.backends.prepare(version)  # e.g. a simulated world moves its clock to the tag's time
        entry = Entry(Action.CREATED.value, self.clock.now(), self.config.actor, None, {
            "version": version, "spec": spec_to_mapping(spec), "settings": strategy.as_dict(),
            "plan": strategy.describe(spec, deploys=self.backends.deploys),
            "backend": self.backends.description, "belongs_to": self.backends.belongs_to,
            "deploys": self.backends.deploys, **({"rollback": dict(rollback)} if rollback else {}),
        })
        records = [Record(rollout_id, 1, entry.action, entry.at, entry.actor, None, dict(entry.data))]
        view = rebuild(records) if self.machines is None else rebuild(records, self.machines)
        self._announce(self.store.append(rollout_id, 0, [entry], summary=summary_of(view)))
        return view

    def promote(self, rollout_id: str, by: str, reason: str | None = None, *,
                override: str | None = None, override_for_s: float | None = None) -> RolloutView:
        """Promote, once the production checks pass (all are run now, and recorded whatever they
        say).  Checks that fail refuse the promotion (:class:`~deploystate.gates.ChecksRefused`)
        unless ``override`` (a reason) is given: the failing ones are then overridden, by ``by``,
        for ``override_for_s`` (default ``RunnerConfig.override_s``), and that is recorded."""
        self.config.check_release_manager(by, "promote")
        view = self._ours(self.view(rollout_id))
        operator.promote(view, by, reason, self.clock.now())  # refused here if it is not waiting
        results: tuple[CheckResult, ...] = ()
        if self.checks:
            results = self.check_now(view)
        now = self.clock.now()
        failing = failing_checks(results)
        gate: list[Entry] = []
        if results:
            passed = not failing or self._may_override(failing, override)
            gate.append(Entry(Action.CHECKED.value, now, by, None, {
                "for": PROMOTION_CHECKS, "attempt": _promotion_attempt(view),
                "results": [r.as_dict() for r in results], "passed": passed,
                **({"overridden": sorted(failing)} if failing and passed else {})}))
        if failing and not self._may_override(failing, override):
            self._operate(rollout_id, lambda view, now: gate)
            raise gates.ChecksRefused(self._refusal(rollout_id, failing, override), results)
        if failing:
            assert override is not None
            gate.append(self._override_entry(by, override, failing, now, override_for_s, PROMOTION_CHECKS))
        extra = {"checks": ("overridden" if failing else "passed")} if results else {}
        return self._operate(rollout_id, lambda view, now: [
            *gate, *(attrs.evolve(e, data={**e.data, **extra})
                     for e in operator.promote(view, by, reason, now))])

    def override(self, rollout_id: str, by: str, reason: str, *, for_s: float | None = None) -> RolloutView:
        """Override the production checks failing now for ``rollout_id``'s next protected
        deployment (one held before its trigger, or yet to come), recorded with who, why and until."""
        self.config.check_release_manager(by, "override production checks")
        view = self._ours(self.view(rollout_id))
        if not view.active:
            raise DeploystateError(f"rollout {rollout_id} is {view.status}; there is nothing to override")
        if not self.checks:
            raise DeploystateError("no production checks are configured, so there is nothing to override")
        results = self.check_now(view)
        failing = failing_checks(results)
        now = self.clock.now()
        checked = Entry(Action.CHECKED.value, now, by, None, {
            "for": "override", "results": [r.as_dict() for r in results], "passed": not failing})
        if not failing:
            self._operate(rollout_id, lambda view, now: [checked])
            raise DeploystateError(f"every production check passes for {rollout_id}; nothing was overridden")
        if not self._may_override(failing, reason):
            self._operate(rollout_id, lambda view, now: [checked])
            raise gates.ChecksRefused(self._refusal(rollout_id, failing, reason), results)
        entry = self._override_entry(by, reason, failing, now, for_s, "override")
        return self._operate(rollout_id, lambda view, now: [checked, entry])

    def check_now(self, view: RolloutView) -> tuple[CheckResult, ...]:
        """The production checks for ``view``'s protected environments, run now; nothing is written."""
        return gates.run_for(self.checks, view.rollout_id, view.version, protected_environments(view),
                             self.clock.now(), rollback=view.rollback is not None)

    @staticmethod
    def _may_override(failing: frozenset[str], override: str | None) -> bool:
        return override is not None and not failing & NOT_OVERRIDABLE

    def _override_entry(self, by: str, reason: str, failing: frozenset[str], now: float,
                        for_s: float | None, what: str) -> Entry:
        seconds = self.config.override_s if for_s is None else for_s
        self.config.check_override_s(seconds)
        return Entry(Action.OVERRIDDEN.value, now, by, None, {
            "by": by, "reason": reason, "checks": sorted(failing), "at": now, "until": now + seconds,
            "for": what})

    @staticmethod
    def _refusal(rollout_id: str, failing: frozenset[str], override: str | None) -> str:
        locked = sorted(failing & NOT_OVERRIDABLE)
        if locked and override is not None:
            return (f"{rollout_id} was not promoted: {', '.join(locked)} failed, and a lock is never "
                    "overridden; unlock the environment first ('deploystate unlock ENV --by YOU')")
        return (f"{rollout_id} was not promoted: production checks failed ({', '.join(sorted(failing))}); "
                "the results are recorded. Promote when they pass, or override them: 'deploystate promote "
                f"{rollout_id} --by YOU --override-checks REASON [--override-expires 1h]'")

    # -- environments: locks and rollbacks -------------------------------------------------------
    def environment(self, name: str) -> EnvironmentView:
        """``name``'s journal as it stands: what this runner read before, and what came since."""
        known = self._environments_read.get(name)
        if known is None:
            known = envs.read_environment(self.store, name)
        else:
            known = known.applied(self.store.env_read(name, after=known.seq))
        self._environments_read[name] = known
        return known

    def _env_append(self, view: EnvironmentView, entries: Sequence[Entry]) -> EnvironmentView:
        """Append to an environment's journal, its summary beside (``JournalConflict`` if another
        writer got there first); returns the environment after."""
        records = [Record(view.name, view.seq + i + 1, e.action, e.at, e.actor, e.step, dict(e.data))
                   for i, e in enumerate(entries)]
        after = view.applied(records)
        self.store.env_append(view.name, view.seq, entries, summary=envs.summary_of(after))
        self._environments_read[view.name] = after
        return after

    def lock(self, environment: str, by: str, reason: str) -> EnvironmentView:
        """Lock ``environment``: no new deployment starts there (a running one goes on)."""
        def choose(view: EnvironmentView, now: float) -> list[Entry]:
            if view.lock is not None:
                raise DeploystateError(f"{environment} is already locked by {view.lock.by}: "
                                       f"{view.lock.reason}; nothing was recorded")
            return [envs.locked(by, reason, now)]
        return self._operate_environment(environment, choose)

    def unlock(self, environment: str, by: str) -> EnvironmentView:
        def choose(view: EnvironmentView, now: float) -> list[Entry]:
            if view.lock is None:
                raise DeploystateError(f"{environment} is not locked; nothing was recorded")
            return [envs.unlocked(by, now)]
        return self._operate_environment(environment, choose)

    def _operate_environment(self, environment: str,
                             choose: Callable[[EnvironmentView, float], Sequence[Entry]]) -> EnvironmentView:
        for _ in range(OPERATOR_ATTEMPTS):
            view = self.environment(environment)
            try:
                return self._env_append(view, choose(view, self.clock.now()))
            except JournalConflict:
                continue  # a runner claimed or released meanwhile: decide again
        raise JournalConflict(f"environment {environment} kept changing; nothing was written, try again")

    def rollback(self, environment: str, version: str, by: str, reason: str, spec: Spec) -> RolloutView:
        """Create a rollout that redeploys ``version``, which already succeeded in ``environment``.

        Refused while a deployment to ``environment`` runs, and for a version that never
        succeeded there or runs there now.  ``spec`` is its one-step spec (:func:`rollback_spec`).
        """
        self.config.check_release_manager(by, "roll back")
        version = self.backends.check_version(version)
        env = self.environment(environment)
        there = [s for s in env.successes if s.version == version]
        if not there:
            known = ", ".join(dict.fromkeys(s.version for s in reversed(env.successes))) or "none yet"
            raise DeploystateError(f"{version} never succeeded in {environment}, so it cannot be rolled back "
                                   f"to; versions that did, newest first: {known}")
        if env.holder is not None:
            raise DeploystateError(f"a deployment to {environment} is running ({env.holder.version}, rollout "
                                   f"{env.holder.rollout}); roll back once it has ended (or abort it)")
        if env.current is not None and env.current.version == version:
            raise DeploystateError(f"{environment} already runs {version}; there is nothing to roll back")
        existing = set(self.store.rollouts())
        number = 1
        while f"{version}-rollback-{environment}-{number}" in existing:
            number += 1
        rollout_id = f"{version}-rollback-{environment}-{number}"
        return self.create(version, spec, rollout_id=rollout_id, rollback={
            "environment": environment, "by": by, "reason": reason,
            "from_version": env.current.version if env.current else None})

    def skip_bake(self, rollout_id: str, by: str, reason: str) -> RolloutView:
        self.config.check_release_manager(by, "skip the bake")
        return self._operate(rollout_id, lambda view, now: operator.skip_bake(view, by, reason, now))

    def retry(self, rollout_id: str, target: str, by: str, *, cancel_running: bool = False) -> RolloutView:
        """Ask for a new attempt of a failed step (named by step or environment).

        A step failed by our time-out may still be running in the deployer: a new attempt beside
        it would deploy twice at once, so that is refused unless ``cancel_running``, which has the
        deployer cancel it first (and records that).
        """
        view = self._ours(self.view(rollout_id))
        step = operator.resolve_target(view.spec, target)
        state = view.steps[step.name]
        canceled: list[dict[str, Any]] = []
        ended: list[dict[str, Any]] = []
        if view.active and state.phase is Phase.FAILED and state.deployment_id is not None:
            current = self._outside(lambda: self.backends.deployer.status(state.deployment_id or ""),
                                    f"cannot tell whether {step.name}'s pipeline {state.deployment_id} "
                                    "still runs", gone_ok=True)
            if current is not None and current.outcome in _STILL_RUNNING:
                if not cancel_running:
                    raise DeploystateError(
                        f"{step.name}'s last pipeline {current.id} is still {current.status}; a new attempt "
                        "now would deploy beside it. Wait for it to end, or cancel it first with "
                        f"'deploystate retry {rollout_id} {target} --cancel-running'; nothing was done")
                after = self._outside(lambda: self.backends.deployer.cancel(current.id),
                                      f"could not cancel {step.name}'s pipeline {current.id}; nothing was "
                                      "retried")
                canceled.append({"deployment_id": current.id,
                                 "status": after.status if after is not None else "canceled", "by": by,
                                 "reason": "retry"})
            elif current is not None and (current.outcome is Outcome.SUCCEEDED
                                          or (state.timed_out and current.outcome is Outcome.FAILED)):
                # It ended out there after we gave up on it: kept, so its environment's release says
                # how it really ended (a success there counts for the version order).
                ended.append({"deployment_id": current.id, "status": current.status,
                              "ended": current.outcome.value, "severity": "info",
                              "message": f"pipeline {current.id} ended {current.status} out there before "
                                         "this retry"})

        def facts(now: float) -> list[Entry]:
            return [*(Entry(Action.OBSERVED.value, now, by, step.name, data) for data in ended),
                    *(Entry(Action.CANCELED.value, now, by, step.name, data) for data in canceled)]

        try:
            return self._operate(rollout_id,
                                 lambda view, now: [*facts(now), *operator.retry(view, target, by, now)])
        except DeploystateError:
            if canceled:  # the cancel happened out there: keep it, whatever became of the retry
                self._operate(rollout_id, lambda view, now: facts(now))
            raise

    def abort(self, rollout_id: str, by: str, reason: str, *, leave_running: bool = False) -> RolloutView:
        """Abort the rollout, then have the deployer cancel its deployments that still run.

        Each cancel is recorded; one that fails is announced as an error (cancel it by hand).
        ``leave_running`` leaves them alone.
        """
        aborted = self._operate(rollout_id, lambda view, now: operator.abort(view, by, reason, now,
                                                                              leave_running=leave_running))
        if leave_running:
            self._release_ended(aborted)
            return aborted
        facts: list[tuple[str, str, dict[str, Any]]] = []
        for step in aborted.spec.steps:
            state = aborted.steps[step.name]
            running = state.phase is Phase.RUNNING or (state.phase is Phase.FAILED and state.timed_out)
            if not step.targets or state.deployment_id is None or not running:
                continue
            try:
                done = self.backends.deployer.cancel(state.deployment_id)
            except BackendError as error:
                facts.append((Action.OBSERVED.value, step.name, {
                    "status": f"error: {error}", "severity": "error", "deployment_id": state.deployment_id,
                    "message": f"could not cancel pipeline {state.deployment_id} ({error}); it may still be "
                               "deploying: cancel it in the deployer"}))
                continue
            facts.append((Action.CANCELED.value, step.name,
                          {"deployment_id": done.id, "status": done.status, "by": by, "reason": "abort",
                           "outcome": done.outcome.value}))  # it may have succeeded out there already
        if facts:
            aborted = self._operate(rollout_id, lambda view, now: [Entry(action, now, by, name, data)
                                                                    for action, name, data in facts])
        self._release_ended(aborted)
        return aborted

    def _release_ended(self, view: RolloutView) -> None:
        """After an abort, give back the environments the rollout no longer needs, at once (its
        runner may never run again, and others wait for them)."""
        for _ in range(OPERATOR_ATTEMPTS):
            environments = self._environments(view)
            decision = decide(view, Outside(now=self.clock.now(), environments=environments), self.config)
            try:
                for entries in decision.environments:
                    self._env_append(environments[entries.environment], entries.entries)
                return
            except JournalConflict:
                self._environments_read.clear()  # read them again
                continue

    def _outside(self, call: Callable[[], Deployment], trouble: str, *,
                 gone_ok: bool = False) -> Deployment | None:
        """A call an operator command makes outside; its failure refuses the command.

        ``gone_ok``: a deployment that no longer exists is no refusal (None): it runs no more.
        """
        try:
            return call()
        except BackendError as error:
            if gone_ok and error.gone:
                return None
            advice = "try again" if error.transient else "fix that first"
            raise DeploystateError(f"{trouble} ({error}); {advice}") from None

    def _operate(self, rollout_id: str,
                 choose: Callable[[RolloutView, float], Sequence[Entry]]) -> RolloutView:
        view = self._ours(self.view(rollout_id))
        for _ in range(OPERATOR_ATTEMPTS):
            try:
                return self._append(view, choose(view, self.clock.now()))
            except JournalConflict:
                view = self._caught_up(view)  # a runner wrote meanwhile: decide again
        raise JournalConflict(f"rollout {rollout_id} kept changing; nothing was written, try again")

    # -- driving ------------------------------------------------------------------------------
    def run(self, rollout_id: str, *, max_wakeups: int | None = None) -> RunResult:
        """Advance ``rollout_id`` until it is done, aborted, or needs a human."""
        with self.store.hold(rollout_id):
            wakeups = 0
            view: RolloutView | None = None
            while True:
                view, decision = self.advance(rollout_id, view)
                if decision.stop is not None:
                    return RunResult(view, decision.stop, view.standing.message(rollout_id))
                if max_wakeups is not None and wakeups >= max_wakeups:
                    return RunResult(view, Stop.PAUSED, "stopped after the allowed number of wake-ups")
                wakeups += 1
                self.checkpoint("before-sleep")
                self.sleep_until(decision.wake_at, view)

    def run_step(self, rollout_id: str, step: str, *, max_wakeups: int | None = None) -> RunResult:
        """Advance one named step (starting it if it is ready) until it ends or needs a person.

        ``DONE`` when the step succeeded; ``FAILED`` when it failed or cannot start (its needs
        have not succeeded); ``PROMOTION`` when it waits for a person; ``ABORTED`` if the rollout
        was.  The other steps are left alone.
        """
        with self.store.hold(rollout_id):
            wakeups = 0
            view: RolloutView | None = None
            while True:
                view, decision = self.advance(rollout_id, view, step=step)
                result = step_result(view, step, decision)
                if result is not None:
                    return result
                if max_wakeups is not None and wakeups >= max_wakeups:
                    return RunResult(view, Stop.PAUSED, "stopped after the allowed number of wake-ups")
                wakeups += 1
                self.checkpoint("before-sleep")
                self.sleep_until(decision.wake_at, view)

    def advance(self, rollout_id: str, view: RolloutView | None = None, *,
                step: str | None = None) -> tuple[RolloutView, Decision]:
        """Decide and act until nothing more can be done now.  Returns the rollout and the last
        decision (its ``wake_at`` says when to look again, its ``stop`` whether to stop).

        ``view``, the rollout as this runner last returned it, is brought up to date with what
        others appended since instead of being replayed from the start.
        """
        view = self._ours(self.view(rollout_id)) if view is None else self._caught_up(view)
        seen: dict[str, Seen] = {}
        hinted = self._hints() is not None
        environments = self._environments(view)
        gate = tuple(check.name for check in self.checks)
        self._checking = (view.rollout_id, view.version)  # what a CHECK call of this pass is about
        version_key = self.backends.version_key
        for _ in range(len(view.spec.steps) * 8 + 8):
            outside = Outside(now=self.clock.now(), seen=dict(seen), hinted=hinted, environments=environments,
                              gate=gate, version_key=version_key)
            decision = (decide(view, outside, self.config) if step is None
                        else decide_step(view, step, outside, self.config))
            if decision.entries:
                try:
                    view = self._append(view, decision.entries)
                except JournalConflict:
                    # An operator wrote meanwhile.  Nothing outside was called for the refused
                    # write; the answers seen so far still hold: decide again on the new state.
                    view = self._caught_up(view)
                    continue
                for entry in decision.entries:
                    if entry.step is not None:
                        seen.pop(entry.step, None)
            if decision.environments and not self._append_environments(decision, environments):
                continue  # another rollout's runner wrote there first: decide again on what it wrote
            for call in decision.calls:
                if call.ask is Ask.TRIGGER and self.store.last_seq(rollout_id) != view.seq:
                    break  # someone wrote since this was decided (an abort?): decide again first
                looked_up = call.step in seen and seen[call.step].call.ask is Ask.FIND
                seen[call.step] = self._call(call, looked_up=looked_up)
                if call.request is not None:
                    # One deployment at a time: settle (and record) this one's trigger before
                    # anything else is looked up or triggered.
                    break
            else:
                if decision.idle:
                    return view, Decision(decision.entries, decision.calls,
                                          self._with_hint(decision.wake_at), decision.stop)
                continue
            view = self._caught_up(view)
        return view, Decision(wake_at=self.clock.now())  # a long pass: look again at once

    def _environments(self, view: RolloutView) -> dict[str, EnvironmentView]:
        """The journals of the environments ``view``'s real deployments go to.

        Read again only where a step is about to claim (or waits for) an environment: the others
        are as this runner last read or wrote them.  Stale is safe there: what is decided on them
        (a release) is appended with the sequence number expected, and a conflict reads again."""
        real = [view.spec.step(name) for name in view.strategy.real_steps(view.spec)]
        wanting = {env for step in real for env in step.targets
                   if view.steps[step.name].phase is Phase.RUNNING
                   and view.steps[step.name].deployment_id is None}
        found: dict[str, EnvironmentView] = {}
        for name in sorted({env for step in real for env in step.targets}):
            known = self._environments_read.get(name)
            found[name] = self.environment(name) if known is None or name in wanting else known
        return found

    def _append_environments(self, decision: Decision, environments: dict[str, EnvironmentView]) -> bool:
        """Append a decision's environment records; False (and ``environments`` read again) if
        another writer got there first."""
        for entries in decision.environments:
            name = entries.environment
            known = environments.get(name, EnvironmentView(name))
            if known.seq != entries.expected_seq:
                known = EnvironmentView(name)  # decided on another view: let the store refuse it
            try:
                environments[name] = self._env_append(known, entries.entries)
            except JournalConflict:
                environments[name] = self.environment(name)
                return False
            self.checkpoint("recorded")
        return True

    # Checking a runtime protocol costs several microseconds; the backends rarely change.
    def _hints(self) -> Hints | None:
        deployer = self.backends.deployer
        return cast(Hints, deployer) if self._is(deployer, Hints) else None

    def _is(self, value: object, protocol: type) -> bool:
        known = self._capabilities.get((id(value), protocol))
        if known is None or known[0] is not value:
            known = self._capabilities[(id(value), protocol)] = (value, isinstance(value, protocol))
        return known[1]

    def _with_hint(self, wake_at: float | None) -> float | None:
        deployer = self._hints()
        if deployer is not None:
            at = deployer.next_change_at()
            if at is not None and at > self.clock.now():
                return at if wake_at is None else min(at, wake_at)
        return wake_at

    def sleep_until(self, wake_at: float | None, view: RolloutView) -> None:
        """Sleep until ``wake_at``, or until someone writes to the rollout (promote, skip-bake...).

        A clock that can be woken (a real one) is woken when the journal says the rollout changed,
        which it is asked every ``JOURNAL_WATCH_S`` during the sleep: a cheap read of one number.
        """
        clock = self.backends.clock
        now = clock.now()
        seconds = max(0.0, wake_at - now) if wake_at is not None else self.config.wait_policy.max_interval_s
        if seconds <= JOURNAL_WATCH_S or not self._is(clock, Wakeable):
            clock.sleep(seconds)
            return
        done = threading.Event()

        def watch() -> None:
            while not done.wait(JOURNAL_WATCH_S):
                try:
                    changed = self.store.last_seq(view.rollout_id) != view.seq
                except Exception:  # the sleeper reads the journal itself when it wakes
                    changed = True
                if changed:
                    cast(Wakeable, clock).wake()
                    return

        watcher = threading.Thread(target=watch, name=f"journal-watch {view.rollout_id}", daemon=True)
        watcher.start()
        try:
            clock.sleep(seconds)
        finally:
            done.set()
            watcher.join()

    # -- acting -----------------------------------------------------------------------------
    def _call(self, call: Call, *, looked_up: bool = False) -> Seen:
        """Make one call.  A look-up and the trigger after it are one step of triggering: the
        trigger checkpoints surround both (before the look-up, after the deployment is known)."""
        backends = self.backends
        if call.request is not None and not looked_up:
            self.checkpoint("before-trigger")
        self.checkpoint("before-call")
        self.api_calls += 1
        try:
            if call.ask is Ask.PACKAGE:
                return Seen(call, build=backends.packages.status(call.package or "", call.version or ""))
            if call.ask is Ask.STATUS:
                return Seen(call, deployment=backends.deployer.status(call.deployment_id or ""))
            if call.ask is Ask.CANCEL:
                return Seen(call, deployment=backends.deployer.cancel(call.deployment_id or ""))
            if call.ask is Ask.CHECK:
                view_id, version = self._checking
                return Seen(call, checks=gates.run_for(self.checks, view_id, version, call.environments,
                                                       self.clock.now(), rollback=call.rollback))
            assert call.request is not None
            if call.ask is Ask.FIND:
                found = backends.deployer.find(call.request.key)
                if found is not None:
                    self.checkpoint("after-trigger")
                return Seen(call, deployment=found)
            deployment = backends.deployer.trigger(call.request)
            self.checkpoint("after-trigger")
            return Seen(call, deployment=deployment)
        except BackendError as error:
            return Seen(call, error=str(error), transient=error.transient)

    def _append(self, view: RolloutView, entries: Sequence[Entry]) -> RolloutView:
        try:
            after, _ = view.with_entries(entries)
        except EventRefused as refused:
            raise DeploystateError(str(refused)) from None
        self.checkpoint("before-record")
        stored = self.store.append(view.rollout_id, view.seq, entries, summary=summary_of(after))
        self.checkpoint("recorded")
        self._announce(stored, after.machine.optional, deploys=after.deploys)
        return after

    def _announce(self, records: Sequence[Record], dry_runs: frozenset[str] = frozenset(), *,
                  deploys: bool = True) -> None:
        for record in records:
            notice = notice_for(record, runbook=self.backends.runbook, dry_run=record.step in dry_runs,
                                deploys=deploys)
            try:
                self.notifier.notify(notice)
            except Exception as error:  # a notifier must never stop a rollout; say so loudly instead
                LOG.error("notifier %s failed (%s); the notice was: %s", type(self.notifier).__name__,
                          error, notice.message)


def _stderr_notifier() -> Notifier:
    from deploystate.delivery import StderrNotifier

    return StderrNotifier()


def _promotion_attempt(view: RolloutView) -> int:
    attempts = [view.steps[s.name].attempt for s in view.spec.steps if s.kind.value == "promotion"]
    return max(attempts, default=0)


def step_result(view: RolloutView, step: str, decision: Decision) -> RunResult | None:
    """How a one-step run ends after ``decision``, or None while the step may still move by itself
    (:meth:`Runner.run_step`, and ``deploystate step``, which holds the rollout one pass at a time)."""
    if not decision.idle:
        return None
    state = view.steps[step]
    rid = view.rollout_id
    if view.superseded is not None:  # a newer version went on: this step has nothing left to do
        return RunResult(view, Stop.SUPERSEDED, view.standing.message(rid))
    if state.phase is Phase.SUCCEEDED:
        return RunResult(view, Stop.DONE, f"{step} succeeded; rollout {rid} is {view.standing.situation}")
    if state.phase is Phase.FAILED:
        return RunResult(view, Stop.FAILED, f"{step} failed ({state.reason}); retry it with 'deploystate "
                                            f"retry {rid} {step}', or abort the rollout")
    if not view.active:
        return RunResult(view, Stop.ABORTED if view.status == "aborted" else Stop.DONE,
                         view.standing.message(rid))
    if decision.wake_at is not None:
        return None
    if state.phase is Phase.PENDING:
        unmet = [n for n in view.spec.step(step).needs if view.steps[n].phase is not Phase.SUCCEEDED]
        return RunResult(view, Stop.FAILED,
                         f"{step} cannot start: it needs {', '.join(unmet)} to succeed first")
    return RunResult(view, Stop.PROMOTION, f"{step} waits for a person: {view.standing.message(rid)}")

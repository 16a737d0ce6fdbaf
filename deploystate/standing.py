"""Where a rollout stands as a whole, why it waits, and the commands that move it on.

Computed once per change of a rollout (by :class:`deploystate.rollout.RolloutView`) and read
by everyone: the runner's stop, the report, the notices and the command line.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

import attrs

from deploystate.machine import Phase
from deploystate.spec import Spec, StepKind


class Where(enum.StrEnum):
    DONE = "done"
    ABORTED = "aborted"
    SUPERSEDED = "superseded"  # a newer version reached an environment first: nothing left to do
    FAILED = "failed"  # a step failed: a person retries it or aborts
    WAITING = "waiting_for_promotion"  # only a person's promotion can move it on
    RUNNING = "running"
    READY = "ready"  # nothing running, steps may start


@attrs.frozen
class Standing:
    where: Where
    failed: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    promotion: tuple[str, ...] = ()  # promotion gates waiting for a person
    baking: tuple[str, ...] = ()
    abort_reason: str | None = None
    dry_runs_failed: tuple[str, ...] = ()  # failed steps the rollout may finish without
    superseded: str | None = None  # by what, and how
    checks_refused: bool = False  # the production checks refused the waiting promotion

    @property
    def _dry_run_note(self) -> str:
        return f"; dry run failed at {', '.join(self.dry_runs_failed)}" if self.dry_runs_failed else ""

    @property
    def situation(self) -> str:
        """A few words, e.g. ``waiting for promotion`` or ``failed: trigger_cny``."""
        if self.where is Where.DONE:
            return "done" + self._dry_run_note
        if self.where is Where.ABORTED:
            return f"aborted: {self.abort_reason}"
        if self.where is Where.SUPERSEDED:
            return f"superseded: {self.superseded}"
        if self.where is Where.FAILED:
            return f"failed: {', '.join(self.failed)}" + self._dry_run_note
        if self.where is Where.WAITING:
            return "waiting for promotion" + self._dry_run_note
        if self.where is Where.RUNNING:
            return f"running: {', '.join(self.running)}" + self._dry_run_note
        return "ready to run" + self._dry_run_note

    @property
    def ended(self) -> bool:
        return self.where in (Where.DONE, Where.ABORTED, Where.SUPERSEDED)

    def message(self, rollout_id: str) -> str:
        """One sentence on where ``rollout_id`` stands and what to type next."""
        if self.where is Where.DONE:
            return f"rollout {rollout_id} is done{self._dry_run_note}"
        if self.where is Where.ABORTED:
            return f"rollout {rollout_id} was aborted: {self.abort_reason}"
        if self.where is Where.SUPERSEDED:
            return (f"rollout {rollout_id} is superseded: {self.superseded}. Nothing to do: the newer "
                    "version goes on (roll back on purpose with 'deploystate rollback ENV VERSION')")
        if self.where is Where.WAITING:
            return (f"rollout {rollout_id} is waiting for promotion: "
                    f"'deploystate promote {rollout_id} --by YOU'")
        if self.where is Where.FAILED or not self.running:
            failed = ", ".join(self.failed) or "nothing can proceed"
            return (f"rollout {rollout_id} stopped: {failed} failed; "
                    f"retry with 'deploystate retry {rollout_id} STEP' or 'deploystate abort "
                    f"{rollout_id} --reason TEXT'")
        return f"rollout {rollout_id} is {self.situation}"

    def next_commands(self, rollout_id: str, options: str = "") -> list[str]:
        """The commands that move the rollout on, as a release engineer would type them.

        ``options`` (e.g. ``" --store PATH"``) is added to each command.
        """
        if self.ended:
            return []
        hints: list[tuple[str, str]] = [(f"deploystate retry {rollout_id} {name}", "then 'run' again")
                                        for name in self.failed]
        if self.promotion and self.checks_refused:
            hints.append((f"deploystate checks {rollout_id}", "production checks failed: see which"))
            hints.append((f"deploystate promote {rollout_id} --by YOU --override-checks REASON",
                          "once they pass, without --override-checks"))
        elif self.promotion:
            hints.append((f"deploystate promote {rollout_id} --by YOU", "--reason TEXT is optional"))
        if self.baking:
            hints.append((f"deploystate skip-bake {rollout_id} --by YOU --reason TEXT", "incidents only"))
        if not self.failed:
            hints.append((f"deploystate run {rollout_id}", ""))
        hints.append((f"deploystate abort {rollout_id} --reason TEXT", ""))
        return [command + options + (f"    # {comment}" if comment else "") for command, comment in hints]


class _Phased(Protocol):
    @property
    def phase(self) -> Phase: ...


def standing_of(status: str, spec: Spec, steps: Mapping[str, _Phased], abort_reason: str | None,
                optional: frozenset[str] = frozenset(), *, superseded: str | None = None,
                checks_refused: bool = False) -> Standing:
    """Where a rollout stands, from its status (active, done, aborted) and its steps' phases.

    A failed ``optional`` step (a dry run) is no failure of the rollout: it is told apart.
    """
    failed: list[str] = []
    dry_runs: list[str] = []
    running: list[str] = []
    promotion: list[str] = []
    baking: list[str] = []
    for step in spec.steps:  # one pass over the steps, in the spec's order
        name = step.name
        phase = steps[name].phase
        if phase is Phase.FAILED:
            (dry_runs if name in optional else failed).append(name)
        elif phase is Phase.RUNNING:
            running.append(name)
            if step.kind is StepKind.PROMOTION:
                promotion.append(name)
            elif step.kind is StepKind.BAKE:
                baking.append(name)
    if status == "done":
        return Standing(Where.DONE, dry_runs_failed=tuple(dry_runs))
    if status == "aborted" and superseded is not None:
        return Standing(Where.SUPERSEDED, abort_reason=abort_reason, superseded=superseded,
                        dry_runs_failed=tuple(dry_runs))
    if status == "aborted":
        return Standing(Where.ABORTED, abort_reason=abort_reason, dry_runs_failed=tuple(dry_runs))
    if failed:
        where = Where.FAILED
    elif promotion and len(promotion) == len(running):
        where = Where.WAITING
    elif running:
        where = Where.RUNNING
    else:
        where = Where.READY
    return Standing(where, tuple(failed), tuple(running), tuple(promotion), tuple(baking),
                    dry_runs_failed=tuple(dry_runs), checks_refused=checks_refused and bool(promotion))

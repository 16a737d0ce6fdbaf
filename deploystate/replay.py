"""Rebuild a rollout from its journal records by replaying them through the machine.

Record actions are either machine events (``start``, ``succeed``, ``fail``, ``resume``,
``retry``, ``skip``, ``finish``, ``abort``) or facts around them:

- ``created``: the version, the spec the rollout runs with, and the settings chosen (which
  deployment path is real, refs, check mode).  Always record 1.
- ``triggered``: the deployer accepted the trigger of a step's current attempt (deployment id).
- ``observed``: something seen outside that is worth keeping (an unknown status, a time-out).

A deployment's ``start`` carries its idempotency key, ref and check mode: it is the intent,
written before the deployer is called.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from deploystate.actions import EVENTS
from deploystate.errors import EventRefused
from deploystate.journal import JournalCorrupt, Record
from deploystate.machine import ACTIVE, Action, Phase, Rollout, RolloutMachine
from deploystate.spec import Spec, StepKind

CREATED = Action.CREATED.value
TRIGGERED = Action.TRIGGERED.value
OBSERVED = Action.OBSERVED.value
MACHINE_ACTIONS = frozenset(a.value for a in EVENTS)


@attrs.define
class StepRun:
    """What the journal says about one step's current attempt."""

    name: str
    kind: StepKind
    attempt: int = 0
    key: str | None = None
    ref: str | None = None
    check_mode: bool | None = None
    environments: tuple[str, ...] = ()
    deployment_id: str | None = None
    web_url: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    failed_at: float | None = None
    last_status: str | None = None
    triggers: int = 0  # accepted triggers over all attempts
    doubt_since: float | None = None  # a trigger of this attempt failed in doubt at this time
    reason: str | None = None


@attrs.define
class RolloutView:
    """A rollout as rebuilt from its records (read-only by convention)."""

    rollout_id: str
    version: str
    spec: Spec
    machine: RolloutMachine
    rollout: Rollout
    settings: Mapping[str, Any]
    created_at: float
    records: list[Record]
    steps: dict[str, StepRun]
    ended_at: float | None = None
    abort_reason: str | None = None

    @property
    def seq(self) -> int:
        return self.records[-1].seq

    @property
    def status(self) -> str:
        return self.machine.status(self.rollout)

    @property
    def phases(self) -> dict[str, Phase]:
        phases = self.machine.phases(self.rollout)
        if phases:
            return phases
        # Ended: the last phase each step reached, from the records.
        return {name: self._last_phase(name) for name in self.steps}

    def _last_phase(self, step: str) -> Phase:
        phase = Phase.PENDING
        for record in self.records:
            if record.step == step and record.action in _PHASE_AFTER:
                phase = _PHASE_AFTER[record.action]
        return phase

    @property
    def active(self) -> bool:
        return self.status == ACTIVE


_PHASE_AFTER = {
    Action.START.value: Phase.RUNNING, Action.SUCCEED.value: Phase.SUCCEEDED,
    Action.SKIP.value: Phase.SUCCEEDED, Action.FAIL.value: Phase.FAILED,
    Action.RESUME.value: Phase.RUNNING, Action.RETRY.value: Phase.PENDING,
}


class Machines:
    """One compiled machine per spec, shared by every rollout that runs with it."""

    def __init__(self) -> None:
        self._by_text: dict[str, tuple[Spec, RolloutMachine]] = {}

    def for_mapping(self, mapping: Mapping[str, Any]) -> tuple[Spec, RolloutMachine]:
        text = json.dumps(mapping, sort_keys=True)
        found = self._by_text.get(text)
        if found is None:
            spec = Spec.from_mapping(mapping, source="journal")
            found = self._by_text[text] = (spec, RolloutMachine(spec))
        return found


_MACHINES = Machines()


def rebuild(records: Sequence[Record], machines: Machines = _MACHINES) -> RolloutView:
    """Replay ``records`` (one rollout's, in order) into a :class:`RolloutView`."""
    if not records or records[0].action != CREATED:
        rid = records[0].rollout_id if records else "?"
        raise JournalCorrupt(f"rollout {rid}: the journal does not start with 'created'; it cannot "
                             "be replayed. Restore the journal from a backup")
    first = records[0]
    data = first.data
    try:
        spec, machine = machines.for_mapping(data["spec"])
        version = str(data["version"])
    except (KeyError, TypeError) as error:
        raise JournalCorrupt(f"rollout {first.rollout_id}: 'created' record is incomplete "
                             f"({error})") from None
    rollout = machine.new(first.rollout_id)
    try:
        view = RolloutView(
            rollout_id=first.rollout_id, version=version, spec=spec, machine=machine, rollout=rollout,
            settings=dict(data.get("settings", {})), created_at=first.at, records=list(records),
            steps={s.name: StepRun(s.name, s.kind) for s in spec.steps},
        )
        for record in records[1:]:
            _apply(view, record)
    finally:
        machine.release(rollout)
    return view


def apply_records(view: RolloutView, records: Sequence[Record]) -> None:
    """Bring ``view`` up to date with ``records`` just appended after it."""
    for record in records:
        if record.seq != view.seq + 1:
            raise JournalCorrupt(f"rollout {view.rollout_id}: record {record.seq} does not follow "
                                 f"record {view.seq}")
        _apply(view, record)
        view.records.append(record)


def _apply(view: RolloutView, record: Record) -> None:
    action = record.action
    data = record.data
    if action in MACHINE_ACTIONS:
        try:
            view.machine.fire(view.rollout, action, record.step, **data)
        except EventRefused as refused:
            raise JournalCorrupt(f"rollout {view.rollout_id}: record {record.seq} ({action} "
                                 f"{record.step or ''}) cannot be replayed: {refused}") from None
        except TypeError as error:
            raise JournalCorrupt(f"rollout {view.rollout_id}: record {record.seq} has bad data "
                                 f"({error})") from None
        _track(view, record)
    elif action == TRIGGERED:
        run = _run(view, record)
        run.deployment_id = str(data.get("deployment_id"))
        run.web_url = data.get("web_url")
        run.triggers += 1
        run.doubt_since = None
    elif action == OBSERVED:
        if record.step is not None:
            run = _run(view, record)
            run.last_status = data.get("status")
            if data.get("trigger_in_doubt"):
                run.doubt_since = record.at
    else:
        raise JournalCorrupt(f"rollout {view.rollout_id}: record {record.seq} has unknown action "
                             f"{action!r}; it was written by a newer deploystate?")


def _run(view: RolloutView, record: Record) -> StepRun:
    if record.step not in view.steps:
        raise JournalCorrupt(f"rollout {view.rollout_id}: record {record.seq} names unknown step "
                             f"{record.step!r}")
    return view.steps[record.step]


def _track(view: RolloutView, record: Record) -> None:
    action = record.action
    if record.step is None:
        if action in (Action.FINISH.value, Action.ABORT.value):
            view.ended_at = record.at
            if action == Action.ABORT.value:
                view.abort_reason = str(record.data.get("reason"))
        return
    run = view.steps[record.step]
    data = record.data
    if action == Action.START.value:
        run.attempt += 1
        run.key = data.get("key")
        run.ref = data.get("ref")
        run.check_mode = data.get("check_mode")
        run.environments = tuple(data.get("environments", ()))
        run.deployment_id = None
        run.web_url = None
        run.started_at = record.at
        run.ended_at = run.failed_at = None
        run.last_status = None
        run.reason = None
        run.doubt_since = None
    elif action in (Action.SUCCEED.value, Action.SKIP.value):
        run.ended_at = record.at
        run.reason = data.get("reason")
    elif action == Action.FAIL.value:
        run.failed_at = record.at
        run.reason = data.get("reason")
    elif action == Action.RESUME.value:
        run.failed_at = None
        run.reason = None

"""What the command line shows about rollouts: timelines, summaries, status, history, and JSON.

Everything here reads a :class:`~deploystate.replay.RolloutView` (and its records) and returns
text or plain data; nothing here writes, calls a backend, or prints.  Times in the text are UTC;
within one rollout they are offsets from its creation, like the live progress lines.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from deploystate.journal import Record
from deploystate.machine import Action, Phase
from deploystate.replay import RolloutView
from deploystate.runner import Stop
from deploystate.spec import StepKind

NONE = "-"


# -- formatting of times ---------------------------------------------------------------------

def utc(at: float, *, seconds: bool = False) -> str:
    moment = dt.datetime.fromtimestamp(at, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + " UTC"


def iso(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


def offset(seconds: float) -> str:
    """``+HH:MM:SS``, as in the live progress lines."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    return f"+{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    whole = max(0, round(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> str:
    rows = [list(header), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines) + "\n"


# -- facts about steps -----------------------------------------------------------------------

@attrs.frozen
class StepLine:
    """One step of a rollout as a release engineer wants to see it."""

    name: str
    kind: StepKind
    phase: Phase
    started_at: float | None  # the first attempt's start
    ended_at: float | None  # when it succeeded, was skipped, or (last) failed
    attempts: int
    triggers: int  # accepted deployer triggers over all attempts, as the journal says
    environments: tuple[str, ...]
    detail: str

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


def step_lines(view: RolloutView) -> list[StepLine]:
    first_start: dict[str, float] = {}
    closing: dict[str, Record] = {}  # the last succeed/skip/fail of each step
    for record in view.records:
        if record.step is None:
            continue
        if record.action == Action.START.value:
            first_start.setdefault(record.step, record.at)
        elif record.action in (Action.SUCCEED.value, Action.SKIP.value, Action.FAIL.value):
            closing[record.step] = record
    phases = view.phases
    lines = []
    for step in view.spec.steps:
        run = view.steps[step.name]
        phase = phases.get(step.name, Phase.PENDING)
        ended = run.ended_at if phase is Phase.SUCCEEDED else run.failed_at if phase is Phase.FAILED else None
        lines.append(StepLine(
            name=step.name, kind=step.kind, phase=phase, started_at=first_start.get(step.name),
            ended_at=ended, attempts=run.attempt, triggers=run.triggers,
            environments=run.environments or step.targets,
            detail=_detail(view, step.name, phase, closing.get(step.name)),
        ))
    return lines


def _detail(view: RolloutView, name: str, phase: Phase, closing: Record | None) -> str:
    step = view.spec.step(name)
    run = view.steps[name]
    parts: list[str] = []
    if step.targets:
        where = ",".join(run.environments or step.targets)
        if run.ref is not None:
            where += f" @{run.ref}, {'check mode' if run.check_mode else 'REAL'}"
        if run.deployment_id is not None:
            where += f", pipeline {run.deployment_id}"
        parts.append(where)
    elif step.kind is StepKind.PACKAGE_WAIT:
        parts.append(f"{step.package} build")
    elif step.kind is StepKind.BAKE:
        parts.append(f"{duration(step.duration_s)} soak")
    if closing is not None and closing.action == Action.SKIP.value:
        parts.append(f"skipped by {closing.data.get('by')}: {closing.data.get('reason')}")
    elif step.kind is StepKind.PROMOTION:
        if closing is not None and closing.action == Action.SUCCEED.value:
            why = closing.data.get("reason")
            parts.append(f"promoted by {closing.data.get('by')}" + (f": {why}" if why else ""))
        elif phase is Phase.RUNNING:
            parts.append("waiting for a release manager")
    if phase is Phase.FAILED and run.reason:
        parts.append(f"FAILED: {run.reason}")
    elif phase is Phase.RUNNING and run.last_status:
        parts.append(f"last seen: {run.last_status}")
    return "; ".join(parts)


def situation(view: RolloutView) -> str:
    """A few words on where the rollout stands, e.g. ``waiting for promotion``."""
    if view.status == "done":
        return "done"
    if view.status == "aborted":
        return f"aborted: {view.abort_reason}"
    phases = view.phases
    failed = [name for name, phase in phases.items() if phase is Phase.FAILED]
    running = [name for name, phase in phases.items() if phase is Phase.RUNNING]
    promotion = [name for name in running if view.spec.step(name).kind is StepKind.PROMOTION]
    if failed:
        return f"failed: {', '.join(failed)}"
    if promotion and len(promotion) == len(running):
        return "waiting for promotion"
    if running:
        return f"running: {', '.join(running)}"
    return "ready to run"


def next_steps(view: RolloutView, options: str = "") -> list[str]:
    """The commands that move this rollout on, as a release engineer would type them.

    ``options`` (e.g. ``" --store PATH"``) is added to each command.
    """
    rid = view.rollout_id
    if not view.active:
        return []
    phases = view.phases
    kinds = {name: view.spec.step(name).kind for name in phases}
    hints: list[tuple[str, str]] = []
    failed = [name for name, phase in phases.items() if phase is Phase.FAILED]
    for name in failed:
        hints.append((f"deploystate retry {rid} {name}", "then 'run' again"))
    if any(kinds[n] is StepKind.PROMOTION and p is Phase.RUNNING for n, p in phases.items()):
        hints.append((f"deploystate promote {rid} --by YOU", "--reason TEXT is optional"))
    if any(kinds[n] is StepKind.BAKE and p is Phase.RUNNING for n, p in phases.items()):
        hints.append((f"deploystate skip-bake {rid} --by YOU --reason TEXT", "incidents only"))
    if not failed:
        hints.append((f"deploystate run {rid}", ""))
    hints.append((f"deploystate abort {rid} --reason TEXT", ""))
    return [command + options + (f"    # {comment}" if comment else "") for command, comment in hints]


# -- per environment: how often triggered ----------------------------------------------------

def step_of_key(view: RolloutView) -> dict[str, str]:
    """Every idempotency key this rollout used, and its step (from the intents in the journal)."""
    return {str(r.data["key"]): r.step for r in view.records
            if r.action == Action.START.value and r.step is not None and r.data.get("key")}


def environment_triggers(view: RolloutView,
                         deployer_by_step: Mapping[str, int] | None) -> dict[str, dict[str, Any]]:
    """Per environment: triggers per step that deploys it, by the journal and by the deployer."""
    result: dict[str, dict[str, Any]] = {}
    # An environment's own deployment first, then the multi-environment (legacy) ones.
    for step in sorted(view.spec.steps, key=lambda s: len(s.targets) > 1):
        for environment in step.targets:
            entry = result.setdefault(environment, {"journal": 0, "deployer": None, "steps": {}})
            journal = view.steps[step.name].triggers
            deployer = None if deployer_by_step is None else deployer_by_step.get(step.name, 0)
            entry["journal"] += journal
            if deployer is not None:
                entry["deployer"] = (entry["deployer"] or 0) + deployer
            entry["steps"][step.name] = {"journal": journal, "deployer": deployer}
    return result


# -- JSON ------------------------------------------------------------------------------------

def summary_data(view: RolloutView, *, stop: Stop | None = None, message: str | None = None,
                 deployer_by_step: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One rollout as plain JSON data (``simulate --json``, ``status VERSION --json``)."""
    created = view.records[0].data
    last = view.records[-1].at
    return {
        "rollout": view.rollout_id,
        "version": view.version,
        "spec": view.spec.name,
        "status": view.status,
        "situation": situation(view),
        "stop": stop.value if stop is not None else None,
        "message": message,
        "plan": created.get("plan"),
        "settings": dict(view.settings),
        "backend": created.get("backend"),
        "created_at": iso(view.created_at),
        "ended_at": iso(view.ended_at),
        "last_change_at": iso(last),
        "duration_s": (view.ended_at if view.ended_at is not None else last) - view.created_at,
        "records": len(view.records),
        "steps": [{
            "name": line.name, "kind": line.kind.value, "phase": line.phase.value,
            "attempts": line.attempts, "triggers": line.triggers,
            "deployer_triggers": None if deployer_by_step is None else deployer_by_step.get(line.name, 0),
            "environments": list(line.environments),
            "ref": view.steps[line.name].ref, "check_mode": view.steps[line.name].check_mode,
            "deployment_id": view.steps[line.name].deployment_id,
            "web_url": view.steps[line.name].web_url,
            "started_at": iso(line.started_at), "ended_at": iso(line.ended_at),
            "duration_s": line.duration_s, "reason": view.steps[line.name].reason, "detail": line.detail,
        } for line in step_lines(view)],
        "environments": environment_triggers(view, deployer_by_step),
        "next": next_steps(view),
    }


def list_data(views: Sequence[RolloutView]) -> list[dict[str, Any]]:
    return [{"rollout": v.rollout_id, "status": v.status, "situation": situation(v), "spec": v.spec.name,
             "created_at": iso(v.created_at), "last_change_at": iso(v.records[-1].at),
             "records": len(v.records)} for v in views]


def history_data(records: Sequence[Record]) -> list[dict[str, Any]]:
    return [{**record.as_dict(), "at_utc": iso(record.at)} for record in records]


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


# -- text ------------------------------------------------------------------------------------

def timeline_text(view: RolloutView) -> str:
    origin = view.created_at
    rows = []
    for line in step_lines(view):
        rows.append([
            line.name,
            offset(line.started_at - origin) if line.started_at is not None else NONE,
            offset(line.ended_at - origin) if line.ended_at is not None else NONE,
            duration(line.duration_s),
            str(line.attempts) if line.attempts else NONE,
            str(line.triggers) if line.environments else NONE,
            line.phase.value,
            line.detail,
        ])
    head = f"Timeline of {view.rollout_id} (+00:00:00 = {utc(origin)})\n"
    return head + table(["step", "start", "end", "took", "tries", "triggers", "result", "detail"], rows)


def summary_text(view: RolloutView, deployer_by_step: Mapping[str, int] | None) -> str:
    """The end of a run: where it stopped and why, the plan, and who was triggered how often."""
    created = view.records[0].data
    end = view.ended_at if view.ended_at is not None else view.records[-1].at
    headline = {"done": "done", "aborted": f"ABORTED ({view.abort_reason})"}.get(view.status)
    if headline is None:
        headline = "FAILED" if "failed" in situation(view) else situation(view)
    lines = [f"Result: {headline} after {duration(end - view.created_at)} ({span(view.created_at, end)})"]
    for line in step_lines(view):
        if line.phase is Phase.FAILED:
            lines.append(f"  failed:   {line.name} ({','.join(line.environments) or line.kind.value}): "
                         f"{view.steps[line.name].reason}")
    lines += [f"  plan:     {created.get('plan')}", f"  backend:  {created.get('backend')}", ""]
    return "\n".join(lines) + "\n" + triggers_text(environment_triggers(view, deployer_by_step))


def span(start: float, end: float) -> str:
    first, last = utc(start), utc(end)
    if first[:10] == last[:10]:
        return f"{first.removesuffix(' UTC')} to {last[11:]}"
    return f"{first.removesuffix(' UTC')} to {last}"


def triggers_text(per_environment: Mapping[str, Mapping[str, Any]]) -> str:
    """Per environment: deployer triggers by the journal, by the deployer's own record, and by step."""
    rows = []
    for environment, entry in per_environment.items():
        deployer = entry["deployer"]
        steps = entry["steps"]
        agrees = all(c["deployer"] is None or c["deployer"] == c["journal"] for c in steps.values())
        rows.append([environment, str(entry["journal"]),
                     NONE if deployer is None else str(deployer) + ("" if agrees else "  MISMATCH"),
                     ", ".join(f"{step} {counts['journal']}" for step, counts in steps.items())])
    return table(["triggered", "journal", "deployer's record", "by step"], rows)


def status_text(view: RolloutView) -> str:
    created = view.records[0]
    last = view.records[-1]
    lines = [
        f"rollout {view.rollout_id}: {situation(view)}",
        f"  spec {view.spec.name}; {created.data.get('plan')}",
        f"  created {utc(created.at)} by {created.actor}; last change {utc(last.at)} "
        f"({last.action}{' ' + last.step if last.step else ''}, record {last.seq})",
        "",
    ]
    text = "\n".join(lines) + "\n"
    origin = view.created_at
    rows = [[line.name, line.phase.value, str(line.attempts) if line.attempts else NONE,
             offset(line.started_at - origin) if line.started_at is not None else NONE,
             duration(line.duration_s), line.detail] for line in step_lines(view)]
    text += table(["step", "phase", "tries", "start", "took", "detail"], rows)
    hints = next_steps(view)
    if hints:
        text += "\nnext:\n" + "".join(f"  {hint}\n" for hint in hints)
    return text


def list_text(views: Sequence[RolloutView]) -> str:
    if not views:
        return "no rollouts in this journal; start one with 'deploystate start VERSION'\n"
    rows = [[v.rollout_id, situation(v), utc(v.created_at), utc(v.records[-1].at)] for v in views]
    return table(["rollout", "state", "created", "last change"], rows, indent="")


def history_text(records: Sequence[Record]) -> str:
    rows = [[str(r.seq), utc(r.at, seconds=True), r.actor, r.action, r.step or NONE, _data_text(r)]
            for r in records]
    return table(["#", "time", "actor", "action", "step", "data"], rows, indent="")


def _data_text(record: Record) -> str:
    parts = []
    for key, value in record.data.items():
        if key == "spec" and isinstance(value, Mapping):
            value = value.get("name")
        if isinstance(value, str) and value and " " not in value:
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={json.dumps(value, separators=(',', ':'))}")
    return " ".join(parts)

"""What the command line shows about rollouts: timelines, summaries, status, history, and JSON.

Everything here reads a :class:`~deploystate.rollout.RolloutView` (or a listing's summaries, or
a rollout's records for its history) and returns text or plain data; nothing here writes, calls
a backend, or prints.  Where a rollout stands is the view's own standing, never worked out here.
Times in the text are UTC;
within one rollout they are offsets from its creation, like the live progress lines.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from deploystate.actions import Action
from deploystate.decide import Stop
from deploystate.environments import EnvironmentView
from deploystate.journal import Record
from deploystate.machine import Phase
from deploystate.rollout import RolloutView
from deploystate.spec import StepKind
from deploystate.strategy import mode_of
from deploystate.terminal import printable

NONE = "-"


# -- formatting of times ---------------------------------------------------------------------
# A journal may hold any time (one written before versions were checked, a clock gone wrong):
# one that no date can show is printed as the raw number of seconds, never a crash.

def _moment(at: float) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(at, dt.UTC)
    except (OverflowError, ValueError, OSError):
        return None


def utc(at: float, *, seconds: bool = False) -> str:
    moment = _moment(at)
    if moment is None:
        return f"{at!r} s since 1970"
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + " UTC"


def iso(at: float | None) -> str | None:
    if at is None:
        return None
    moment = _moment(at)
    if moment is None:
        return repr(at)
    return moment.isoformat().replace("+00:00", "Z")


def offset(seconds: float) -> str:
    """``+HH:MM:SS``, as in the live progress lines."""
    if not math.isfinite(seconds):
        return f"+{seconds!r}"
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    return f"+{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if not math.isfinite(seconds):
        return f"{seconds!r}s"
    whole = max(0, round(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> str:
    """Aligned columns; every cell is shown :func:`printable`, so no cell breaks its row."""
    rows = [list(header), *[[printable(cell) for cell in row] for row in rows]]
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
    lines = []
    for step in view.spec.steps:
        state = view.steps[step.name]
        phase = state.phase
        ended = (state.ended_at if phase is Phase.SUCCEEDED
                 else state.failed_at if phase is Phase.FAILED else None)
        lines.append(StepLine(
            name=step.name, kind=step.kind, phase=phase, started_at=state.first_started_at,
            ended_at=ended, attempts=state.attempt, triggers=state.triggers,
            environments=state.environments or step.targets, detail=_detail(view, step.name),
        ))
    return lines


def _detail(view: RolloutView, name: str) -> str:
    step = view.spec.step(name)
    state = view.steps[name]
    phase = state.phase
    parts: list[str] = []
    if step.targets:
        where = ",".join(state.environments or step.targets)
        if state.ref is not None:
            where += f" @{state.ref}, {mode_of(bool(state.check_mode), deploys=view.deploys)}"
        if state.deployment_id is not None:
            where += f", pipeline {state.deployment_id}"
        parts.append(where)
    elif step.kind is StepKind.PACKAGE_WAIT:
        parts.append(f"{step.package} build")
    elif step.kind is StepKind.BAKE:
        parts.append(f"{duration(step.duration_s)} soak")
    if state.closing is Action.SKIP:
        parts.append(f"skipped by {state.closed_by}: {state.reason}")
    elif step.kind is StepKind.PROMOTION:
        if state.closing is Action.SUCCEED:
            why = state.reason
            parts.append(f"promoted by {state.closed_by}" + (f": {why}" if why else ""))
        elif phase is Phase.RUNNING:
            parts.append("waiting for a release manager")
    if phase is Phase.FAILED and state.reason:
        parts.append(f"FAILED: {state.reason}")
    elif phase is Phase.RUNNING and state.last_status:
        parts.append(f"last seen: {state.last_status}")
    return "; ".join(parts)


def situation(view: RolloutView) -> str:
    """A few words on where the rollout stands, e.g. ``waiting for promotion``."""
    return view.standing.situation


def next_steps(view: RolloutView, options: str = "") -> list[str]:
    """The commands that move this rollout on, as a release engineer would type them."""
    return view.standing.next_commands(view.rollout_id, options)


# -- per environment: how often triggered ----------------------------------------------------

def step_of_key(view: RolloutView) -> dict[str, str]:
    """Every idempotency key this rollout used, and its step (from the intents in the journal)."""
    return view.step_of_key()


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
    last = view.last_at
    return {
        "rollout": view.rollout_id,
        "version": view.version,
        "spec": view.spec.name,
        "status": view.status,
        "situation": situation(view),
        "stop": stop.value if stop is not None else None,
        "message": message,
        "plan": view.plan,
        "real_steps": list(view.strategy.deploying(view.spec)),
        "dry_run_steps": list(view.strategy.dry_runs(view.spec)),
        "dry_runs_failed": list(view.standing.dry_runs_failed),
        "settings": dict(view.settings),
        "backend": view.backend,
        "created_at": iso(view.created_at),
        "ended_at": iso(view.ended_at),
        "last_change_at": iso(last),
        "duration_s": (view.ended_at if view.ended_at is not None else last) - view.created_at,
        "records": view.seq,
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


def list_data(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every rollout of a listing (rows as :func:`deploystate.rollout.summary_of` makes them)."""
    return [{"rollout": r["rollout"], "status": r["status"], "situation": r["situation"], "spec": r["spec"],
             "created_at": iso(r["created_at"]), "last_change_at": iso(r["last_at"]),
             "records": r["records"]} for r in rows]


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
    head = printable(f"Timeline of {view.rollout_id} (+00:00:00 = {utc(origin)})") + "\n"
    return head + table(["step", "start", "end", "took", "tries", "triggers", "result", "detail"], rows)


def summary_text(view: RolloutView, deployer_by_step: Mapping[str, int] | None) -> str:
    """The end of a run: where it stopped and why, the plan, and who was triggered how often."""
    end = view.ended_at if view.ended_at is not None else view.last_at
    headline = {"done": situation(view), "aborted": f"ABORTED ({view.abort_reason})"}.get(view.status)
    if view.superseded is not None:
        headline = f"SUPERSEDED ({view.superseded.get('why')})"
    if headline is None:
        headline = "FAILED" if view.standing.failed else situation(view)
    lines = [f"Result: {headline} after {duration(end - view.created_at)} ({span(view.created_at, end)})"]
    for line in step_lines(view):
        if line.phase is Phase.FAILED:
            label = ("dry run:" if line.name in view.machine.optional
                     else "superseded:" if view.steps[line.name].last_status == "superseded" else "failed: ")
            lines.append(f"  {label}  {line.name} ({','.join(line.environments) or line.kind.value}): "
                         f"{view.steps[line.name].reason}")
    lines += [f"  plan:     {view.plan}", f"  backend:  {view.backend}", ""]
    triggers = triggers_text(environment_triggers(view, deployer_by_step))
    return "\n".join(map(printable, lines)) + "\n" + triggers


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
    last = view.last
    lines = [
        f"rollout {view.rollout_id}: {situation(view)}",
        f"  spec {view.spec.name}; {view.plan}",
        f"  created {utc(view.created_at)} by {view.created_by}; last change {utc(last.at)} "
        f"({last.action}{' ' + last.step if last.step else ''}, record {last.seq})",
        "",
    ]
    text = "\n".join(map(printable, lines)) + "\n"
    origin = view.created_at
    rows = [[line.name, line.phase.value, str(line.attempts) if line.attempts else NONE,
             offset(line.started_at - origin) if line.started_at is not None else NONE,
             duration(line.duration_s), line.detail] for line in step_lines(view)]
    text += table(["step", "phase", "tries", "start", "took", "detail"], rows)
    text += gate_text(view)
    hints = next_steps(view)
    if hints:
        text += "\nnext:\n" + "".join(f"  {printable(hint)}\n" for hint in hints)
    return text


def gate_text(view: RolloutView) -> str:
    """The last production checks (per promotion or step) and the overrides, for ``status``."""
    from deploystate.gates import table as checks_table

    text = ""
    for what, data in view.checks.items():
        verdict = "passed" if data.get("passed") else "FAILED"
        if data.get("passed") and data.get("overridden"):
            verdict = "passed with overrides"
        text += f"\nlast production checks for {printable(what)}: {verdict}\n"
        text += checks_table(list(data.get("results", ()))) + "\n"
    for o in view.overrides:
        live = "live" if o.until > view.last_at else "expired"
        text += printable(f"override by {o.by} of {', '.join(sorted(o.checks))}: {o.reason} "
                          f"(until {utc(o.until)}, {live})") + "\n"
    return text


def environments_text(environments: Sequence[EnvironmentView]) -> str:
    """Each environment's lock, what deploys there now, what waits, and what it runs."""
    lines = []
    for env in environments:
        parts = []
        if env.lock is not None:
            parts.append(f"LOCKED by {env.lock.by} since {utc(env.lock.at)}: {env.lock.reason}")
        if env.holder is not None:
            parts.append(f"deploying {env.holder.version} (rollout {env.holder.rollout})")
        if env.queued:
            parts.append("waiting: " + ", ".join(f"{q.version} ({q.rollout})" for q in env.queued))
        if env.current is not None:
            how = ", a rollback" if env.current.rollback else ""
            parts.append(f"runs {env.current.version} since {utc(env.current.at)}{how}")
        lines.append(f"  {env.name}: " + ("; ".join(parts) or "nothing deployed yet"))
    return ("environments:\n" + "\n".join(printable(line) for line in lines) + "\n") if lines else ""


def list_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of every rollout of a listing (rows as :func:`deploystate.rollout.summary_of` makes them)."""
    if not rows:
        return "no rollouts in this journal; start one with 'deploystate start VERSION'\n"
    cells = [[r["rollout"], r["situation"], utc(r["created_at"]), utc(r["last_at"])] for r in rows]
    return table(["rollout", "state", "created", "last change"], cells, indent="")


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

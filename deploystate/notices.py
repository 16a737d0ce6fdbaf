"""Turning journal records into notices, and the default notifier (structured log lines).

Every record becomes exactly one notice, so nothing that happened goes unannounced; failures
and time-outs are errors.  A notifier that breaks is itself reported and never stops a rollout.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from deploystate.actions import Action
from deploystate.journal import Record
from deploystate.ports import Notice, Notifier
from deploystate.strategy import mode_of
from deploystate.terminal import printable

LOG = logging.getLogger("deploystate")


def _minutes(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def notice_for(record: Record, runbook: str | None = None, *, dry_run: bool = False,
               deploys: bool = True) -> Notice:
    """The notice a record deserves: severity and a one-line message for humans.

    ``runbook`` (a link the backend gives) is named in failure notices; ``dry_run``: the record's
    step is one the rollout may finish without (its failure is a warning); ``deploys`` False:
    the backend only simulates, so the real path is said to be simulated, never REAL.
    """
    data = record.data
    step = record.step or ""
    action = record.action
    severity = "info"
    if action == Action.CREATED:
        message = (f"rollout {record.rollout_id} created with spec {data.get('spec', {}).get('name')}: "
                   f"{data.get('plan', '')}")
    elif action == Action.START:
        if data.get("key"):
            where = ",".join(data.get("environments", ()))
            mode = mode_of(bool(data.get("check_mode")), deploys=deploys)
            message = f"{step}: starting attempt {data.get('attempt')} ({where} at {data.get('ref')}, {mode})"
        else:
            message = f"{step}: started"
    elif action == Action.TRIGGERED:
        message = f"{step}: deployer pipeline {data.get('deployment_id')} triggered"
        if data.get("web_url"):
            message += f" {data['web_url']}"
    elif action == Action.SUCCEED:
        message = f"{step}: succeeded"
        if "duration_s" in data:
            message += f" in {_minutes(data['duration_s'])}"
        if data.get("by"):
            why = f": {data['reason']}" if data.get("reason") else ""
            message += f" (promoted by {data['by']}{why})"
    elif action == Action.SKIP:
        severity = "warning"
        message = f"{step}: skipped by {data.get('by')}: {data.get('reason')}"
    elif action == Action.FAIL and data.get("superseded"):
        severity = "warning"
        message = f"{step}: not deployed, {data.get('reason')}"
    elif action == Action.FAIL and dry_run:
        severity = "warning"
        where = f" (pipeline {data['deployment_id']})" if data.get("deployment_id") else ""
        message = (f"{step}: dry run FAILED{where} ({data.get('reason') or data.get('status')}); only the "
                   f"dry runs after it are held, the real path goes on. Retry it with 'deploystate retry "
                   f"{record.rollout_id} {step}' if you want its result")
    elif action == Action.FAIL:
        severity = "error"
        message = (f"{step}: FAILED ({data.get('reason') or data.get('status')}); release managers: "
                   f"retry with 'deploystate retry {record.rollout_id} {step}' or abort."
                   + (f" Runbook: {runbook}" if runbook else ""))
    elif action == Action.RESUME:
        message = f"{step}: running again (the downstream pipeline was retried)"
    elif action == Action.RETRY:
        message = f"{step}: retry requested by {record.actor}"
    elif action == Action.CANCELED:
        severity = "warning"
        message = (f"{step}: deployer pipeline {data.get('deployment_id')} canceled by {data.get('by')} "
                   f"({data.get('status')})")
    elif action == Action.OBSERVED:
        severity = str(data.get("severity", "warning"))
        message = f"{step}: {data.get('message') or data.get('status')}"
    elif action == Action.CHECKED:
        message, severity = _checked(record)
    elif action == Action.OVERRIDDEN:
        severity = "warning"
        message = (f"production checks OVERRIDDEN by {data.get('by')} for {record.rollout_id}: "
                   f"{', '.join(map(str, data.get('checks', ())))} ({data.get('reason')}); until "
                   f"{_utc(data.get('until'))}")
    elif action == Action.SUPERSEDED:
        severity = "warning"
        message = f"rollout {record.rollout_id} superseded in {data.get('environment')}: {data.get('why')}"
    elif action == Action.ABORT and data.get("superseded"):
        severity = "warning"
        message = f"rollout {record.rollout_id} ends superseded: {data.get('reason')}"
    elif action == Action.FINISH:
        message = f"rollout {record.rollout_id} done"
    elif action == Action.ABORT:
        severity = "error"
        message = f"rollout {record.rollout_id} aborted by {record.actor}: {data.get('reason')}"
    else:
        message = f"{action} {step}".strip()
    return Notice(record.rollout_id, record.at, severity, message, action, record.step, dict(data),
                  record.seq)


def _utc(at: object) -> str:
    if not isinstance(at, int | float):
        return "?"
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def _checked(record: Record) -> tuple[str, str]:
    """A line for a ``checked`` record: what passed, what failed and why, what it means."""
    data = record.data
    results = [r for r in data.get("results", ()) if isinstance(r, dict)]
    failing = [r for r in results if r.get("verdict") in ("failed", "error")]
    what = data.get("for") or record.step or "?"
    where = "the promotion" if what == "promotion" else f"{what}" if what != "override" else "an override"
    if not failing:
        return f"production checks for {where}: all {len(results)} passed", "info"
    shown = "; ".join(f"{r.get('name')} {r.get('verdict')}: {r.get('detail')}" for r in failing)
    if data.get("passed"):
        return f"production checks for {where}: {shown} (overridden)", "warning"
    held = "refused" if what == "promotion" else "held" if what != "override" else "failing"
    return f"production checks for {where} {held}: {shown}", "error" if held == "refused" else "warning"


class LogNotifier:
    """The default: one structured (JSON) log line per notice on ``logging``'s ``deploystate`` logger."""

    def notify(self, notice: Notice) -> None:
        level = {"info": logging.INFO, "warning": logging.WARNING}.get(notice.severity, logging.ERROR)
        LOG.log(level, json.dumps({"rollout": notice.rollout_id, "at": notice.at, "severity": notice.severity,
                                   "action": notice.action, "step": notice.step,
                                   "message": notice.message}, sort_keys=True))


class StreamNotifier:
    """Human progress lines, e.g. for ``deploystate simulate``: time since start, then the message."""

    def __init__(self, stream: TextIO | None = None, origin: float | None = None) -> None:
        self.stream = stream or sys.stdout
        self.origin = origin

    def notify(self, notice: Notice) -> None:
        if self.origin is None:
            self.origin = notice.at
        offset = int(notice.at - self.origin)
        hours, rest = divmod(offset, 3600)
        mark = {"warning": "!", "error": "X"}.get(notice.severity, " ")
        print(f"[+{hours:02d}:{rest // 60:02d}:{rest % 60:02d}] {mark} {printable(notice.message)}",
              file=self.stream, flush=True)


class FanOut:
    """Several notifiers as one.  A notifier that raises is reported on the log, never fatal."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = list(notifiers)

    def notify(self, notice: Notice) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(notice)
            except Exception as error:  # a broken notifier must not stop a rollout
                LOG.error("notifier %s failed on %r: %s", type(notifier).__name__, notice.message, error)

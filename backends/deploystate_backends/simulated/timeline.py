"""What status a simulated pipeline shows at each moment: a pure function of the record.

A deployment's timeline follows from when it was triggered, its segments (one per environment,
from the scenario) and the retries and cancels recorded against it.  Nothing is stored about
its progress, so a world reloaded in another process shows exactly the same statuses.

Timelines are lists of :class:`Piece`: the status from ``at`` until the next piece.  Two
neighbouring pieces never have the same status, so the next piece is the next *change*.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import attrs

from deploystate.ports import Outcome
from deploystate_backends.simulated.scenario import Behaviour, Scenario, Segment

# GitLab's pipeline statuses, as the coordinator's original wait job sorted them.
WAITING = frozenset({"created", "waiting_for_resource", "preparing", "pending", "running", "scheduled"})
FAILED = frozenset({"failed", "canceled", "skipped", "manual"})
TERMINAL = frozenset({"success", "failed", "canceled"})
QUEUED = frozenset({"created", "pending"})
MISSING = "missing"  # not a GitLab status: no pipeline exists (yet)
UNKNOWN_STATUS = "waiting_for_callback"  # newer GitLab's, unknown to the original wait job

# A triggered pipeline is created, then pending until a runner picks it up.
CREATED_S = 5.0
QUEUE_S = 30.0

RETRY = "retry"
CANCEL = "cancel"


def outcome_of(status: str) -> Outcome:
    if status == "success":
        return Outcome.SUCCEEDED
    if status in WAITING:
        return Outcome.WAITING
    if status in FAILED:
        return Outcome.FAILED
    if status == MISSING:
        return Outcome.MISSING
    return Outcome.UNKNOWN


@attrs.frozen
class Piece:
    at: float
    status: str


@attrs.frozen(order=True)
class Act:
    """A retry or cancel asked of a deployment; ``seq`` orders calls made at the same instant."""

    at: float
    seq: int
    kind: str = attrs.field(order=False)


class _Pieces:
    def __init__(self) -> None:
        self.items: list[Piece] = []

    def add(self, at: float, status: str) -> None:
        items = self.items
        if items and items[-1].at >= at:
            items.pop()  # a status that lasted no time at all was never visible
        if not items or items[-1].status != status:
            items.append(Piece(at, status))


def _first_after(acts: Sequence[Act], after: tuple[float, int], before: float = math.inf) -> Act | None:
    """The first act strictly later than ``after`` (time, seq) and earlier than ``before``."""
    index = bisect.bisect_right([(a.at, a.seq) for a in acts], after)
    if index < len(acts) and acts[index].at < before:
        return acts[index]
    return None


def deployment_timeline(triggered_at: float, segments: Sequence[Segment], acts: Sequence[Act],
                        scenario: Scenario) -> list[Piece]:
    """Every status of a deployment as far as it is decided by now (the last piece lasts forever).

    Each segment runs in attempts: the first for its duration, a retry for ``retry_run_s``.  A
    failed attempt waits for a retry (someone's call, or the scripted human of a ``retry_fixes``
    environment); a cancel stops a running attempt, and a retry after it starts a new one.
    """
    cancels = sorted(a for a in acts if a.kind == CANCEL)
    retries = sorted(a for a in acts if a.kind == RETRY)
    pieces = _Pieces()
    # (time, seq) of the start of the current attempt: the scripted world acts before any call
    # made at the same instant, hence seq -1.
    start: tuple[float, int] = (triggered_at, -1)
    for index, segment in enumerate(segments):
        attempt = 1
        while True:
            t = start[0]
            run, phases = _phases(segment, attempt, first=index == 0, scenario=scenario)
            end = math.inf if segment.behaviour is Behaviour.HANG else t + run
            cancel = _first_after(cancels, start, end)
            stop = cancel.at if cancel is not None else end
            for offset, status in phases:
                if t + offset < stop:
                    pieces.add(t + offset, status)
            if cancel is not None:
                pieces.add(cancel.at, "canceled")
                resume, scripted = (cancel.at, cancel.seq), math.inf
            elif end == math.inf:
                return pieces.items
            elif segment.passes(attempt):
                start = (end, -1)
                break
            else:
                pieces.add(end, "failed")
                fixes = segment.behaviour is Behaviour.RETRY_FIXES and attempt == 1
                resume, scripted = (end, -1), end + scenario.retry_after_s if fixes else math.inf
            retry = _first_after(retries, resume)
            if retry is None and scripted == math.inf:
                return pieces.items
            human_first = retry is None or scripted < retry.at
            start = (scripted, -1) if human_first or retry is None else (retry.at, retry.seq)
            attempt += 1
    pieces.add(start[0], "success")
    return pieces.items


def _phases(segment: Segment, attempt: int, *, first: bool,
            scenario: Scenario) -> tuple[float, list[tuple[float, str]]]:
    """How long an attempt runs, and the statuses it shows from each offset into it."""
    if attempt > 1:
        return scenario.retry_run_s, [(0.0, "running")]
    run = segment.duration_s
    phases = [(0.0, "running")]
    running_from = 0.0
    if first:
        running_from = min(QUEUE_S, run)
        phases = [(0.0, "created"), (min(CREATED_S, run), "pending"), (running_from, "running")]
    if segment.unknown:
        phases += [(running_from, UNKNOWN_STATUS), (min(running_from + scenario.unknown_s, run), "running")]
    return run, phases


def build_timeline(appears_at: float, duration_s: float, fails: bool) -> list[Piece]:
    pieces = _Pieces()
    pieces.add(-math.inf, MISSING)
    pieces.add(appears_at, "running")
    pieces.add(appears_at + duration_s, "failed" if fails else "success")
    return pieces.items


def status_at(pieces: Sequence[Piece], at: float) -> Piece:
    """The piece in force at ``at`` (the first one if ``at`` is before everything)."""
    index = bisect.bisect_right([p.at for p in pieces], at) - 1
    return pieces[max(index, 0)]


def next_change(pieces: Sequence[Piece], at: float) -> float | None:
    index = bisect.bisect_right([p.at for p in pieces], at)
    return pieces[index].at if index < len(pieces) else None

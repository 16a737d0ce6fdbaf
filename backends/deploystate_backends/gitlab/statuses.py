"""GitLab pipeline statuses, and what each means to a rollout.

Newer GitLab versions add statuses (``canceling``, ``waiting_for_callback``...).  A status we do
not know is UNKNOWN: the runner treats it as still running and announces it, never crashes.
"""

from __future__ import annotations

from deploystate.ports import Outcome

WAITING = frozenset({"created", "waiting_for_resource", "preparing", "pending", "running", "scheduled"})
FAILED = frozenset({"failed", "canceled", "skipped", "manual"})
SUCCEEDED = frozenset({"success"})


def outcome(status: str) -> Outcome:
    if status in SUCCEEDED:
        return Outcome.SUCCEEDED
    if status in WAITING:
        return Outcome.WAITING
    if status in FAILED:
        return Outcome.FAILED
    return Outcome.UNKNOWN

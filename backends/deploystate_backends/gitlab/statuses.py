"""GitLab pipeline statuses, and what each means to a rollout.

Grouped as GitLab's own ``app/models/concerns/ci/has_status.rb`` groups them:

- active (``created`` ... ``running``, ``canceling`` on its way to ``canceled``,
  ``waiting_for_callback``): WAITING;
- blocked on a person or a time (``manual``; ``scheduled``, a delayed job): BLOCKED, announced
  once and waited for within the deployment's limit, never failed for it;
- ``success``: SUCCEEDED; ``failed``, ``canceled``, ``skipped``: FAILED.

Newer GitLab versions add statuses.  One we do not know is UNKNOWN: the runner treats it as still
running and announces it, never crashes.
"""

from __future__ import annotations

from deploystate.ports import Outcome

WAITING = frozenset({"created", "waiting_for_resource", "preparing", "pending", "running", "canceling",
                     "waiting_for_callback"})
BLOCKED = frozenset({"manual", "scheduled"})
FAILED = frozenset({"failed", "canceled", "skipped"})
SUCCEEDED = frozenset({"success"})


def outcome(status: str) -> Outcome:
    if status in SUCCEEDED:
        return Outcome.SUCCEEDED
    if status in WAITING:
        return Outcome.WAITING
    if status in BLOCKED:
        return Outcome.BLOCKED
    if status in FAILED:
        return Outcome.FAILED
    return Outcome.UNKNOWN

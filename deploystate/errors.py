"""Every error deploystate raises on purpose derives from :class:`DeploystateError`.

The command line turns these into a message and a non-zero exit; anything else is a bug.
Messages say what is wrong and what to do, and never carry secrets.
"""

from __future__ import annotations

from collections.abc import Sequence


class DeploystateError(Exception):
    """Base class: a problem the user can act on."""


class SpecError(DeploystateError, ValueError):
    """A pipeline spec is malformed; the message names the step and the fix."""


class EventRefused(DeploystateError):
    """An event is not allowed in the rollout's current state; nothing was changed."""

    def __init__(self, event: str, state: str, allowed: Sequence[str], why: str = "") -> None:
        self.event = event
        self.state = state
        self.allowed = tuple(allowed)
        self.why = why
        allowed_text = ", ".join(self.allowed) if self.allowed else "none (the rollout has ended)"
        reason = f": {why}" if why else ""
        super().__init__(
            f"event {event!r} refused in state {state}{reason}. Allowed now: {allowed_text}"
        )

"""When to look again at something that is still running.

The original coordinator polled every 60 s.  Most of that is wasted: a deployment that usually
takes an hour will not be done after five minutes.  We look rarely while a step is far from its
expected end and often once it is near or past it, with a cap either way.

Polling alone cannot be both fast and cheap when durations vary: to notice an end within
seconds it must look every few seconds near the end.  A backend that receives webhooks wakes the
runner at once when something changes, and its polls are only a safety net for lost hooks: such
a backend keeps its own policy for that net, the same shape with longer intervals.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

DEFAULT_EXPECTED_S: Mapping[str, float] = {
    "package_wait": 40 * 60,
    "deployment": 60 * 60,
    "legacy_deployment": 3 * 60 * 60,
}


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class WaitPolicy:
    min_interval_s: float = attrs.field(default=15.0, validator=_positive)
    max_interval_s: float = attrs.field(default=600.0, validator=_positive)
    # Fraction of the expected remaining time to sleep in one go while far from the end.
    approach: float = attrs.field(default=0.5, validator=_positive)
    # The original's behaviour (a fixed interval), kept for comparison in benchmarks.
    fixed_interval_s: float | None = None
    expected_s: Mapping[str, float] = attrs.field(factory=lambda: dict(DEFAULT_EXPECTED_S))

    def expected_for(self, kind: str) -> float:
        return self.expected_s.get(kind, 60 * 60)

    def delay(self, elapsed_s: float, expected_s: float) -> float:
        """Seconds to wait before the next look, ``elapsed_s`` into a step expected to take ``expected_s``."""
        if self.fixed_interval_s is not None:
            return self.fixed_interval_s
        remaining = expected_s - elapsed_s
        if remaining > self.min_interval_s:
            wait = remaining * self.approach
        else:
            # Past (or at) the expected end: look often at first, then back off as it drags on.
            overdue = max(0.0, -remaining)
            wait = self.min_interval_s + overdue * 0.1
        return max(self.min_interval_s, min(self.max_interval_s, wait))

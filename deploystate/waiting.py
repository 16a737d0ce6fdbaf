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

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

DEFAULT_EXPECTED_S: Mapping[str, float] = {
    "package_wait": 40 * 60,
    "deployment": 60 * 60,
    "legacy_deployment": 3 * 60 * 60,
}


# What makes sense, in seconds.  Below a second a poll loop hammers the API (0 s once made 6,297
# API requests in ten seconds); beyond these a typo waits for ever; nan and inf crash a sleep.
MIN_INTERVAL_RANGE = (1.0, 3600.0)
MAX_INTERVAL_RANGE = (1.0, 86400.0)
FIXED_INTERVAL_RANGE = (1.0, 3600.0)
EXPECTED_RANGE = (1.0, 30 * 86400.0)


def within(value: object, low: float, high: float) -> bool:
    """``value`` is a real number (not a bool) from ``low`` to ``high``; nan and inf never are."""
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def number_text(value: float) -> str:
    """``3600`` for 3600.0, ``0.1`` for 0.1: a bound as a person would write it."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _seconds(low: float, high: float) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and attribute.name == "fixed_interval_s":
            return
        if not within(value, low, high):
            raise ValueError(f"{attribute.name} must be between {number_text(low)} and {number_text(high)} "
                             f"seconds, got {value!r}")
    return check


def _fraction(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if not within(value, 0.0, 1.0) or value == 0:
        raise ValueError(f"{attribute.name} must be more than 0 and at most 1, got {value!r}")


def _expected(instance: object, attribute: attrs.Attribute[Mapping[str, float]], value: object) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{attribute.name} must map step kinds to seconds, got {value!r}")
    low, high = EXPECTED_RANGE
    for kind, seconds in value.items():
        if not within(seconds, low, high):
            raise ValueError(f"{attribute.name}[{kind!r}] must be between {number_text(low)} and "
                             f"{number_text(high)} seconds, "
                             f"got {seconds!r}")


@attrs.frozen
class WaitPolicy:
    min_interval_s: float = attrs.field(default=15.0, validator=_seconds(*MIN_INTERVAL_RANGE))
    max_interval_s: float = attrs.field(default=600.0, validator=_seconds(*MAX_INTERVAL_RANGE))
    # Fraction of the expected remaining time to sleep in one go while far from the end.
    approach: float = attrs.field(default=0.5, validator=_fraction)
    # The original's behaviour (a fixed interval), kept for comparison in benchmarks.
    fixed_interval_s: float | None = attrs.field(default=None, validator=_seconds(*FIXED_INTERVAL_RANGE))
    expected_s: Mapping[str, float] = attrs.field(factory=lambda: dict(DEFAULT_EXPECTED_S),
                                                  validator=_expected)

    def __attrs_post_init__(self) -> None:
        if self.min_interval_s > self.max_interval_s:
            raise ValueError(f"min_interval_s ({self.min_interval_s!r}) is more than max_interval_s "
                             f"({self.max_interval_s!r}); the shortest wait cannot be longer than the "
                             "longest")

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

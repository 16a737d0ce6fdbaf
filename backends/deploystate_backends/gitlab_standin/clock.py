"""Clocks the stand-in's world runs on: real, accelerated, or virtual (advanced by a test).

Every clock answers ``now()`` in seconds since the epoch and ``sleep(seconds)``, so one
instance can be shared with the code under test (it matches ``deploystate.ports.Clock``).
Pipelines move by themselves because the world compares their schedule with ``now()``
whenever anyone looks; nothing runs in the background.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

# 2021-03-01 12:20 UTC: the auto-deploy tag 13.10.202103011220 in domain.md was cut then, so
# virtual timestamps read like a real rollout's.
DEFAULT_EPOCH = 1614601200.0


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class RealClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class AcceleratedClock:
    """Time that runs ``factor`` times faster than the wall clock, from ``start``.

    A rehearsal at factor 60 turns an hour-long deployment into a minute.
    """

    def __init__(self, factor: float, start: float | None = None) -> None:
        if factor <= 0:
            raise ValueError(f"clock factor must be positive, got {factor}; use 1 for real time")
        self.factor = factor
        self._start = time.time() if start is None else start
        self._origin = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._origin) * self.factor

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.factor)


class VirtualClock:
    """Time that moves only when told: ``advance(seconds)`` or ``sleep(seconds)``.

    Thread-safe, because HTTP handler threads read it while a test advances it.
    """

    def __init__(self, start: float = DEFAULT_EPOCH) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a virtual clock cannot go back ({seconds} s); advance by 0 or more")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

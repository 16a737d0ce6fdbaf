"""A virtual clock: ``sleep`` moves time forward instantly, so a 30-minute bake costs nothing.

The clock keeps its time in a :class:`TimeStore`.  In memory that is a float; a simulated world
keeps it in its file, so a process killed with SIGKILL and started again reads the time it had
reached, never an earlier one.  Every change only moves time forward (the store takes the
maximum), so no sequence of calls, processes or restarts can make the clock go back.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol

# 2021-03-01 12:20 UTC: the auto-deploy tag 13.10.202103011220 of domain.md was cut then, so
# virtual timestamps read like a real rollout's and its package builds start right away.
DEFAULT_START = 1614601200.0


class TimeStore(Protocol):
    """Where a virtual clock keeps its time; every write must only move it forward."""

    def read_time(self) -> float:
        ...

    def advance_time(self, seconds: float) -> float:
        """Add ``seconds`` (>= 0) and return the new time."""
        ...

    def advance_time_to(self, at: float) -> float:
        """Move to ``at`` unless the time is already later; return the time."""
        ...


class MemoryTime:
    """A time store that lives as long as the process."""

    def __init__(self, start: float) -> None:
        self._now = _finite("start", start)
        self._lock = threading.Lock()

    def read_time(self) -> float:
        with self._lock:
            return self._now

    def advance_time(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def advance_time_to(self, at: float) -> float:
        with self._lock:
            self._now = max(self._now, at)
            return self._now


class VirtualClock:
    """Implements ``deploystate.ports.Clock`` on virtual time."""

    def __init__(self, start: float = DEFAULT_START, *, store: TimeStore | None = None) -> None:
        self.store: TimeStore = store if store is not None else MemoryTime(start)

    def now(self) -> float:
        return self.store.read_time()

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` and return the new time."""
        seconds = _finite("sleep length", seconds)
        if seconds < 0:
            raise ValueError(f"a virtual clock cannot go back ({seconds} s); sleep 0 seconds or more")
        return self.store.advance_time(seconds)

    def advance_to(self, at: float) -> float:
        """Move time forward to ``at`` (a no-op if it is already later) and return the time."""
        return self.store.advance_time_to(_finite("time", at))


def _finite(what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    return float(value)

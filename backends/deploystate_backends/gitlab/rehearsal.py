"""The clock of a rehearsal against a stand-in running ``clock_speed`` times faster than real time.

Time is ``anchor + (wall clock - anchor) * speed``: a pure function of the wall clock, so the
stand-in and every deploystate process (one killed, one resuming it) read the same time, and a
journal written before a restart never lies in the future.
"""

from __future__ import annotations

import time

from deploystate.clock import SystemClock


class RehearsalClock(SystemClock):
    def __init__(self, speed: float, anchor: float) -> None:
        super().__init__()
        self.speed = speed
        self.anchor = anchor

    def now(self) -> float:
        return self.anchor + (time.time() - self.anchor) * self.speed

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds / self.speed)

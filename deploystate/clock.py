"""The real clock.  (The virtual one lives with the simulated backend.)"""

from __future__ import annotations

import threading
import time


class SystemClock:
    """Wall-clock time.  ``wake()`` ends a ``sleep`` early: a webhook saying that a pipeline
    changed should not wait for the next poll."""

    def __init__(self) -> None:
        self._woken = threading.Event()

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._woken.wait(seconds)
        self._woken.clear()

    def wake(self) -> None:
        self._woken.set()

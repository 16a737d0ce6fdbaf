"""Virtual time shared by several threads: it moves only when every member thread sleeps.

A benchmark or test runs the runner, the stand-in's webhook sender and two HTTP servers in one
process.  With a plain virtual clock nobody knows when to move time on; with an accelerated one,
every millisecond of wall-clock latency is multiplied by the speed-up and measured as overhead.
Here each thread that waits on time joins as a *member*; when all members sleep, time jumps to
the earliest wake-up, so an hour-long rollout takes only as long as its work, and timings come
out the same every run.

``sleep(math.inf)`` waits only for a ``wake()``.  A member's ``wake()`` ends its sleep at the
current moment (a webhook cutting a poll short), or, if it is busy, makes its next ``sleep``
return at once, like ``deploystate.clock.SystemClock``.
Threads that only answer requests (HTTP handlers) need not join: while they work, the member that
asked them is busy too, so time cannot move under them.
"""

from __future__ import annotations

import math
import threading
from types import TracebackType

from deploystate_backends.gitlab_standin.clock import DEFAULT_EPOCH


class Member:
    """One thread's view of a :class:`SharedVirtualClock`: ``now``, ``sleep``, ``wake``, ``leave``."""

    def __init__(self, clock: SharedVirtualClock, name: str) -> None:
        self.clock = clock
        self.name = name
        self.wake_at: float | None = None  # None: busy
        self.woken = False
        self.left = False

    def now(self) -> float:
        return self.clock.now()

    def sleep(self, seconds: float) -> None:
        self.clock._sleep(self, seconds)

    def wake(self) -> None:
        self.clock._wake(self)

    def leave(self) -> None:
        self.clock._leave(self)

    def __enter__(self) -> Member:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.leave()


class SharedVirtualClock:
    """Seconds since the epoch, moved on only when every member is asleep."""

    def __init__(self, start: float = DEFAULT_EPOCH) -> None:
        self._now = start
        self._cond = threading.Condition()
        self._members: list[Member] = []

    def now(self) -> float:
        with self._cond:
            return self._now

    def member(self, name: str) -> Member:
        """Join as a busy member; time cannot move until it sleeps or leaves."""
        with self._cond:
            joined = Member(self, name)
            self._members.append(joined)
            return joined

    def sleep(self, seconds: float) -> None:
        """For a thread that is not a member: join for this one sleep."""
        with self.member("sleeper") as once:
            once.sleep(seconds)

    def members(self) -> tuple[str, ...]:
        with self._cond:
            return tuple(m.name for m in self._members)

    # -- the members' side (under the condition's lock) ---------------------------------------
    def _sleep(self, member: Member, seconds: float) -> None:
        with self._cond:
            if member.left:
                raise RuntimeError(f"clock member {member.name!r} left already; join again with member()")
            if member.woken or seconds <= 0:
                member.woken = False
                return
            member.wake_at = self._now + seconds
            self._move_on()
            while member.wake_at is not None:
                self._cond.wait()
            member.woken = False

    def _wake(self, member: Member) -> None:
        with self._cond:
            if member.wake_at is not None:
                member.wake_at = None
                self._cond.notify_all()
            else:
                member.woken = True

    def _leave(self, member: Member) -> None:
        with self._cond:
            if member.left:
                return
            member.left = True
            member.wake_at = None
            self._members.remove(member)
            self._move_on()

    def _move_on(self) -> None:
        """If every member sleeps, jump to the earliest wake-up and release whoever is due."""
        if not self._members or any(m.wake_at is None for m in self._members):
            return
        # A member sleeping for ever waits to be woken; it never pulls time along.
        due = min(m.wake_at for m in self._members if m.wake_at is not None)
        if due == math.inf:
            return
        self._now = max(self._now, due)
        for m in self._members:
            if m.wake_at is not None and m.wake_at <= self._now:
                m.wake_at = None
        self._cond.notify_all()

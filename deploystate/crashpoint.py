"""A testing hook: kill this process at a chosen runner checkpoint, to prove that resuming works.

Crash tests run a real ``deploystate`` subprocess with::

    DEPLOYSTATE_KILL_AT=CHECKPOINT:N      e.g. DEPLOYSTATE_KILL_AT=before-trigger:2

and the process sends itself ``SIGKILL`` the Nth time the runner reaches ``CHECKPOINT`` (one of
:data:`deploystate.runner.CHECKPOINTS`).  SIGKILL, not an exception: nothing gets to clean up,
flush or release anything, exactly like a machine losing power.  Running the same command again
must then resume the rollout and finish it with every environment triggered exactly once.

Not for production use; unset, it costs nothing.  A malformed value is an error at start, so a
crash test can never pass because its kill silently did not happen.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping

from deploystate.errors import DeploystateError
from deploystate.runner import CHECKPOINTS

KILL_AT = "DEPLOYSTATE_KILL_AT"


class KillAtError(DeploystateError):
    pass


def parse_kill_at(text: str) -> tuple[str, int]:
    name, colon, count = text.strip().rpartition(":")
    if not colon or name not in CHECKPOINTS or not count.isdigit() or int(count) < 1:
        raise KillAtError(f"{KILL_AT}={text!r} is not valid; use CHECKPOINT:N with N >= 1 and CHECKPOINT "
                          f"one of {', '.join(CHECKPOINTS)} (e.g. before-trigger:1), or unset it")
    return name, int(count)


def checkpoint_hook(env: Mapping[str, str] | None = None) -> Callable[[str], None] | None:
    """The runner's checkpoint callback asked for by ``$DEPLOYSTATE_KILL_AT``; None if it is unset."""
    env = os.environ if env is None else env
    text = env.get(KILL_AT)
    if text is None or text == "":
        return None
    target, nth = parse_kill_at(text)
    reached = 0

    def hook(name: str) -> None:
        nonlocal reached
        if name != target:
            return
        reached += 1
        if reached == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook

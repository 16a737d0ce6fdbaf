"""Notifiers on the command line: ``deploystate notify-test``, and what the rollout commands use.

- :func:`notifiers_for` creates the configured notifiers when a command starts.  For ``start``,
  ``run`` and ``simulate`` it is strict: a notifier whose variable is unset or empty refuses the
  command (exit 2, naming the variable) before anything is written.  Operator commands (promote,
  abort...) are never refused for a notifier: one that cannot be made is said on stderr, and its
  notices wait in the journal for the next command that can deliver them.
- :func:`delivering` delivers, for the command's duration, the rollout it names and every other
  one owed (:mod:`deploystate.delivery`), then drains for ``[notify] drain_seconds`` and says what
  is left.
- :func:`status_text` and :func:`status_data`: what ``deploystate status`` shows of delivery.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from deploystate.errors import DeploystateError
from deploystate.terminal import printable

if TYPE_CHECKING:
    from deploystate.config import Config
    from deploystate.delivery import Backlog, Delivery
    from deploystate.notify_config import Notifiers, NotifyPlan
    from deploystate.ports import Store

EXIT_OK = 0
EXIT_REFUSED = 2
TEST_ACTION = "notify-test"


def _plan(config: Config) -> NotifyPlan:
    from deploystate.notify_config import read_notify

    return read_notify(config.notify_settings, config.source)


def notifiers_for(config: Config, *, strict: bool, env: Mapping[str, str] | None = None) -> Notifiers:
    """The configured notifiers, made now (their variables checked).  ``strict``: a refusal is an error
    (``start``, ``run``, ``simulate``); otherwise it is said on stderr and that notifier left out."""
    from deploystate.notify_config import create_notifiers

    made = create_notifiers(_plan(config), os.environ if env is None else env, strict=strict)
    for name, why in made.refused.items():
        print(printable(f"deploystate: warning: notifier {name} cannot deliver now ({why}); its notices wait "
                        "in the journal for the next command that can deliver them"), file=sys.stderr,
              flush=True)
    return made


@contextlib.contextmanager
def delivering(notifiers: Notifiers, store: Store, runbook: str | None, rollouts: Iterable[str] = (), *,
               in_memory: bool = False) -> Iterator[Delivery | None]:
    """Deliver while the block runs (None: no notifier configured); on leaving, drain and say what is left.
    The notifiers are closed on leaving, whatever happens."""
    from deploystate.delivery import Delivery

    try:
        if not notifiers:
            yield None
            return
        delivery = Delivery(store, notifiers.made, runbook, settings=notifiers.plan.delivery,
                            in_memory=in_memory)
        with delivery.start(rollouts):
            yield delivery
    finally:
        notifiers.close()


# -- status -------------------------------------------------------------------------------------


def _backlogs(store: Store, config: Config, version: str | None) -> dict[str, Backlog]:
    plan = _plan(config)
    if not plan.notifiers:
        return {}  # and nothing of delivery is imported: status stays cheap
    from deploystate.delivery import backlog, owed_rollouts

    rollouts = [version] if version is not None else owed_rollouts(store, plan.notifiers)
    contexts: dict[str, Any] = {}
    return {name: backlog(store, rollouts, name, entry.filter, contexts)
            for name, entry in plan.notifiers.items()}


def status_text(store: Store, config: Config, version: str | None = None) -> str:
    """``delivery: slack has not accepted 3 notices since 14:02 UTC; webhook: all delivered`` (empty
    without notifiers)."""
    backlogs = _backlogs(store, config, version)
    if not backlogs:
        return ""
    from deploystate.delivery import plural, when

    parts = []
    for name, left in backlogs.items():
        if not left.count:
            parts.append(f"{name}: all delivered")
            continue
        of = f" of {plural(len(left.rollouts), 'rollout')}" if version is None else ""
        parts.append(f"{name} has not accepted {plural(left.count, 'notice')}{of} since {when(left.since)}")
    text = "delivery: " + "; ".join(parts)
    if any(left.count for left in backlogs.values()):
        text += " (the next run, start, simulate or operator command on this journal delivers them)"
    return printable(text) + "\n"


def status_data(store: Store, config: Config, version: str | None = None) -> dict[str, Any]:
    """``{"delivery": {name: {"undelivered", "since", "rollouts"}}}``, or ``{}`` without notifiers."""
    backlogs = _backlogs(store, config, version)
    if not backlogs:
        return {}
    return {"delivery": {name: {"undelivered": left.count, "since": left.since,
                                "rollouts": list(left.rollouts)} for name, left in backlogs.items()}}


# -- notify-test ---------------------------------------------------------------------------------


def notify_test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", metavar="NAME", default=None,
                        help="only this notifier (a [notify.NAME] table); default: every configured one")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="settings file (default: $DEPLOYSTATE_CONFIG, else ./deploystate.toml)")


def test_notice(name: str) -> Any:
    from deploystate.ports import Notice

    host = socket.gethostname() or "this machine"
    return Notice(TEST_ACTION, time.time(), "info",
                  f"deploystate notify-test from {host}: {name} works. Nothing is being deployed.",
                  TEST_ACTION, None, {"test": True})


def notify_test(args: argparse.Namespace) -> int:
    """Send one test notice to each configured notifier (or ``--to NAME``); say what each answered.
    Exit 0 when every one accepted, 2 when any refused or could not be made."""
    from deploystate.config import load_config
    from deploystate.notify_config import create_notifiers, installed
    from deploystate.ports import NotifierError

    config = load_config(args.config)
    plan = _plan(config)
    if not plan.notifiers:
        raise DeploystateError(f"no notifier is configured in {config.source}; add a [notify.NAME] table for "
                               f"one of the installed notifiers ({', '.join(installed()) or 'none'})")
    if args.to is not None and args.to not in plan.notifiers:
        raise DeploystateError(f"no [notify.{args.to}] in {config.source}; configured: "
                               f"{', '.join(plan.notifiers)}")
    made = create_notifiers(plan, os.environ, strict=False, only=args.to)
    failed = False
    try:
        for name in plan.notifiers:
            if args.to is not None and name != args.to:
                continue
            if name in made.refused:
                failed = True
                answer = f"not configured: {made.refused[name]}"
            else:
                notifier, _ = made.made[name]
                started = time.monotonic()
                try:
                    notifier.notify(test_notice(name))
                except NotifierError as error:
                    failed = True
                    later = f"; it asks to retry after {error.retry_after:g}s" if error.retry_after else ""
                    answer = f"refused: {error}{later}" + (" (permanent)" if error.permanent else "")
                except Exception as error:  # any failure of the notifier is its answer here
                    failed = True
                    answer = f"refused: {type(error).__name__}: {error}"
                else:
                    answer = f"accepted ({time.monotonic() - started:.2f}s)"
            print(printable(f"{name}: {' '.join(answer.split())}"), flush=True)
    finally:
        made.close()
    return EXIT_REFUSED if failed else EXIT_OK

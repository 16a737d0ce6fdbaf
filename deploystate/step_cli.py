"""``deploystate step VERSION STEP``: advance one named step until it ends or needs a person.

Made for a CI system that runs one job per step: several jobs of one rollout run at once (two
package waits, a bake beside a promotion), each its own process, on one journal.  ``run`` holds
the rollout's runner lock for its whole life, so a second runner is refused; a step instead holds
it for one pass at a time (deciding, journaling and calling outside, as ``Runner.advance`` does)
and lets go while it sleeps, so the jobs of one rollout take turns.  One pass under the lock is
what makes a trigger exactly-once: the intent with its idempotency key is appended, the deployer
called and the answer appended before another runner may look.  A job killed anywhere and run
again (a retried job) starts from the journal: it finds the deployment it had triggered instead of
triggering again.

A promotion step run here is the promotion itself: once the step waits for a person, ``--by``
promotes it (``Runner.promote``: the production checks run and are recorded first).  A bake step
waits until the durable bake ends (it counts from the deployment before it; ``skip-bake`` ends it
early, noticed within a second).

Exit codes: 0 the step succeeded (or the rollout was superseded there: nothing to do); 1 it failed,
cannot start yet (its needs have not succeeded), the promotion's checks refused it, or the rollout
was aborted; 2 bad input (an unknown step or rollout, an empty ``--by``).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from deploystate import cli
from deploystate.errors import DeploystateError

if TYPE_CHECKING:
    from deploystate.ports import Store
    from deploystate.runner import Runner, RunResult

# How long a step waits for the rollout's lock before it gives up.  Passes of other steps hold it
# for well under a second; only a whole-rollout ``run`` (or ``rollback``) holds it for long.
BUSY_LIMIT_S = 15 * 60.0
_BUSY_PAUSE_S = (0.05, 0.25)  # random, so jobs that met at the lock do not meet again


def arguments(parser: argparse.ArgumentParser) -> None:
    cli._version_argument(parser)
    parser.add_argument("step", metavar="STEP",
                        help="the step's name in the rollout's spec, e.g. trigger_staging")
    parser.add_argument("--by", metavar="WHO", default=None,
                        help="who promotes, for a promotion step (recorded; default: your login name); "
                             "a CI job passes the user who played it")
    parser.add_argument("--reason", metavar="TEXT", default=None,
                        help="why, for a promotion step (recorded and announced)")
    cli._config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from deploystate import gate_cli, gates, notify_cli, report
    from deploystate.journal import UnknownRollout
    from deploystate.runner import Stop
    from deploystate.spec import StepKind

    by = None if args.by is None else cli._actor(args.by)  # an empty --by is refused before anything
    config = cli._config(args)
    checkpoint = cli._checkpoint()
    store_path = cli._store_path(args, config)
    notifiers = notify_cli.notifiers_for(config, strict=True)  # an unset variable: refused, nothing written
    with cli._journal(store_path, create=False) as store, \
            cli._open_backends(config.backend, cli._configured_settings(config, store_path)) as backends, \
            notify_cli.delivering(notifiers, store, backends.runbook) as delivery:
        version = cli._rollout_id(backends, store, args.version)
        try:
            view = cli._read(store, version)
        except UnknownRollout:
            raise DeploystateError(f"no rollout {version} in {store_path}; start it first ('deploystate "
                                   f"start {version}'), then run its steps") from None
        step = view.spec.step(args.step)  # an unknown name: refused, naming the spec's steps
        print(cli._shown(f"step {step.name} of rollout {version}, from record {view.seq} "
                         f"({report.situation(view)})"), flush=True)
        strategy = cli._recorded_strategy(view, config.strategy, sys.stdout)
        runner = cli._runner(store, backends, config, strategy=strategy, origin=view.created_at,
                             checkpoint=checkpoint, delivery=delivery)
        result = advance_step(runner, version, step.name)
        if step.kind is StepKind.PROMOTION and result.stop is Stop.PROMOTION:
            who = by if by is not None else cli._actor(None)
            try:
                runner.promote(version, who, args.reason)
            except gates.ChecksRefused as refused:
                cli._out(gate_cli.results_text(refused.results))
                cli._note(f"error: {refused}")
                return cli.EXIT_STOPPED  # a person must act (wait for the checks, or override them)
            result = advance_step(runner, version, step.name)
        result = _finished(runner, version, step.name, result)
    cli._out(cli._shown(result.message) + "\n")
    if result.stop not in (Stop.DONE, Stop.SUPERSEDED):
        cli._out(cli._next(result.view))
    return cli._exit_code(result)


def advance_step(runner: Runner, rollout_id: str, step: str) -> RunResult:
    """``Runner.run_step``, holding the rollout only for each pass (see the module's docstring)."""
    from deploystate.runner import step_result

    view = None
    while True:
        with _holding(runner.store, rollout_id):
            view, decision = runner.advance(rollout_id, view, step=step)
        result = step_result(view, step, decision)
        if result is not None:
            return result
        runner.checkpoint("before-sleep")
        runner.sleep_until(decision.wake_at, view)


def _finished(runner: Runner, rollout_id: str, step: str, result: RunResult) -> RunResult:
    """``result``, after recording the rollout's end if this step was the last one it waited for.

    Only a whole-rollout pass records that; one is made when nothing is left that it could start
    (every real step succeeded and every dry run is over), so it starts nothing of another job's.
    """
    from deploystate.runner import RunResult, step_result

    view = runner.view(rollout_id)
    if not view.can_finish() or view.ready_steps:
        return result
    with _holding(runner.store, rollout_id):
        view, decision = runner.advance(rollout_id, view)
    ended = step_result(view, step, decision)
    return result if ended is None else RunResult(view, result.stop, ended.message)


@contextlib.contextmanager
def _holding(store: Store, rollout_id: str) -> Iterator[None]:
    """The rollout's runner lock, waited for while another step's pass (or a ``run``) holds it."""
    from deploystate.journal import RolloutBusy

    started = time.monotonic()
    said = False
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(store.hold(rollout_id))
                break
            except RolloutBusy:
                waited = time.monotonic() - started
                if waited > BUSY_LIMIT_S:
                    raise DeploystateError(
                        f"rollout {rollout_id} has been held by another process for {waited / 60:.0f} min "
                        "(a 'deploystate run' or 'rollback'?); nothing was done. Stop it, or wait for it "
                        "and run this step again") from None
                if not said and waited > 5:
                    cli._note(f"waiting for rollout {rollout_id}: another process holds it")
                    said = True
                time.sleep(random.uniform(*_BUSY_PAUSE_S))
        yield

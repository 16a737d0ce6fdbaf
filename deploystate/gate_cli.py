"""The gate's commands: ``checks``, ``override``, ``lock``, ``unlock``, ``rollback``, and the
check table a refused ``promote`` prints.  Their arguments are declared in :mod:`deploystate.cli`,
which imports this module only when one of them runs."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from deploystate import cli
from deploystate.errors import DeploystateError

if TYPE_CHECKING:
    from deploystate.config import Config
    from deploystate.ports import Backends, CheckResult
    from deploystate.runner import Runner
    from deploystate.stores import CheckedStore

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT_S = {"": 60.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_s(text: str, flag: str) -> float:
    """``2h``, ``90m``, ``1d``, ``3600s`` (a bare number is minutes) as seconds."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise cli.UsageError(f"{flag} {text!r} is not a duration; say e.g. 30m, 2h or 1d")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


@contextlib.contextmanager
def _gate(args: argparse.Namespace, *, create: bool = False,
          rollback: bool = False) -> Iterator[tuple[Runner, CheckedStore, Backends, Config]]:
    """The journal, the backend and a runner with the configured production checks."""
    import attrs

    config = cli._config(args)
    store_path = cli._store_path(args, config)
    # A rollback's one step is a per-environment deployment: that is its real path.
    strategy = attrs.evolve(config.strategy, individual_deployments=True) if rollback else config.strategy
    from deploystate import notify_cli

    # A rollback is a new rollout: like start, it is refused when a notifier cannot deliver.
    notifiers = notify_cli.notifiers_for(config, strict=rollback)
    with cli._journal(store_path, create=create) as store, \
            cli._open_backends(config.backend, cli._configured_settings(config, store_path)) as backends, \
            notify_cli.delivering(notifiers, store, backends.runbook) as delivery:
        runner = cli._runner(store, backends, config, strategy=strategy, delivery=delivery)
        yield runner, store, backends, config


def results_text(results: Sequence[CheckResult]) -> str:
    from deploystate import gates

    return gates.table(results) + "\n"


def refused(error: DeploystateError, results: Sequence[CheckResult]) -> int:
    """A promotion refused by its checks: the table on stdout, the refusal on stderr, exit 2."""
    cli._out(results_text(results))
    print(f"{cli.PROG}: error: {cli._shown(str(error))}", file=sys.stderr, flush=True)
    return cli.EXIT_USER_ERROR


def promote(args: argparse.Namespace) -> int:
    from deploystate import gates

    by = cli._actor(args.by)
    override = None if args.override_checks is None else cli._text(args.override_checks, "--override-checks")
    if args.override_expires is not None and override is None:
        raise cli.UsageError("--override-expires goes with --override-checks REASON")
    for_s = None if args.override_expires is None else duration_s(args.override_expires, "--override-expires")
    try:
        return cli._operate(args, lambda runner, v: runner.promote(v, by, args.reason, override=override,
                                                                  override_for_s=for_s),
                            f"promoted by {by}" + (" (failing checks overridden)" if override else ""))
    except gates.ChecksRefused as error:
        return refused(error, error.results)


def override(args: argparse.Namespace) -> int:
    from deploystate import gates

    by = cli._actor(args.by)
    reason = cli._text(args.reason, "--reason")
    for_s = None if args.expires is None else duration_s(args.expires, "--expires")
    try:
        return cli._operate(args, lambda runner, v: runner.override(v, by, reason, for_s=for_s),
                            f"failing production checks overridden by {by}")
    except gates.ChecksRefused as error:
        return refused(error, error.results)


def checks(args: argparse.Namespace) -> int:
    """Run the checks for a rollout now and print them; nothing is written."""
    from deploystate import report
    from deploystate.decide import checks_pass

    with _gate(args) as (runner, store, backends, _config):
        rollout_id = cli._rollout_id(backends, store, args.version)
        view = cli._read(store, rollout_id)
        results = runner.check_now(view)
        now = runner.clock.now()
    passed = checks_pass(view, results, now)
    if args.json:
        cli._out(report.dumps({"rollout": rollout_id, "passed": passed,
                               "results": [r.as_dict() for r in results]}))
    else:
        cli._out(results_text(results) + ("all pass" if passed and all(r.passed for r in results)
                                           else "pass (failures covered by a live override)" if passed
                                           else "FAILING: a protected deployment would be held") + "\n")
    return cli.EXIT_OK if passed else cli.EXIT_STOPPED


def lock(args: argparse.Namespace) -> int:
    by = cli._actor(args.by)
    reason = cli._text(args.reason, "--reason")
    # A typo must not lock nothing while everyone thinks production is locked.
    config = cli._config(args)
    known = sorted({env for step in cli._spec(config.spec).steps for env in step.targets})
    if args.environment not in known:
        raise cli.UsageError(f"spec {config.spec!r} deploys no environment {args.environment!r}; "
                             f"environments: {', '.join(known)}; nothing was locked")
    with _gate(args, create=True) as (runner, _store, _backends, _config):
        view = runner.lock(args.environment, by, reason)
    running = f"; {view.holder.version} still deploys there (it goes on)" if view.holder else ""
    cli._out(cli._shown(f"{args.environment} locked by {by}: {reason}{running}. No new deployment starts "
                        f"there until 'deploystate unlock {args.environment} --by YOU'") + "\n")
    return cli.EXIT_OK


def unlock(args: argparse.Namespace) -> int:
    by = cli._actor(args.by)
    with _gate(args) as (runner, _store, _backends, _config):
        runner.unlock(args.environment, by)
    cli._out(cli._shown(f"{args.environment} unlocked by {by}; waiting deployments go on") + "\n")
    return cli.EXIT_OK


def rollback(args: argparse.Namespace) -> int:
    """Create the rollback rollout and run it to its end, as ``run`` would."""
    from deploystate.spec import rollback_spec

    by = cli._actor(args.by)
    reason = cli._text(args.reason, "--reason")
    with _gate(args, rollback=True) as (runner, _store, _backends, _config):
        view = runner.rollback(args.environment, args.version, by, reason, rollback_spec(args.environment))
        cli._out(cli._shown(f"rolling {args.environment} back to {view.version} as rollout {view.rollout_id} "
                            f"(by {by}: {reason})") + "\n")
        result = runner.run(view.rollout_id)
    cli._out(cli._shown(result.message) + "\n")
    return cli._exit_code(result)

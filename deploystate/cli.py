"""The ``deploystate`` command line.

Each subcommand is a :class:`Command`: a function that declares its arguments and a function
that runs it and returns the exit code.  To add one to the core, write those two functions and
list the command in :data:`COMMANDS`; other packages add theirs through the
``deploystate.commands`` entry-point group (:mod:`deploystate.commands`).

A command imports what it uses when it runs, and only then: ``deploystate --help`` declares no
command's arguments and imports neither the rollout model nor a backend, and running one command
declares only its own arguments.  Imports that type hints need stay under ``TYPE_CHECKING``.

Exit codes: 0 when the command did what was asked (for ``simulate`` and ``run``: the rollout is
done); 1 when a rollout stopped short (failed, waiting for a human, aborted); 2 for bad input or a
refusal (and for ``check-store``: problems found); 3 for an internal error (a bug); 130 when
interrupted (Ctrl-C, or SIGTERM where a command turns it into one).  Every failure is one line on
stderr and never a traceback, unless ``--debug`` is given (before the command, or among a core
command's options), which prints the traceback first:

- a :class:`~deploystate.errors.DeploystateError` (a user's mistake, or something the user can act
  on): ``deploystate: error: <message>``, exit 2;
- an ``OSError`` about a file or path (the config, the journal, its log, the output: disk full,
  permission denied, a folder where a file belongs...) or about the machine's resources:
  ``deploystate: error: <path>: <reason> (<ERRNO>)``, exit 2;
- anything else: ``deploystate: internal error: <type>: <message> (run again with --debug for the
  traceback; please report it)``, exit 3.  Scripts read 1 as "a person is needed"; a bug must
  never look like that.

Whatever the command prints that came from a user (names, reasons, paths, spec names) is shown
:func:`~deploystate.report.printable`: a line break or an escape code is written as ``\\n`` or
``\\x1b``, never sent to the terminal.  The journal and ``--json`` keep such text exactly.

Rollout commands read ``deploystate.toml`` (or ``--config``) and the environment first and
refuse to start on a bad setting; ``--store`` overrides the configured journal.  Commands that
open a backend (simulate, start, run, promote, retry, skip-bake, abort) have it check the version
(``Backends.check_version``) before they use it, and close it when they end; ``status`` and
``history`` open no backend and look the rollout up in the journal.  Opening a journal only makes
cheap checks (it is a deploystate journal of a schema this version reads); ``check-store`` reads
all of it and is the real integrity check.  The crash-test hook ``DEPLOYSTATE_KILL_AT`` is
described in :mod:`deploystate.crashpoint`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TextIO

from deploystate.errors import DeploystateError
from deploystate.terminal import printable

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from deploystate.config import Config
    from deploystate.delivery import Delivery
    from deploystate.ports import Backends, Notice, Store
    from deploystate.rollout import RolloutView
    from deploystate.runner import Runner, RunResult
    from deploystate.spec import Spec
    from deploystate.stores import CheckedStore
    from deploystate.strategy import Strategy

PROG = "deploystate"
EXIT_OK = 0
EXIT_STOPPED = 1  # a rollout stopped short of done: failed, waiting for a human, or aborted
EXIT_USER_ERROR = 2
EXIT_INTERNAL = 3  # a bug: scripts must not read it as "waiting for a human" (1)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
DEBUG_FLAG = "--debug"


class UsageError(DeploystateError):
    """The command line itself is wrong (unknown option, missing argument...)."""


class Command(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("deploystate")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class OutputFailed(DeploystateError):
    """stdout cannot be written (a full disk under ``> file``, ...): said once, on stderr."""


def _out(text: str) -> None:
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise
    except OSError as error:
        raise OutputFailed(f"cannot write the output: {_reason(error)}") from None


def _flush() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise OutputFailed(f"cannot write the output: {_reason(error)}") from None


def _shown(text: str) -> str:
    """User-given text as it may be printed (see :func:`deploystate.terminal.printable`)."""
    return printable(text)


def _note(text: str) -> None:
    print(_shown(f"{PROG}: {text}"), file=sys.stderr)


def _builtin_specs() -> str:
    from deploystate.spec import BUILTIN_SPECS

    return ", ".join(BUILTIN_SPECS)


# -- diagram -----------------------------------------------------------------------------------


def _diagram_arguments(parser: argparse.ArgumentParser) -> None:
    from deploystate.diagram import FORMATS

    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="mermaid (stateDiagram-v2, the default) or dot (Graphviz source)")
    parser.add_argument("--spec", metavar="FILE_OR_BUILTIN", default=None,
                        help=f"a built-in spec ({_builtin_specs()}; default seed) or a TOML file")
    parser.add_argument("--detail", action="store_true",
                        help="draw each step's phases and the transitions between them")
    parser.add_argument("--write", metavar="DIR", type=Path, default=None,
                        help="(re)write the committed diagrams of the built-in specs into DIR "
                             "(.mmd, .dot, and .svg when Graphviz is installed)")


def _diagram(args: argparse.Namespace) -> int:
    if args.write is not None:
        given = [flag for flag, value in (("--format", args.format), ("--spec", args.spec),
                                          ("--detail", args.detail or None)) if value is not None]
        if given:
            raise UsageError(f"--write renders every built-in spec in both formats; drop {', '.join(given)}")
        return _write_diagrams(args.write)
    from deploystate.diagram import render
    from deploystate.machine import RolloutMachine

    machine = RolloutMachine(_spec(args.spec))
    _out(render(machine, args.format or "mermaid", detail=args.detail))
    return EXIT_OK


def _spec(ref: str | None) -> Spec:
    from deploystate.spec import BUILTIN_SPECS, resolve_spec

    # A bare word that is no file is meant as a built-in name: say so, rather than "no such file".
    if ref is not None and ref not in BUILTIN_SPECS and not Path(ref).exists() \
            and not Path(ref).suffix and os.sep not in ref:
        raise DeploystateError(f"no built-in spec {ref!r} and no file of that name; use one of "
                               f"{', '.join(BUILTIN_SPECS)} or the path of a TOML spec")
    return resolve_spec(ref)


def _write_diagrams(directory: Path) -> int:
    from deploystate.diagram import REGENERATE, committed_diagrams, dot_program

    files = committed_diagrams()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            path = directory / name
            # Unchanged files are left alone so their timestamps say when the picture changed.
            if path.is_file() and path.read_bytes() == content:
                _out(_shown(f"unchanged {path}") + "\n")
                continue
            path.write_bytes(content)
            _out(_shown(f"wrote {path}") + "\n")
    except OSError as error:
        raise DeploystateError(f"cannot write diagrams into {directory}: {error.strerror or error}; "
                               "check that the directory is writable") from None
    if dot_program() is None:
        _note("Graphviz's dot is not installed, so no .svg was written; install Graphviz and run "
              f"`{REGENERATE}` again to refresh them")
    return EXIT_OK


# -- rollouts: shared plumbing ------------------------------------------------------------------


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="settings file (default: $DEPLOYSTATE_CONFIG, else ./deploystate.toml)")
    parser.add_argument("--store", metavar="PATH", default=None,
                        help="the journal (a SQLite file, or a store URL such as postgresql://HOST/DB); "
                             "overrides [deploystate] store")


def _version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", metavar="VERSION", help="the version, e.g. 13.10.202103011220")


def _spec_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", metavar="FILE_OR_BUILTIN", default=None,
                        help=f"a built-in spec ({_builtin_specs()}) or a TOML file; "
                             "default: [deploystate] spec")


def _by_argument(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--by", metavar="WHO", required=required, default=None,
                        help="who does this (recorded in the journal)" +
                             ("" if required else "; default: your login name"))


def _actor(given: str | None) -> str:
    if given is not None:
        if not given.strip():
            raise UsageError("--by is empty; give the name of who does this")
        return given.strip()
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (some containers): say so rather than guess
        raise UsageError("cannot tell who you are; give --by WHO") from None


def _config(args: argparse.Namespace) -> Config:
    from deploystate.config import load_config

    return load_config(args.config)


def _store_path(args: argparse.Namespace, config: Config) -> Path | str:
    """The journal: a SQLite file's path, or a store URL (``scheme://...``, kept as text: a Path
    would fold its ``//``), opened by the ``deploystate.stores`` entry point of its scheme."""
    from deploystate.stores import is_url

    given = args.store if args.store is not None else config.store
    return given if is_url(given) else Path(given)


@contextlib.contextmanager
def _journal(path: Path | str, *, create: bool, log: bool = True) -> Iterator[CheckedStore]:
    """The journal at ``path``; only commands that start rollouts may create it.

    With ``log``, every notice also goes to the structured log beside it (commands that only
    read write no notice, and open none).  A store URL has no "beside": its notices go to the
    output and the configured notifiers only (warnings and errors also to stderr).
    """
    if isinstance(path, str):
        from deploystate.stores import open_url

        with open_url(path, create=create) as opened:
            yield opened
        return
    if not create and not path.exists():
        raise DeploystateError(f"no journal at {path}; start a rollout first ('deploystate start VERSION') "
                               "or point --store (or [deploystate] store) at an existing journal")
    log_path = path.with_name(path.name + ".log")
    # Refused before the journal is opened, so a new journal is not left behind.
    if log and log_path.is_dir():
        raise DeploystateError(f"{log_path} is a directory, not a file; deploystate writes the journal's "
                               "structured log there: move that directory away")
    from deploystate.sqlite_store import SQLiteStore

    with SQLiteStore(path) as store, _structured_log(log_path) if log else contextlib.nullcontext():
        yield store


@contextlib.contextmanager
def _structured_log(path: Path) -> Iterator[None]:
    """Every notice as one JSON line in ``<journal>.log`` (LogNotifier's lines), for log shippers."""
    import logging

    from deploystate.notices import LOG

    class LogFile(logging.FileHandler):
        """Says once that the log cannot be written (a full disk), then stops: never a traceback
        per notice, and never a stopped rollout (the journal is the record, the log a copy)."""

        failed = False

        def handleError(self, record: logging.LogRecord) -> None:
            self._failed(sys.exc_info()[1])
            self.setLevel(logging.CRITICAL + 1)

        def close(self) -> None:
            try:
                super().close()
            except OSError as error:  # its last flush, on the same full disk
                self._failed(error)

        def _failed(self, error: BaseException | None) -> None:
            if not self.failed:
                self.failed = True
                why = _reason(error) if isinstance(error, OSError) else _one_line(str(error))
                _note(f"warning: cannot write the structured log {path}: {why}; the journal still "
                      "records everything, the log has stopped")

    try:
        handler = LogFile(path, encoding="utf-8")
    except OSError as error:
        raise DeploystateError(f"cannot open the structured log {path}: {_reason(error)}; deploystate "
                               "writes the journal's log there, beside the journal") from None
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.INFO)
    LOG.addHandler(handler)
    previous = LOG.level
    LOG.setLevel(logging.INFO)
    try:
        yield
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(previous)
        handler.close()


def _open_backends(name: str, settings: Mapping[str, Any]) -> Backends:
    """The backend ``name``: the caller closes it (``with``), whatever happens."""
    from deploystate import registry

    return registry.create(name, settings)


def _configured_settings(config: Config, store: Path | str) -> dict[str, Any]:
    from deploystate.simulation import SIMULATED, WORLD, settings_for_store

    settings = dict(config.settings_for(config.backend))
    if config.backend == SIMULATED:
        if isinstance(store, str):
            # No "beside" a store URL, and a world in memory would be a new one in every process (a
            # second trigger of each deployment after a crash): the world must be named.
            if WORLD not in settings:
                from deploystate.stores import shown

                raise DeploystateError(f"the simulated backend keeps its world in a file beside a SQLite "
                                       f"journal; with store {shown(store)} name one that every runner "
                                       "reaches: [backends.simulated] world = PATH")
            return settings
        settings = settings_for_store(settings, store)
    return settings


def _new_version(name: str, settings: Mapping[str, Any], version: str) -> str:
    """``version`` as backend ``name`` accepts it for a new rollout, checked before any file is made.

    The check asks the backend opened without files (a simulated world in memory), so a refused
    version leaves neither a journal nor a world behind.
    """
    from deploystate.simulation import without_files

    with _open_backends(name, without_files(settings)) as probe:
        return probe.check_version(version)


def _rollout_id(backends: Backends, store: Store, given: str) -> str:
    """The rollout ``given`` names: a rollout id in the journal (a rollback's, say), else a version
    as the backend accepts it."""
    if store.last_seq(given) > 0:
        return given
    return backends.check_version(given)


def _read(store: Store, version: str) -> RolloutView:
    from deploystate.rollout import rebuild

    return rebuild(store.read(version))


def _recorded_strategy(view: RolloutView, current: Strategy, stream: TextIO) -> Strategy:
    """A rollout keeps the strategy it was created with; settings changed since do not apply to it."""
    from deploystate.strategy import Strategy

    recorded = Strategy.from_mapping(view.settings) if view.settings else current
    if recorded != current:
        print(_shown(f"  keeps the plan it was created with: {recorded.describe()}") + "\n" +
              _shown(f"  (the current settings would say: {current.describe()})"), file=stream, flush=True)
    return recorded


class _Progress:
    """Live progress lines until their reader goes away (``deploystate simulate | head``).

    Then the rest of the output goes to the null device: the rollout itself carries on, and the
    command still ends with the rollout's exit code.
    """

    def __init__(self, stream: TextIO, origin: float | None) -> None:
        from deploystate.notices import StreamNotifier

        self._lines = StreamNotifier(stream, origin=origin)
        self._stream = stream

    def notify(self, notice: Notice) -> None:
        import attrs

        try:
            # Messages quote names and reasons as given: shown escaped, never as terminal codes.
            self._lines.notify(attrs.evolve(notice, message=_shown(notice.message)))
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)


def _runner(store: Store, backends: Backends, config: Config, *, strategy: Strategy,
            auto_promote: str | None = None, progress: TextIO | None = None,
            origin: float | None = None, checkpoint: Callable[[str], None] | None = None,
            delivery: Delivery | None = None) -> Runner:
    import attrs

    from deploystate import gates
    from deploystate.notices import FanOut, LogNotifier
    from deploystate.runner import Runner

    runner_config = attrs.evolve(config.runner_config(auto_promote=auto_promote), strategy=strategy)
    checks = gates.configured(config.check_settings, backends, store, config.settings_for(config.backend))
    # Human progress lines, and the structured log (a file beside the journal; without one,
    # warnings and errors still reach stderr through logging's last-resort handler).
    # ``delivery``: the configured notifiers, delivered from the journal (deploystate.notify_cli).
    notifier = FanOut([_Progress(progress or sys.stdout, origin), LogNotifier(),
                       *([delivery] if delivery is not None else [])])
    return Runner(store, backends, config=runner_config, notifier=notifier, checkpoint=checkpoint,
                  checks=checks)


def _exit_code(result: RunResult) -> int:
    from deploystate.runner import Stop

    # Superseded: a newer version went on; nobody needs to do anything.
    return EXIT_OK if result.stop in (Stop.DONE, Stop.SUPERSEDED) else EXIT_STOPPED


def _next(view: RolloutView, options: str = "") -> str:
    from deploystate import report

    hints = report.next_steps(view, options)
    return "next:\n" + "".join(f"  {_shown(hint)}\n" for hint in hints) if hints else ""


def _checkpoint() -> Callable[[str], None] | None:
    from deploystate.crashpoint import checkpoint_hook

    return checkpoint_hook()


def _notify_test_arguments(parser: argparse.ArgumentParser) -> None:
    from deploystate import notify_cli

    notify_cli.notify_test_arguments(parser)


def _notify_test(args: argparse.Namespace) -> int:
    from deploystate import notify_cli

    return notify_cli.notify_test(args)


# -- simulate ----------------------------------------------------------------------------------


def _simulate_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the simulated durations (same seed, same rollout)")
    parser.add_argument("--fail", metavar="ENV", action="append", default=[],
                        help="ENV's deployments fail, retries too (repeatable)")
    parser.add_argument("--retry-fixes", metavar="ENV", action="append", default=[],
                        help="ENV's deployment fails once, then a human retries its job and it passes")
    parser.add_argument("--hang", metavar="ENV", action="append", default=[],
                        help="ENV's deployment never finishes (until the wait limit fails it)")
    parser.add_argument("--check-fails", metavar="CHECK", action="append", default=[],
                        help="this simulated production check fails (e.g. active_incidents), so the "
                             "promotion is refused: rehearse an override (repeatable)")
    parser.add_argument("--no-auto-promote", action="store_true",
                        help="stop at the promotion gate as a real rollout would, instead of promoting")
    parser.add_argument("--individual-deployments", action="store_true",
                        help="make the individual deployments the real path (INDIVIDUAL_DEPLOYMENTS=true)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON summary on stdout (progress goes to stderr)")
    _spec_argument(parser)
    _config_arguments(parser)


def _simulate(args: argparse.Namespace) -> int:
    import attrs

    from deploystate import report
    from deploystate.journal import MemoryStore, UnknownRollout
    from deploystate.runner import Stop
    from deploystate.simulation import SIMULATED, deployer_triggers, settings_for_simulate, triggers_by_step

    config = _config(args)
    checkpoint = _checkpoint()
    spec = _spec(args.spec or config.spec)
    store_path = Path(args.store) if args.store is not None else None
    from deploystate.stores import is_url

    if args.store is not None and is_url(args.store):
        raise UsageError("simulate keeps its journal in a SQLite file or in memory; for a store URL, use "
                         "'deploystate start' and 'run' with [backends.simulated] world = PATH")
    settings = settings_for_simulate(config.settings_for(SIMULATED), spec=spec, store=store_path,
                                     seed=args.seed, fail=args.fail, retry_fixes=args.retry_fixes,
                                     hang=args.hang, failing_checks=args.check_fails)
    version = _new_version(SIMULATED, settings, args.version)
    from deploystate import notify_cli

    notifiers = notify_cli.notifiers_for(config, strict=True)  # an unset variable: refused, nothing written
    # Everything in check mode: a simulation must read as one, never as a REAL deployment.
    strategy = attrs.evolve(config.strategy, check_mode_everywhere=True,
                            individual_deployments=args.individual_deployments
                            or config.strategy.individual_deployments)
    progress = sys.stderr if args.json else sys.stdout
    auto_promote = None if args.no_auto_promote else "simulation"
    with contextlib.ExitStack() as stack:
        store: Store = (stack.enter_context(_journal(store_path, create=True)) if store_path is not None
                        else stack.enter_context(MemoryStore()))
        backends = stack.enter_context(_open_backends(SIMULATED, settings))
        delivery = stack.enter_context(notify_cli.delivering(notifiers, store, backends.runbook, [version],
                                                             in_memory=store_path is None))
        try:
            existing: RolloutView | None = _read(store, version)
        except UnknownRollout:
            existing = None
        if existing is None:
            runner = _runner(store, backends, config, strategy=strategy, auto_promote=auto_promote,
                             progress=progress, checkpoint=checkpoint, delivery=delivery)
            runner.create(version, spec)  # the backend prepares for it (a simulated clock: the tag's time)
        else:
            # The same command again resumes a rollout (e.g. after its process was killed).
            print(_shown(f"resuming rollout {version} from record {existing.seq} "
                         f"({report.situation(existing)})"), file=progress, flush=True)
            if args.spec is not None and spec != existing.spec:
                print(_shown(f"  keeps the spec it was created with ({existing.spec.name}), not {args.spec}"),
                      file=progress, flush=True)
            runner = _runner(store, backends, config,
                             strategy=_recorded_strategy(existing, strategy, progress),
                             auto_promote=auto_promote, progress=progress, origin=existing.created_at,
                             checkpoint=checkpoint, delivery=delivery)
        result = runner.run(version)
        view = result.view
        by_step = None
        triggers = deployer_triggers(backends)
        if triggers is not None:
            by_step = triggers_by_step(report.step_of_key(view), triggers)
        if args.json:
            data = report.summary_data(view, stop=result.stop, message=result.message,
                                       deployer_by_step=by_step)
            _out(report.dumps({**data, "exit_code": _exit_code(result)}))
            return _exit_code(result)
        _out("\n" + report.timeline_text(view) + "\n" + report.summary_text(view, by_step))
        if result.stop is not Stop.DONE:
            if store_path is None:
                _out("\nThis simulation kept its journal in memory; to act on a stopped rollout "
                     "(retry, promote, abort), run it again with --store PATH.\n")
            else:
                _out("\n" + _next(view, f" --store {_shown(str(store_path))}"))
        return _exit_code(result)


# -- start, run --------------------------------------------------------------------------------


def _start_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    _spec_argument(parser)
    _config_arguments(parser)


def _start(args: argparse.Namespace) -> int:
    config = _config(args)
    spec = _spec(args.spec or config.spec)
    store_path = _store_path(args, config)
    settings = _configured_settings(config, store_path)
    # An unknown backend or a version it refuses is an error before any file is made.
    version = _new_version(config.backend, settings, args.version)
    config.strategy.check(spec)  # a plan under which nothing deploys: refused before any file is made
    from deploystate import notify_cli

    notifiers = notify_cli.notifiers_for(config, strict=True)  # an unset variable: refused before any file
    with _journal(store_path, create=True) as store, _open_backends(config.backend, settings) as backends, \
            notify_cli.delivering(notifiers, store, backends.runbook, [version]) as delivery:
        if version in store.rollouts():
            raise DeploystateError(f"rollout {version} already exists in {store_path}; see it with "
                                   f"'deploystate status {version}' or advance it with "
                                   f"'deploystate run {version}'")
        runner = _runner(store, backends, config, strategy=config.strategy, delivery=delivery)
        runner.create(version, spec)  # the backend prepares for it (a simulated clock: the tag's time)
    _out(_shown(f"journal: {store_path}") + f"\nnext: deploystate run {version}\n")
    return EXIT_OK


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    _config_arguments(parser)


def _run(args: argparse.Namespace) -> int:
    from deploystate import report
    from deploystate.runner import Stop

    config = _config(args)
    checkpoint = _checkpoint()
    store_path = _store_path(args, config)
    from deploystate import notify_cli

    notifiers = notify_cli.notifiers_for(config, strict=True)  # an unset variable: refused, nothing written
    with _journal(store_path, create=False) as store, \
            _open_backends(config.backend, _configured_settings(config, store_path)) as backends, \
            notify_cli.delivering(notifiers, store, backends.runbook) as delivery:
        version = _rollout_id(backends, store, args.version)
        view = _read(store, version)
        print(_shown(f"running rollout {version} from record {view.seq} ({report.situation(view)})"),
              flush=True)
        strategy = _recorded_strategy(view, config.strategy, sys.stdout)
        runner = _runner(store, backends, config, strategy=strategy, origin=view.created_at,
                         checkpoint=checkpoint, delivery=delivery)
        result = runner.run(version)
    if result.stop in (Stop.DONE, Stop.SUPERSEDED):
        _out(_shown(result.message) + "\n")
    else:
        stopped = _shown(f"rollout {version} stopped: {report.situation(result.view)}")
        _out(f"{stopped}\n{_next(result.view)}")
    return _exit_code(result)


# -- status, history ---------------------------------------------------------------------------


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", metavar="VERSION", nargs="?", default=None,
                        help="one rollout in detail; without it, a table of every rollout in the journal")
    parser.add_argument("--diagram", action="store_true",
                        help="print the rollout's Mermaid diagram with each step's phase")
    parser.add_argument("--json", action="store_true", help="print JSON")
    _config_arguments(parser)


def _status(args: argparse.Namespace) -> int:
    if args.diagram and args.json:
        raise UsageError("choose --diagram or --json, not both")
    if args.diagram and args.version is None:
        raise UsageError("--diagram draws one rollout; give its VERSION")
    from deploystate import notify_cli, report

    config = _config(args)
    # No backend: the journal alone says which rollouts exist (an unknown one is an error naming it).
    with _journal(_store_path(args, config), create=False, log=False) as store:
        if args.version is None:
            from deploystate.rollout import listing

            # Kept summaries; only rollouts without a current one are replayed.
            rows = listing(store)
            environments = _environment_views(store)
            if args.json:  # a list of rollouts, as scripts have read it
                _out(report.dumps(report.list_data(rows)))
            else:
                _out(report.list_text(rows) + ("\n" + report.environments_text(environments)
                                               if environments else ""))
                _out(notify_cli.status_text(store, config))
            return EXIT_OK
        view = _read(store, args.version)
        environments = _environment_views(store, view)
        delivery_text, delivery_data = (notify_cli.status_text(store, config, view.rollout_id),
                                        notify_cli.status_data(store, config, view.rollout_id))
    if args.diagram:
        from deploystate.diagram import render

        _out(render(view.machine, "mermaid", phases=view.phases))
    elif args.json:
        _out(report.dumps({**report.summary_data(view), **delivery_data}))
    else:
        _out(report.status_text(view) + ("\n" + report.environments_text(environments)
                                         if environments else "") + delivery_text)
    return EXIT_OK


def _environment_views(store: Store, view: RolloutView | None = None) -> list[Any]:
    """The environments of the store (those ``view`` deploys to, if given), as they stand."""
    from deploystate.environments import read_environment

    names = store.environments()
    if view is not None:
        names = [n for n in names if any(n in s.targets for s in view.spec.steps)]
    return [read_environment(store, name) for name in names]


def _history_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the records as one JSON array")
    _config_arguments(parser)


def _history(args: argparse.Namespace) -> int:
    from deploystate import report

    config = _config(args)
    with _journal(_store_path(args, config), create=False, log=False) as store:
        records = store.read(args.version)
    _out(report.dumps(report.history_data(records)) if args.json else report.history_text(records))
    return EXIT_OK


# -- check-store -------------------------------------------------------------------------------


def _check_store_arguments(parser: argparse.ArgumentParser) -> None:
    _config_arguments(parser)


def _check_store(args: argparse.Namespace) -> int:
    config = _config(args)
    path = _store_path(args, config)
    with _journal(path, create=False, log=False) as store:
        problems = store.check()
        if not problems:  # the file is sound: then every rollout must replay
            problems = _replay_problems(store)
    if problems:
        _out(_shown(f"journal {path}: {len(problems)} problem{'s' if len(problems) > 1 else ''} found") + "\n"
             + "".join(_shown(f"  {problem}") + "\n" for problem in problems))
        return EXIT_USER_ERROR
    _out(_shown(f"journal {path}: no problems found") + "\n")
    return EXIT_OK


def _replay_problems(store: Store) -> list[str]:
    from deploystate.rollout import rebuild

    problems = []
    for rollout_id in store.rollouts():
        try:
            rebuild(store.read(rollout_id))
        except DeploystateError as error:
            problems.append(f"rollout {rollout_id} does not replay: {_one_line(str(error))}")
    return problems


# -- operator commands: promote, retry, skip-bake, abort ---------------------------------------


def _operate(args: argparse.Namespace, act: Callable[[Runner, str], RolloutView], done: str) -> int:
    """Load, check, then record one operator event; the store is untouched on any error."""
    from deploystate import report

    config = _config(args)
    store_path = _store_path(args, config)
    from deploystate import notify_cli

    notifiers = notify_cli.notifiers_for(config, strict=False)  # never refuses a person's command
    with _journal(store_path, create=False) as store, \
            _open_backends(config.backend, _configured_settings(config, store_path)) as backends, \
            notify_cli.delivering(notifiers, store, backends.runbook) as delivery:
        version = _rollout_id(backends, store, args.version)
        view = _read(store, version)
        # Operator commands start nothing, so the strategy does not matter here.
        runner = _runner(store, backends, config, strategy=config.strategy, origin=view.created_at,
                         delivery=delivery)
        after = act(runner, version)
    if after.active:
        _out(_shown(f"{done}; rollout {version} is now {report.situation(after)}") + f"\n{_next(after)}")
    else:
        _out(_shown(f"{done}; rollout {version} is {after.status}") + "\n")
    return EXIT_OK


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    _by_argument(parser, required=True)
    parser.add_argument("--reason", metavar="TEXT", default=None, help="why (recorded and announced)")
    parser.add_argument("--override-checks", metavar="REASON", default=None,
                        help="promote although production checks fail: those failing now are overridden "
                             "(recorded with who, why and until when; a lock is never overridden)")
    parser.add_argument("--override-expires", metavar="DURATION", default=None,
                        help="how long the override lasts, e.g. 30m, 2h (default 1h)")
    _config_arguments(parser)


def _promote(args: argparse.Namespace) -> int:
    from deploystate import gate_cli

    return gate_cli.promote(args)


def _override_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    _by_argument(parser, required=True)
    parser.add_argument("--reason", metavar="TEXT", required=True, help="why (recorded and announced)")
    parser.add_argument("--expires", metavar="DURATION", default=None,
                        help="how long the override lasts, e.g. 30m, 2h (default 1h)")
    _config_arguments(parser)


def _override(args: argparse.Namespace) -> int:
    from deploystate import gate_cli

    return gate_cli.override(args)


def _checks_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    _config_arguments(parser)


def _checks(args: argparse.Namespace) -> int:
    from deploystate import gate_cli

    return gate_cli.checks(args)


def _environment_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("environment", metavar="ENV", help="the environment (a name the spec deploys to)")


def _lock_arguments(parser: argparse.ArgumentParser) -> None:
    _environment_argument(parser)
    _by_argument(parser, required=True)
    parser.add_argument("--reason", metavar="TEXT", required=True, help="why (recorded and shown)")
    _config_arguments(parser)


def _lock(args: argparse.Namespace) -> int:
    from deploystate import gate_cli

    return gate_cli.lock(args)


def _unlock_arguments(parser: argparse.ArgumentParser) -> None:
    _environment_argument(parser)
    _by_argument(parser, required=True)
    _config_arguments(parser)


def _unlock(args: argparse.Namespace) -> int:
    from deploystate import gate_cli

    return gate_cli.unlock(args)


def _rollback_arguments(parser: argparse.ArgumentParser) -> None:
    _environment_argument(parser)
    _version_argument(parser)
    _by_argument(parser, required=True)
    parser.add_argument("--reason", metavar="TEXT", required=True, help="why (recorded and announced)")
    _config_arguments(parser)


def _rollback(args: argparse.Namespace) -> int:
    from deploystate import gate_cli

    return gate_cli.rollback(args)


def _retry_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    parser.add_argument("target", metavar="ENV_OR_STEP",
                        help="the failed step, or the environment it deploys")
    parser.add_argument("--cancel-running", action="store_true",
                        help="if the step's last pipeline still runs (a time-out), cancel it first")
    _by_argument(parser, required=False)
    _config_arguments(parser)


def _retry(args: argparse.Namespace) -> int:
    by = _actor(args.by)
    return _operate(args, lambda runner, v: runner.retry(v, args.target, by,
                                                         cancel_running=args.cancel_running),
                    f"retry of {args.target} requested by {by} (a new attempt starts on the next run)")


def _skip_bake_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    _by_argument(parser, required=True)
    parser.add_argument("--reason", metavar="TEXT", required=True, help="why the soak is cut short")
    _config_arguments(parser)


def _skip_bake(args: argparse.Namespace) -> int:
    by = _actor(args.by)
    reason = _text(args.reason, "--reason")
    return _operate(args, lambda runner, v: runner.skip_bake(v, by, reason), f"bake skipped by {by}")


def _abort_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    parser.add_argument("--reason", metavar="TEXT", required=True, help="why (recorded and announced)")
    parser.add_argument("--leave-running", action="store_true",
                        help="leave the rollout's running deployer pipelines alone (default: cancel them)")
    _by_argument(parser, required=False)
    _config_arguments(parser)


def _abort(args: argparse.Namespace) -> int:
    by = _actor(args.by)
    reason = _text(args.reason, "--reason")
    return _operate(args, lambda runner, v: runner.abort(v, by, reason, leave_running=args.leave_running),
                    f"aborted by {by}: {reason}")


def _step_arguments(parser: argparse.ArgumentParser) -> None:
    from deploystate import step_cli

    step_cli.arguments(parser)


def _step(args: argparse.Namespace) -> int:
    from deploystate import step_cli

    return step_cli.run(args)


def _text(value: str, flag: str) -> str:
    if not value.strip():
        raise UsageError(f"{flag} is empty; say why")
    return value.strip()


COMMANDS: tuple[Command, ...] = (
    Command("simulate", "run a whole rollout against the simulated deployer (check mode, virtual clock)",
            _simulate_arguments, _simulate),
    Command("start", "create a rollout (nothing runs until 'run')", _start_arguments, _start),
    Command("run", "advance a rollout until it is done or needs a human", _run_arguments, _run),
    Command("step", "advance one step of a rollout until it ends or needs a person (a CI job per step)",
            _step_arguments, _step),
    Command("status", "one rollout's steps and phases, or a table of every rollout",
            _status_arguments, _status),
    Command("promote", "promote a rollout waiting at the promotion gate", _promote_arguments, _promote),
    Command("retry", "ask for a new attempt of a failed step", _retry_arguments, _retry),
    Command("skip-bake", "end a running bake early (incidents; reason required)",
            _skip_bake_arguments, _skip_bake),
    Command("abort", "abort a rollout", _abort_arguments, _abort),
    Command("notify-test", "send one test message to each configured notifier and say what each answered",
            _notify_test_arguments, _notify_test),
    Command("checks", "run the production checks for a rollout now and print them (changes nothing)",
            _checks_arguments, _checks),
    Command("override", "override the production checks failing now, for a rollout's protected deployment",
            _override_arguments, _override),
    Command("lock", "lock an environment: no new deployment starts there", _lock_arguments, _lock),
    Command("unlock", "unlock an environment", _unlock_arguments, _unlock),
    Command("rollback", "redeploy an older version that already succeeded in an environment, on purpose",
            _rollback_arguments, _rollback),
    Command("history", "every journal record of a rollout", _history_arguments, _history),
    Command("check-store", "check the whole journal (every page and record; opening one makes only "
            "cheap checks); exit 2 with the problems found", _check_store_arguments, _check_store),
    Command("diagram", "print the pipeline as a Mermaid or Graphviz diagram, or refresh diagrams/",
            _diagram_arguments, _diagram),
)
_CORE = frozenset(command.name for command in COMMANDS)


# -- parsing and running -----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Turns argparse's own complaints into a UsageError, so main() reports every error one way."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _VersionAction(argparse.Action):
    """``--version``, which asks the installed metadata only when it is given."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> NoReturn:
        _out(f"{PROG} {_version()}\n")
        parser.exit()


def _installed_commands() -> dict[str, EntryPoint]:
    from deploystate import commands

    return {name: entry for name, entry in commands.installed().items() if name not in _CORE}


def build_parser(arguments_of: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser.

    ``arguments_of`` names the commands whose arguments are declared (None: every core command);
    the others are listed with their help only.  Commands installed by other packages are listed
    (from their metadata: they parse their own arguments) unless ``arguments_of`` names core
    commands only.
    """
    parser = _Parser(prog=PROG, description="Multi-environment rollouts as explicit state machines.")
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="on an error, print its traceback too (for a bug report)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        if arguments_of is None or command.name in arguments_of:
            command.add_arguments(sub)
        # Also after the command; SUPPRESS keeps a --debug given before it (argparse would reset it).
        sub.add_argument(DEBUG_FLAG, action="store_true", default=argparse.SUPPRESS,
                         help="on an error, print its traceback too")
        sub.set_defaults(run=command.run)
    if not (arguments_of and _CORE.issuperset(arguments_of)):
        from deploystate import commands

        for name, entry in _installed_commands().items():
            subparsers.add_parser(name, help=commands.help_line(entry, PROG), add_help=False)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _command_name(argv: Sequence[str]) -> str | None:
    # The top level has only flags without values (--help, --version, --debug): the first word is
    # the command.
    return next((word for word in argv if not word.startswith("-")), None)


def _reason(error: OSError) -> str:
    """``No space left on device (ENOSPC)``: what the system said, and the name scripts look up."""
    name = errno.errorcode.get(error.errno) if error.errno is not None else None
    text = error.strerror or str(error) or type(error).__name__
    return f"{text} ({name})" if name else text


# OSErrors that are about the user's machine rather than a bug of ours, even without a path:
# a full disk or quota, permissions, a read-only file system, no such file, a port in use...
_ENVIRONMENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
    errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.ENFILE, errno.EIO,
    errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
})


def _os_error(error: OSError) -> tuple[int, str]:
    if error.filename is not None:
        where = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
        return EXIT_USER_ERROR, f"error: {where}: {_reason(error)}"
    if error.errno in _ENVIRONMENT_ERRNOS:
        return EXIT_USER_ERROR, f"error: {_reason(error)}"
    return EXIT_INTERNAL, _internal(error)


def _internal(error: BaseException) -> str:
    said = _one_line(str(error))
    return f"internal error: {type(error).__name__}" + (f": {said}" if said else "")


def _silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing to silence
        pass


def _leading_debug(given: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` given before the command, and the arguments without it."""
    count = 0
    while count < len(given) and given[count] == DEBUG_FLAG:
        count += 1
    return count > 0, given[count:]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code instead of exiting."""
    debug, given = _leading_debug(list(sys.argv[1:] if argv is None else argv))
    code: int
    line: str
    failure: BaseException
    try:
        name = _command_name(given)
        if name is not None and name not in _CORE and given[:1] == [name]:
            installed = _installed_commands().get(name)
            if installed is not None:
                from deploystate import commands

                ran = commands.run(installed, given[1:], PROG)
                _flush()
                return ran
        args = build_parser([name] if name is not None else []).parse_args(given)
        debug = debug or bool(getattr(args, "debug", False))
        ran = args.run(args)
        _flush()
        return int(ran)
    except SystemExit as done:  # --help and --version end through argparse's exit()
        return done.code if isinstance(done.code, int) else EXIT_OK
    except BrokenPipeError:
        # The reader went away (`deploystate diagram | head`): not an error worth a traceback.
        # stdout is pointed at devnull so the interpreter's final flush does not fail again.
        _silence_stdout()
        return EXIT_OK
    except DeploystateError as error:
        if isinstance(error, OutputFailed):
            _silence_stdout()
        code, line, failure = EXIT_USER_ERROR, f"error: {_one_line(str(error))}", error
    except KeyboardInterrupt as interrupt:
        code, line, failure = EXIT_INTERRUPTED, "interrupted", interrupt
    except OSError as error:
        (code, line), failure = _os_error(error), error
    except Exception as error:  # a bug: one line unless --debug, never exit 1 ("a human is needed")
        code, line, failure = EXIT_INTERNAL, _internal(error), error
    if debug:
        traceback.print_exception(failure, file=sys.stderr)
    if code == EXIT_INTERNAL:
        line += " (please report it)" if debug else (f" (run again with {DEBUG_FLAG} for the traceback; "
                                                     "please report it)")
    with contextlib.suppress(Exception):
        print(_shown(f"{PROG}: {line}"), file=sys.stderr, flush=True)
    return code

"""The ``deploystate`` command line.

Each subcommand is a :class:`Command`: a function that declares its arguments and a function
that runs it and returns the exit code.  To add one, write those two functions and list the
command in :data:`COMMANDS`.

Exit codes: 0 when the command did what was asked (for ``simulate`` and ``run``: the rollout is
done); 1 when a rollout stopped short (failed, waiting for a human, aborted); 2 for bad input.
Every :class:`~deploystate.errors.DeploystateError` (a user's mistake, or something the user
can act on) ends as one line ``deploystate: error: <message>`` on stderr and exit code 2;
anything else is a bug and keeps its traceback.

Rollout commands read ``deploystate.toml`` (or ``--config``) and the environment first and
refuse to start on a bad setting; ``--store`` overrides the configured journal.  The crash-test
hook ``DEPLOYSTATE_KILL_AT`` is described in :mod:`deploystate.crashpoint`.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import NoReturn, TextIO

import attrs

from deploystate import registry, report
from deploystate.config import Config, load_config
from deploystate.crashpoint import checkpoint_hook
from deploystate.diagram import FORMATS, REGENERATE, committed_diagrams, dot_program, render
from deploystate.errors import DeploystateError
from deploystate.journal import MemoryStore, UnknownRollout
from deploystate.machine import RolloutMachine
from deploystate.notices import LOG, FanOut, LogNotifier, StreamNotifier
from deploystate.ports import Backends, Notice, Store
from deploystate.replay import RolloutView, rebuild
from deploystate.runner import Runner, RunResult, Stop
from deploystate.simulation import (
    SIMULATED,
    catch_up_to_tag,
    deployer_triggers,
    release,
    settings_for_simulate,
    settings_for_store,
    triggers_by_step,
)
from deploystate.spec import BUILTIN_SPECS, Spec, resolve_spec
from deploystate.sqlite_store import SQLiteStore
from deploystate.strategy import Strategy
from deploystate.version import check_version

PROG = "deploystate"
EXIT_OK = 0
EXIT_STOPPED = 1  # a rollout stopped short of done: failed, waiting for a human, or aborted
EXIT_USER_ERROR = 2


class UsageError(DeploystateError):
    """The command line itself is wrong (unknown option, missing argument...)."""


@attrs.frozen
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _version() -> str:
    try:
        return metadata.version("deploystate")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _out(text: str) -> None:
    sys.stdout.write(text)


def _note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


# -- diagram -----------------------------------------------------------------------------------


def _diagram_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="mermaid (stateDiagram-v2, the default) or dot (Graphviz source)")
    parser.add_argument("--spec", metavar="FILE_OR_BUILTIN", default=None,
                        help=f"a built-in spec ({', '.join(BUILTIN_SPECS)}; default seed) or a TOML file")
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
    machine = RolloutMachine(_spec(args.spec))
    _out(render(machine, args.format or "mermaid", detail=args.detail))
    return EXIT_OK


def _spec(ref: str | None) -> Spec:
    # A bare word that is no file is meant as a built-in name: say so, rather than "no such file".
    if ref is not None and ref not in BUILTIN_SPECS and not Path(ref).exists() \
            and not Path(ref).suffix and os.sep not in ref:
        raise DeploystateError(f"no built-in spec {ref!r} and no file of that name; use one of "
                               f"{', '.join(BUILTIN_SPECS)} or the path of a TOML spec")
    return resolve_spec(ref)


def _write_diagrams(directory: Path) -> int:
    files = committed_diagrams()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            path = directory / name
            # Unchanged files are left alone so their timestamps say when the picture changed.
            if path.is_file() and path.read_bytes() == content:
                _out(f"unchanged {path}\n")
                continue
            path.write_bytes(content)
            _out(f"wrote {path}\n")
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
                        help="the journal (a SQLite file); overrides [deploystate] store")


def _version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", metavar="VERSION", help="the auto-deploy tag, e.g. 13.10.202103011220")


def _spec_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", metavar="FILE_OR_BUILTIN", default=None,
                        help=f"a built-in spec ({', '.join(BUILTIN_SPECS)}) or a TOML file; "
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
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (some containers): say so rather than guess
        raise UsageError("cannot tell who you are; give --by WHO") from None


def _store_path(args: argparse.Namespace, config: Config) -> Path:
    return Path(args.store if args.store is not None else config.store)


@contextlib.contextmanager
def _journal(path: Path, *, create: bool) -> Iterator[SQLiteStore]:
    """The journal at ``path``; only commands that start rollouts may create it."""
    if not create and not path.exists():
        raise DeploystateError(f"no journal at {path}; start a rollout first ('deploystate start VERSION') "
                               "or point --store (or [deploystate] store) at an existing journal")
    store = SQLiteStore(path)
    try:
        with _structured_log(path.with_name(path.name + ".log")):
            yield store
    finally:
        store.close()


@contextlib.contextmanager
def _structured_log(path: Path) -> Iterator[None]:
    """Every notice as one JSON line in ``<journal>.log`` (LogNotifier's lines), for log shippers."""
    handler = logging.FileHandler(path, encoding="utf-8")
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


@contextlib.contextmanager
def _backends(name: str, settings: dict[str, object]) -> Iterator[Backends]:
    backends = registry.create(name, settings)
    try:
        yield backends
    finally:
        release(backends)


def _configured_backends(config: Config, store: Path) -> contextlib.AbstractContextManager[Backends]:
    settings = dict(config.settings_for(config.backend))
    if config.backend == SIMULATED:
        settings = settings_for_store(settings, store)
    return _backends(config.backend, settings)


def _read(store: Store, version: str) -> RolloutView:
    return rebuild(store.read(version))


def _recorded_strategy(view: RolloutView, current: Strategy, stream: TextIO) -> Strategy:
    """A rollout keeps the strategy it was created with; settings changed since do not apply to it."""
    recorded = Strategy.from_mapping(view.settings) if view.settings else current
    if recorded != current:
        print(f"  keeps the plan it was created with: {recorded.describe()}\n"
              f"  (the current settings would say: {current.describe()})", file=stream, flush=True)
    return recorded


class _Progress:
    """Live progress lines until their reader goes away (``deploystate simulate | head``).

    Then the rest of the output goes to the null device: the rollout itself carries on, and the
    command still ends with the rollout's exit code.
    """

    def __init__(self, stream: TextIO, origin: float | None) -> None:
        self._lines = StreamNotifier(stream, origin=origin)
        self._stream = stream

    def notify(self, notice: Notice) -> None:
        try:
            self._lines.notify(notice)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)


def _runner(store: Store, backends: Backends, config: Config, *, strategy: Strategy,
            auto_promote: str | None = None, progress: TextIO | None = None,
            origin: float | None = None, checkpoint: Callable[[str], None] | None = None) -> Runner:
    runner_config = attrs.evolve(config.runner_config(auto_promote=auto_promote), strategy=strategy)
    # Human progress lines, and the structured log (a file beside the journal; without one,
    # warnings and errors still reach stderr through logging's last-resort handler).
    notifier = FanOut([_Progress(progress or sys.stdout, origin), LogNotifier()])
    return Runner(store, backends, config=runner_config, notifier=notifier, checkpoint=checkpoint)


def _exit_code(result: RunResult) -> int:
    return EXIT_OK if result.stop is Stop.DONE else EXIT_STOPPED


def _next(view: RolloutView, options: str = "") -> str:
    hints = report.next_steps(view, options)
    return "next:\n" + "".join(f"  {hint}\n" for hint in hints) if hints else ""


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
    parser.add_argument("--no-auto-promote", action="store_true",
                        help="stop at the promotion gate as a real rollout would, instead of promoting")
    parser.add_argument("--individual-deployments", action="store_true",
                        help="make the individual deployments the real path (INDIVIDUAL_DEPLOYMENTS=true)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON summary on stdout (progress goes to stderr)")
    _spec_argument(parser)
    _config_arguments(parser)


def _simulate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    checkpoint = checkpoint_hook()
    version = check_version(args.version)
    spec = _spec(args.spec or config.spec)
    store_path = Path(args.store) if args.store is not None else None
    settings = settings_for_simulate(config.settings_for(SIMULATED), spec=spec, store=store_path,
                                     seed=args.seed, fail=args.fail, retry_fixes=args.retry_fixes,
                                     hang=args.hang)
    # Everything in check mode: a simulation must read as one, never as a REAL deployment.
    strategy = attrs.evolve(config.strategy, check_mode_everywhere=True,
                            individual_deployments=args.individual_deployments
                            or config.strategy.individual_deployments)
    progress = sys.stderr if args.json else sys.stdout
    auto_promote = None if args.no_auto_promote else "simulation"
    with contextlib.ExitStack() as stack:
        store: Store = (stack.enter_context(_journal(store_path, create=True)) if store_path is not None
                        else MemoryStore())
        backends = stack.enter_context(_backends(SIMULATED, settings))
        try:
            existing: RolloutView | None = _read(store, version)
        except UnknownRollout:
            existing = None
        if existing is None:
            catch_up_to_tag(backends, version)
            runner = _runner(store, backends, config, strategy=strategy, auto_promote=auto_promote,
                             progress=progress, checkpoint=checkpoint)
            runner.create(version, spec)
        else:
            # The same command again resumes a rollout (e.g. after its process was killed).
            print(f"resuming rollout {version} from record {existing.seq} "
                  f"({report.situation(existing)})", file=progress, flush=True)
            if args.spec is not None and spec != existing.spec:
                print(f"  keeps the spec it was created with ({existing.spec.name}), not {args.spec}",
                      file=progress, flush=True)
            runner = _runner(store, backends, config,
                             strategy=_recorded_strategy(existing, strategy, progress),
                             auto_promote=auto_promote, progress=progress, origin=existing.created_at,
                             checkpoint=checkpoint)
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
                _out("\n" + _next(view, f" --store {store_path}"))
        return _exit_code(result)


# -- start, run --------------------------------------------------------------------------------


def _start_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    _spec_argument(parser)
    _config_arguments(parser)


def _start(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    version = check_version(args.version)
    spec = _spec(args.spec or config.spec)
    registry.factory(config.backend)  # an unknown backend is an error before any file is made
    store_path = _store_path(args, config)
    with _journal(store_path, create=True) as store, _configured_backends(config, store_path) as backends:
        if version in store.rollouts():
            raise DeploystateError(f"rollout {version} already exists in {store_path}; see it with "
                                   f"'deploystate status {version}' or advance it with "
                                   f"'deploystate run {version}'")
        runner = _runner(store, backends, config, strategy=config.strategy)
        catch_up_to_tag(backends, version)
        runner.create(version, spec)
    _out(f"journal: {store_path}\nnext: deploystate run {version}\n")
    return EXIT_OK


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    _config_arguments(parser)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    checkpoint = checkpoint_hook()
    version = check_version(args.version)
    store_path = _store_path(args, config)
    with _journal(store_path, create=False) as store:
        view = _read(store, version)
        with _configured_backends(config, store_path) as backends:
            print(f"running rollout {version} from record {view.seq} ({report.situation(view)})", flush=True)
            strategy = _recorded_strategy(view, config.strategy, sys.stdout)
            runner = _runner(store, backends, config, strategy=strategy, origin=view.created_at,
                             checkpoint=checkpoint)
            result = runner.run(version)
    if result.stop is Stop.DONE:
        _out(f"{result.message}\n")
    else:
        _out(f"rollout {version} stopped: {report.situation(result.view)}\n{_next(result.view)}")
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
    config = load_config(args.config)
    version = check_version(args.version) if args.version is not None else None
    with _journal(_store_path(args, config), create=False) as store:
        if version is None:
            # One read for all, then replay: fast enough for thousands of rollouts.
            views = sorted((rebuild(records) for records in store.read_all().values()),
                           key=lambda v: (v.created_at, v.rollout_id))
            _out(report.dumps(report.list_data(views)) if args.json else report.list_text(views))
            return EXIT_OK
        view = _read(store, version)
    if args.diagram:
        _out(render(view.machine, "mermaid", phases=view.phases))
    elif args.json:
        _out(report.dumps(report.summary_data(view)))
    else:
        _out(report.status_text(view))
    return EXIT_OK


def _history_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the records as one JSON array")
    _config_arguments(parser)


def _history(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    version = check_version(args.version)
    with _journal(_store_path(args, config), create=False) as store:
        records = store.read(version)
    _out(report.dumps(report.history_data(records)) if args.json else report.history_text(records))
    return EXIT_OK


# -- operator commands: promote, retry, skip-bake, abort ---------------------------------------


def _operate(args: argparse.Namespace, act: Callable[[Runner, str], RolloutView], done: str) -> int:
    """Load, check, then record one operator event; the store is untouched on any error."""
    config = load_config(args.config)
    version = check_version(args.version)
    store_path = _store_path(args, config)
    with _journal(store_path, create=False) as store:
        view = _read(store, version)  # an unknown rollout is reported before any backend is opened
        with _configured_backends(config, store_path) as backends:
            # Operator commands start nothing, so the strategy does not matter here.
            runner = _runner(store, backends, config, strategy=config.strategy, origin=view.created_at)
            after = act(runner, version)
    if after.active:
        _out(f"{done}; rollout {version} is now {report.situation(after)}\n{_next(after)}")
    else:
        _out(f"{done}; rollout {version} is {after.status}\n")
    return EXIT_OK


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    _by_argument(parser, required=True)
    parser.add_argument("--reason", metavar="TEXT", default=None, help="why (recorded and announced)")
    _config_arguments(parser)


def _promote(args: argparse.Namespace) -> int:
    by = _actor(args.by)
    return _operate(args, lambda runner, v: runner.promote(v, by, args.reason), f"promoted by {by}")


def _retry_arguments(parser: argparse.ArgumentParser) -> None:
    _version_argument(parser)
    parser.add_argument("target", metavar="ENV_OR_STEP",
                        help="the failed step, or the environment it deploys")
    _by_argument(parser, required=False)
    _config_arguments(parser)


def _retry(args: argparse.Namespace) -> int:
    by = _actor(args.by)
    return _operate(args, lambda runner, v: runner.retry(v, args.target, by),
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
    _by_argument(parser, required=False)
    _config_arguments(parser)


def _abort(args: argparse.Namespace) -> int:
    by = _actor(args.by)
    reason = _text(args.reason, "--reason")
    return _operate(args, lambda runner, v: runner.abort(v, by, reason), f"aborted by {by}: {reason}")


# -- sim-gitlab --------------------------------------------------------------------------------

SIM_GITLAB = "sim-gitlab"


def _sim_gitlab_arguments(parser: argparse.ArgumentParser) -> None:
    # Only for the command list: main() hands everything after `sim-gitlab` to the stand-in,
    # whose own parser knows its options (`deploystate sim-gitlab --help`).
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the stand-in's options")


def _sim_gitlab(args: argparse.Namespace) -> int:
    return _run_sim_gitlab(args.options)


def _run_sim_gitlab(argv: Sequence[str]) -> int:
    # Imported here: the core knows no adapter, and other commands should not pay for a server.
    try:
        from deploystate_backends.gitlab_standin.__main__ import main as standin_main
    except ImportError as error:
        raise DeploystateError(f"the GitLab stand-in cannot be loaded ({error}); install deploystate "
                               "with its backends") from None
    return standin_main(list(argv), prog=f"{PROG} {SIM_GITLAB}")


def _text(value: str, flag: str) -> str:
    if not value.strip():
        raise UsageError(f"{flag} is empty; say why")
    return value.strip()


COMMANDS: tuple[Command, ...] = (
    Command("simulate", "run a whole rollout against the simulated deployer (check mode, virtual clock)",
            _simulate_arguments, _simulate),
    Command("start", "create a rollout (nothing runs until 'run')", _start_arguments, _start),
    Command("run", "advance a rollout until it is done or needs a human", _run_arguments, _run),
    Command("status", "one rollout's steps and phases, or a table of every rollout",
            _status_arguments, _status),
    Command("promote", "promote a rollout waiting at the promotion gate", _promote_arguments, _promote),
    Command("retry", "ask for a new attempt of a failed step", _retry_arguments, _retry),
    Command("skip-bake", "end a running bake early (incidents; reason required)",
            _skip_bake_arguments, _skip_bake),
    Command("abort", "abort a rollout", _abort_arguments, _abort),
    Command("history", "every journal record of a rollout", _history_arguments, _history),
    Command("diagram", "print the pipeline as a Mermaid or Graphviz diagram, or refresh diagrams/",
            _diagram_arguments, _diagram),
    Command(SIM_GITLAB, "serve a GitLab API stand-in on loopback to rehearse rollouts against "
            "(see `deploystate sim-gitlab --help`)", _sim_gitlab_arguments, _sim_gitlab),
)


# -- parsing and running -----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Turns argparse's own complaints into a UsageError, so main() reports every error one way."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Multi-environment rollouts as explicit state machines.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code instead of exiting."""
    try:
        given = list(sys.argv[1:] if argv is None else argv)
        if given[:1] == [SIM_GITLAB]:
            return _run_sim_gitlab(given[1:])
        args = build_parser().parse_args(given)
        code: int = args.run(args)
        sys.stdout.flush()
        return code
    except DeploystateError as error:
        print(f"{PROG}: error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except SystemExit as done:  # --help and --version end through argparse's exit()
        return done.code if isinstance(done.code, int) else EXIT_OK
    except BrokenPipeError:
        # The reader went away (`deploystate diagram | head`): not an error worth a traceback.
        # stdout is pointed at devnull so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK

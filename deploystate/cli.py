"""The ``deploystate`` command line.

Each subcommand is a :class:`Command`: a function that declares its arguments and a function
that runs it and returns the exit code.  To add one, write those two functions and list the
command in :data:`COMMANDS`.

Every :class:`~deploystate.errors.DeploystateError` (a user's mistake, or something the user
can act on) ends as one line ``deploystate: error: <message>`` on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import NoReturn

import attrs

from deploystate.diagram import FORMATS, REGENERATE, committed_diagrams, dot_program, render
from deploystate.errors import DeploystateError
from deploystate.machine import RolloutMachine
from deploystate.spec import BUILTIN_SPECS, Spec, resolve_spec

PROG = "deploystate"
EXIT_OK = 0
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


COMMANDS: tuple[Command, ...] = (
    Command("diagram", "print the pipeline as a Mermaid or Graphviz diagram, or refresh diagrams/",
            _diagram_arguments, _diagram),
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
        args = build_parser().parse_args(argv)
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

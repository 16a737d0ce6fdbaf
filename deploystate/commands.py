"""Commands other packages add to the command line: the ``deploystate.commands`` entry-point group.

A package declares, in its pyproject::

    [project.entry-points."deploystate.commands"]
    my-command = "my_package.command:main"

The entry point's name is the command (``deploystate my-command ...``).  It loads a function
``main(argv: list[str], prog: str) -> int``: ``argv`` is everything after the command's name,
``prog`` the name to show in usage lines (``deploystate my-command``).  The function parses its
own options (so ``deploystate my-command --help`` is its own help) and returns the exit code
(None counts as 0).
A :class:`~deploystate.errors.DeploystateError` it raises is reported like the core's.

``deploystate --help`` lists these commands from the installed packages' metadata alone: nothing
of theirs is imported until the command runs, so a command costs the others nothing.  Its help
line is therefore generic (which package provides it and where its own help is).  A name the core
already uses stays the core's.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points

from deploystate.errors import DeploystateError

GROUP = "deploystate.commands"
CORE_DISTRIBUTION = "deploystate"


def installed() -> dict[str, EntryPoint]:
    """Every installed command by name, sorted; of two with one name, the first found."""
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=GROUP):
        found.setdefault(entry_point.name, entry_point)
    return dict(sorted(found.items()))


def help_line(entry_point: EntryPoint, prog: str) -> str:
    """The command's line in ``--help``, from its metadata (its module is not imported)."""
    dist = entry_point.dist.name if entry_point.dist is not None else None
    source = f" from {dist}" if dist and dist != CORE_DISTRIBUTION else ""
    return f"an installed command{source}; see `{prog} {entry_point.name} --help`"


def run(entry_point: EntryPoint, argv: Sequence[str], prog: str) -> int:
    """Load the command and run it with ``argv``; returns its exit code."""
    try:
        main = entry_point.load()
    except ImportError as error:
        raise DeploystateError(f"command {entry_point.name!r} cannot be loaded ({error}); reinstall the "
                               f"package that provides it ({entry_point.value})") from None
    if not callable(main):
        raise DeploystateError(f"command {entry_point.name!r}: entry point {entry_point.value} is not "
                               "a function")
    code = main(list(argv), f"{prog} {entry_point.name}")
    if code is None:  # as for sys.exit(): nothing to say is success
        return 0
    if not isinstance(code, int):
        raise DeploystateError(f"command {entry_point.name!r} returned {code!r}, not an exit code")
    return code

"""``deploystate sim-gitlab``: the GitLab stand-in as a command of deploystate's command line.

Registered in the ``deploystate.commands`` entry-point group (see :mod:`deploystate.commands`), so
the core lists it without importing it and loads it only when it runs.  The options are the
stand-in's own (``deploystate sim-gitlab --help``; the same as ``python -m
deploystate_backends.gitlab_standin``).
"""

from __future__ import annotations

from deploystate_backends.gitlab_standin.__main__ import main as standin_main


def main(argv: list[str], prog: str) -> int:
    """Serve a GitLab API stand-in on loopback to rehearse rollouts against."""
    return standin_main(argv, prog=prog)

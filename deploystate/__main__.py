"""``python -m deploystate``: the same command line as the ``deploystate`` script."""

from deploystate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m deploystate_backends.simulated WORLD [--json]``: what a simulated world was asked."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from deploystate.errors import DeploystateError
from deploystate_backends.simulated.world import World


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploystate_backends.simulated",
                                     description="Summarise a simulated world: triggers per environment, "
                                                 "deployments and their statuses now, the virtual time.")
    parser.add_argument("world", help="the world file (the simulated backend's 'world' setting)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        with World.open(args.world, create=False) as world:
            summary = world.summary()
    except DeploystateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    print(f"world {summary['world']} (seed {summary['seed']}), virtual time {summary['now_utc']}")
    print(f"{summary['triggers']} triggers, {summary['real_requests']} without check mode")
    for environment, count in summary["per_environment"].items():
        print(f"  {environment}: triggered {count}x")
    for d in summary["deployments"]:
        print(f"  #{d['id']} {','.join(d['environments'])} {d['version']} ref={d['ref']} "
              f"check_mode={d['check_mode']} key={d['key']}: {d['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a GitLab stand-in by hand for a rehearsal (also ``deploystate sim-gitlab``).

    python -m deploystate_backends.gitlab_standin --port 8929 --speed 60 \\
        --script gprd=fail-then-succeed --fault error=0.05 --auto-deploy 13.10.202103011220

``--auto-deploy VERSION`` seeds the CNG and Omnibus package builds of that auto-deploy version,
on their package tags (``VERSION+<sha12>`` and ``VERSION+<sha12>.<sha12>``); ``--package-tag``
seeds pipelines on a ref exactly as given.  With ``--speed`` other than 1 the stand-in's time is
``anchor + (wall clock - anchor) * speed``; a deploystate rehearsal given the same speed and
anchor (``clock_speed``, ``clock_anchor``) shares that time.

Access token (PRIVATE-TOKEN): ``standin-token`` unless ``--token`` says otherwise.  Trigger
tokens: ``<project>-trigger-token`` (deployer-trigger-token, cng-trigger-token,
omnibus-trigger-token, release-tools-trigger-token) unless ``--trigger-token`` overrides them.
Tokens are never printed or logged.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

import attrs

from deploystate_backends.gitlab_standin.clock import AcceleratedClock, Clock, RealClock
from deploystate_backends.gitlab_standin.faults import FaultKind, FaultPlan
from deploystate_backends.gitlab_standin.issues import PRODUCTION
from deploystate_backends.gitlab_standin.server import Standin, serve
from deploystate_backends.gitlab_standin.specs import (
    CNG,
    DEFAULT_PROJECTS,
    DEPLOYER,
    OMNIBUS,
    Script,
)
from deploystate_backends.gitlab_standin.tags import package_tags, seed_package_builds
from deploystate_backends.gitlab_standin.world import World

_OUTCOMES = {
    "succeed": Script.succeed(),
    "fail": Script.fail(),
    "fail-then-succeed": Script.fail_then_succeed(),
    "hang": Script.hang(),
}


def parse_outcome(text: str) -> Script:
    """A named outcome, or statuses per attempt separated by commas (``failed,success``)."""
    if text in _OUTCOMES:
        return _OUTCOMES[text]
    return Script(tuple(s.strip() for s in text.split(",")))


def _pair(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"{what} must look like NAME=VALUE, got {text!r}")
    return key, value


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port; give 0 to 65535 (0 picks a free one)")
    return port


def _number(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:  # nan fails this too
            raise argparse.ArgumentTypeError(f"{text} is not between {low:g} and {high:g}")
        return value
    return parse


def build_parser(prog: str = "python -m deploystate_backends.gitlab_standin") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A GitLab API stand-in for rehearsals: pipelines progress on their own.",
        epilog="Access token: standin-token. Trigger tokens: deployer-trigger-token, cng-trigger-token, "
        "omnibus-trigger-token, release-tools-trigger-token (override with the options above).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8929, help="port (default 8929; 0 picks a free one)")
    parser.add_argument("--speed", type=_number(0.01, 10_000), default=1.0,
                        help="clock speed: 60 turns an hour-long deployment into a minute (default 1)")
    parser.add_argument("--anchor", type=_number(0, 32_503_680_000), default=None, metavar="EPOCH",
                        help="with --speed: the wall-clock moment (Unix seconds) where stand-in time equals "
                        "wall-clock time (default: now)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random faults (default 0)")
    parser.add_argument("--token", action="append", default=[],
                        help="accepted PRIVATE-TOKEN (repeatable; default standin-token)")
    parser.add_argument("--trigger-token", action="append", default=[], metavar="PROJECT=TOKEN",
                        help="trigger token for a project (deployer, cng, omnibus, ...), replacing its own")
    parser.add_argument("--script", action="append", default=[], metavar="ENV=OUTCOME",
                        help="deployer outcome for DEPLOY_ENVIRONMENT ENV: succeed, fail, fail-then-succeed, "
                        "hang, or statuses per attempt like failed,success or waiting_for_callback")
    parser.add_argument("--deploy-seconds", type=_number(0, 30 * 86400), default=None,
                        help="how long the deployer's deploy job runs, in clock seconds (default 3600)")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=RATE[@ROUTE]",
                        help="random fault: error, rate_limit, slow, drop or lost_response, with a "
                        "probability, optionally on one route (trigger, pipeline, pipelines, ...)")
    parser.add_argument("--auto-deploy", action="append", default=[], metavar="VERSION",
                        help="seed CNG and Omnibus pipelines on the package tags of auto-deploy VERSION "
                        "(they appear after --package-delay)")
    parser.add_argument("--package-tag", action="append", default=[], metavar="TAG",
                        help="seed CNG and Omnibus pipelines for TAG (they appear after --package-delay)")
    parser.add_argument("--package-delay", type=_number(0, 30 * 86400), default=0.0,
                        help="clock seconds before seeded package pipelines appear (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def build(args: argparse.Namespace) -> tuple[World, FaultPlan, frozenset[str]]:
    if args.speed <= 0:
        raise ValueError(f"--speed must be positive, got {args.speed}")
    if args.anchor is None:
        args.anchor = float(int(time.time()))
    # Anchored, so that another process computing anchor + (wall - anchor) * speed agrees.
    clock: Clock = RealClock() if args.speed == 1 else AcceleratedClock(
        args.speed, start=args.anchor + (time.time() - args.anchor) * args.speed)
    overrides = dict(_pair(t, "--trigger-token") for t in args.trigger_token)
    projects = []
    for spec in DEFAULT_PROJECTS:
        changed = spec
        for key, token in overrides.items():
            if key in (spec.name.casefold(), spec.path.casefold(), str(spec.id), spec.name):
                changed = attrs.evolve(changed, trigger_tokens=(token,))
        if spec is DEPLOYER and args.deploy_seconds is not None:
            changed = attrs.evolve(changed, timing=attrs.evolve(spec.timing, running_s=args.deploy_seconds))
        projects.append(changed)
    # The production tracker too, so a rehearsal's active_incidents and change_requests checks find it
    # (empty: they pass; tests add issues to it).
    world = World([*projects, PRODUCTION], clock=clock)
    for item in args.script:
        env, outcome = _pair(item, "--script")
        world.script(DEPLOYER.path, env, outcome=parse_outcome(outcome))
    faults = FaultPlan(seed=args.seed)
    for item in args.fault:
        kind, rate_text = _pair(item, "--fault")
        rate, _, route = rate_text.partition("@")
        probability = float(rate)
        if not 0 <= probability <= 1:
            raise ValueError(f"--fault {item}: the rate must be a probability from 0 to 1")
        faults.rate(probability, FaultKind(kind), route=route or None)
    for version in args.auto_deploy:
        seed_package_builds(world, version, after_s=args.package_delay)
    for tag in args.package_tag:
        for package in (CNG, OMNIBUS):
            world.seed_pipeline(package.path, tag, after_s=args.package_delay)
    tokens = frozenset(args.token) if args.token else frozenset({"standin-token"})
    return world, faults, tokens


def _announcer(args: argparse.Namespace) -> Callable[[Standin], None]:
    def announce(standin: Standin) -> None:
        lines = [f"GitLab stand-in on {standin.url} (API {standin.api_url}); Ctrl-C stops it."]
        lines += [f"  project {spec.id:>3}  {spec.path}" for spec in standin.world.projects()]
        for version in args.auto_deploy:
            cng, omnibus = package_tags(version)
            lines.append(f"  {version}: package tags {cng} (CNG), {omnibus} (Omnibus)")
        lines += ["For deploystate.toml:", "  [backends.gitlab]", f'  url = "{standin.url}"',
                  f'  deployer_project = "{DEPLOYER.path}"', f'  cng_project = "{CNG.path}"',
                  f'  omnibus_project = "{OMNIBUS.path}"']
        if args.speed != 1:
            lines += [f"  clock_speed = {args.speed}", f"  clock_anchor = {args.anchor}"]
        if args.token or args.trigger_token:
            lines.append("Tokens: the ones given with --token and --trigger-token (never printed)")
        else:  # the stand-in's public defaults, not secrets
            lines.append("Tokens: export GITLAB_API_TOKEN=standin-token "
                         "DEPLOYER_TRIGGER_TOKEN=deployer-trigger-token")
        print("\n".join(lines), flush=True)
    return announce


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = (build_parser(prog) if prog else build_parser()).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        world, faults, tokens = build(args)
    except (ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops a rehearsal as cleanly as Ctrl-C
    try:
        serve(world, host=args.host, port=args.port, faults=faults, tokens=tokens, ready=_announcer(args))
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror or error}; choose another "
              "--port (or --host)", file=sys.stderr)
        return 2
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

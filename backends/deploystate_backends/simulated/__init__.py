"""A simulated deployer and package builds, in check mode on a virtual clock.

``create(settings)`` is the backend factory (entry point group ``deploystate.backends``).  The
world it simulates is a pure function of its scenario, its seed and its record, so a run is
reproducible; given a ``world`` file it survives the process that uses it being killed.
"""

from __future__ import annotations

from collections.abc import Mapping

from deploystate.ports import Backends
from deploystate_backends.autodeploy import RUNBOOK, check_version, tag_time
from deploystate_backends.simulated.adapters import SimulatedDeployer, SimulatedPackages
from deploystate_backends.simulated.checks import CHECK_NAMES, SimulatedCheck, simulated_checks
from deploystate_backends.simulated.clock import DEFAULT_START, VirtualClock
from deploystate_backends.simulated.errors import SettingsError, UnknownDeployment, UnknownPackage, WorldError
from deploystate_backends.simulated.record import ActRecord, TriggerRecord
from deploystate_backends.simulated.scenario import Behaviour, Scenario, parse_settings
from deploystate_backends.simulated.timeline import outcome_of
from deploystate_backends.simulated.world import World

__all__ = [
    "CHECK_NAMES",
    "DEFAULT_START",
    "ActRecord",
    "Behaviour",
    "Scenario",
    "SettingsError",
    "SimulatedCheck",
    "SimulatedDeployer",
    "SimulatedPackages",
    "TriggerRecord",
    "UnknownDeployment",
    "UnknownPackage",
    "VirtualClock",
    "World",
    "WorldError",
    "backends_for",
    "create",
    "outcome_of",
]


def create(settings: Mapping[str, object]) -> Backends:
    """Backends over a simulated world; ``backends.deployer.world`` is the world's record.

    Settings (all optional): ``world`` (file path; in memory without), ``seed``, ``start``,
    ``durations`` (environment -> seconds), ``default_duration_s``, ``jitter``, ``fail``,
    ``retry_fixes``, ``hang``, ``unknown`` (environment lists), ``unknown_s``,
    ``retry_after_s``, ``retry_run_s``, ``build_s``, ``build_appear_s``, ``fail_builds``,
    ``failing_checks`` (production checks that fail: active_incidents, change_requests,
    deploy_freeze, deployment_health, canary_up).
    """
    scenario, path = parse_settings(settings)
    return backends_for(World.open(path, scenario))


def backends_for(world: World) -> Backends:
    """Backends over ``world``; closing them closes the world (its file, if it has one).

    Versions must be auto-deploy tags, as for the system rehearsed; creating a rollout moves the
    virtual clock to when its version was tagged (never back), so its package builds start then.
    It offers the five production checks, simulated (``failing_checks`` of the world's scenario fail).
    """
    where = f"world {world.path}" if world.path is not None else "world in memory"

    def prepare(version: str) -> None:
        at = tag_time(version)
        if at is not None:
            world.clock.advance_to(at)

    return Backends(
        deployer=SimulatedDeployer(world),
        packages=SimulatedPackages(world),
        clock=world.clock,
        description=(f"simulated deployer and package builds on a virtual clock (seed {world.scenario.seed}, "
                     f"{where}); nothing is ever deployed"),
        check_version=check_version,
        prepare=prepare,
        # The world's file name, not its folder: a journal copied with its world stays drivable.
        deploys=False,
        identity=f"simulated world {world.path.name if world.path is not None else 'in memory'}",
        runbook=RUNBOOK,
        closer=world.close,
        checks=simulated_checks(world),
    )

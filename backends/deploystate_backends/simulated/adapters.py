"""The protocol faces of a simulated world: a deployer and a package watcher.

Both share one :class:`World` (reachable as ``.world``), so a test holding the backends can read
the deployer's own record of what it was asked.  Both also answer ``next_change_at`` for the
whole world, so a runner that asks either one wakes exactly when anything changes.
"""

from __future__ import annotations

from deploystate.ports import Deployment, PackageBuild, TriggerRequest
from deploystate_backends.simulated.timeline import CANCEL, RETRY
from deploystate_backends.simulated.world import World


class SimulatedDeployer:
    """A deployer that deploys nothing; every status follows from the scenario and the clock."""

    def __init__(self, world: World) -> None:
        self.world = world

    def trigger(self, request: TriggerRequest) -> Deployment:
        return self.world.trigger(request)

    def status(self, deployment_id: str) -> Deployment:
        return self.world.deployment(deployment_id)

    def find(self, key: str) -> Deployment | None:
        return self.world.find(key)

    def retry(self, deployment_id: str) -> Deployment:
        return self.world.act(deployment_id, RETRY)

    def cancel(self, deployment_id: str) -> Deployment:
        return self.world.act(deployment_id, CANCEL)

    def next_change_at(self) -> float | None:
        return self.world.next_change_at()


class SimulatedPackages:
    """CNG and Omnibus builds that appear, run and finish on the virtual clock."""

    def __init__(self, world: World) -> None:
        self.world = world

    def status(self, package: str, version: str) -> PackageBuild:
        return self.world.build(package, version)

    def next_change_at(self) -> float | None:
        return self.world.next_change_at()

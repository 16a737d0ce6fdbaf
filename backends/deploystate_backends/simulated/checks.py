"""Simulated production checks: the five of the real system, failing as the scenario says.

The simulated backend offers them as ``Backends.checks``, so ``simulate`` and every later command
on the same world rehearse a refused promotion: the scenario's ``failing_checks`` (kept in the
world's record with the rest of the scenario) fail, the others pass.  Details and evidence read
like the real checks' (``deploystate_backends.gitlab.checks``, ``deploystate_backends.prometheus``),
with made-up issues and series, and each says it is simulated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

import attrs

from deploystate.ports import CheckContext, CheckResult, Verdict
from deploystate_backends.check_settings import result
from deploystate_backends.simulated.scenario import CHECK_NAMES
from deploystate_backends.simulated.world import WEB, World

__all__ = ["CHECK_NAMES", "SimulatedCheck", "simulated_checks"]

TRACKER = "gitlab-com/gl-infra/production"
DEPLOYER = "gitlab-com/gl-infra/deployer"
CANARY_QUERY = 'count(haproxy_backend_up{env="gprd", backend=~"canary_.*"} == 0)'
FREEZE_HOURS = 6  # a simulated freeze is always on for this long from the moment asked


def _r(name: str, verdict: Verdict, detail: str, evidence: tuple[str, ...] = ()) -> CheckResult:
    return result(name, verdict, f"{detail} (simulated)", evidence)


def _utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%a %Y-%m-%d %H:%M UTC")


def _incident(name: str, context: CheckContext) -> CheckResult:
    url = f"{WEB}/{TRACKER}/-/issues/1"
    title = "Simulated incident: elevated error rates on the API"
    return _r(name, Verdict.FAILED, f"1 active incident (severity::1): {title} ({url})", (f"{url} {title}",))


def _change(name: str, context: CheckContext) -> CheckResult:
    url = f"{WEB}/{TRACKER}/-/issues/2"
    title = "Simulated change: database failover rehearsal"
    return _r(name, Verdict.FAILED, f"1 change request in progress (C2): {title} ({url})",
              (f"{url} {title}",))


def _freeze(name: str, context: CheckContext) -> CheckResult:
    until = context.now + FREEZE_HOURS * 3600
    return _r(name, Verdict.FAILED,
              f"deploy freeze of {DEPLOYER} ('0 23 * * 5' to '0 8 * * 1', UTC): frozen until {_utc(until)} "
              f"(in {FREEZE_HOURS}h 00m)",
              (f"freeze period 1: '0 23 * * 5' to '0 8 * * 1' (UTC), since {_utc(context.now)}, until "
               f"{_utc(until)}", f"{WEB}/{DEPLOYER}/-/settings/ci_cd#js-deploy-freeze-settings"))


def _health(name: str, context: CheckContext) -> CheckResult:
    return _r(name, Verdict.FAILED, "1 of 4 services unhealthy: cny-web (0)",
              ('cny-web: gitlab_deployment_health:service{env="gprd", stage="cny", type="web"} = 0',))


def _canary(name: str, context: CheckContext) -> CheckResult:
    return _r(name, Verdict.FAILED, f"2 canary backends down ({CANARY_QUERY} = 2)",
              (f"{CANARY_QUERY} {{}} = 2",))


_FAILURES: Mapping[str, Callable[[str, CheckContext], CheckResult]] = {
    "active_incidents": _incident, "change_requests": _change, "deploy_freeze": _freeze,
    "deployment_health": _health, "canary_up": _canary,
}
_PASSES: Mapping[str, str] = {
    "active_incidents": f"no open issue in {TRACKER} labelled Incident::Active and severity::1 or "
                        "severity::2",
    "change_requests": f"no open issue in {TRACKER} labelled change::in-progress and C1 or C2",
    "deploy_freeze": f"no deploy freeze of {DEPLOYER} is on (1 freeze period)",
    "deployment_health": "all 4 services healthy (cny-api, cny-web, main-api, main-web)",
    "canary_up": "no canary backend is down",
}
assert set(_FAILURES) == set(_PASSES) == set(CHECK_NAMES)


@attrs.frozen
class SimulatedCheck:
    """One simulated check of ``world``: fails when the world's scenario names it in ``failing_checks``."""

    name: str
    world: World = attrs.field(repr=False)
    rollback: bool = False

    def run(self, context: CheckContext) -> CheckResult:
        if self.name in self.world.scenario.failing_checks:
            return _FAILURES[self.name](self.name, context)
        return _r(self.name, Verdict.PASSED, _PASSES[self.name])


def simulated_checks(world: World) -> dict[str, SimulatedCheck]:
    """All five checks of ``world``, by name."""
    return {name: SimulatedCheck(name, world) for name in CHECK_NAMES}

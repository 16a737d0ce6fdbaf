"""Production checks read from Prometheus (instant queries over its HTTP API).

``deployment_health`` and ``canary_up`` are entry points of the ``deploystate.checks`` group; see
:mod:`deploystate_backends.prometheus.checks`.  Only the standard library is used (urllib).
"""

from deploystate_backends.prometheus.checks import (
    CanaryUpCheck,
    DeploymentHealthCheck,
    PrometheusError,
    canary_up,
    deployment_health,
    instant_query,
)

__all__ = ["CanaryUpCheck", "DeploymentHealthCheck", "PrometheusError", "canary_up", "deployment_health",
           "instant_query"]

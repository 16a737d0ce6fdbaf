"""Production checks read from Prometheus: deployment health and canary up.

Each is an instant query, ``GET {url}/api/v1/query?query=...``, evaluated at Prometheus' own "now"
(never at the check's ``now``: a rehearsal's or simulation's clock is not Prometheus' time), as
release-tools' ``Promotion`` checks did:

- ``deployment_health``: ``gitlab_deployment_health:service{env="gprd", type!="registry"}``; every
  series must have the value 1 (a service's stage/type is healthy), the others are named by their
  ``stage``/``type`` labels.  No series at all is an ERROR: there is nothing to judge health by
  (release-tools counted no data as unhealthy too: ``!ok_count.zero? && ok_count == services.size``).
- ``canary_up``: ``count(haproxy_backend_up{env="gprd", backend=~"canary_.*"} == 0)``; an empty
  result means no canary backend is down; a value N > 0 means N are down.  (Like release-tools: an
  empty answer cannot tell "none down" from "no such metric"; point ``query`` elsewhere to be
  stricter.)

Settings (``[checks.NAME]``): ``url`` (required: Prometheus or a Thanos query front end),
``query``, ``timeout_s`` (default 10), ``bearer_token_env`` (optional: the environment variable
holding a bearer token; never a setting itself), ``rollback`` (default false).

A check never raises for an outside failure: a closed port, a time-out, an HTTP error, an answer
that is not Prometheus JSON, ``{"status": "error", ...}``, a result that is not an instant vector:
each is ``Verdict.ERROR`` with one line saying what went wrong.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from deploystate.ports import CheckContext, CheckResult, Verdict
from deploystate_backends.check_settings import (
    REQUIRED,
    CheckSettingsError,
    Field,
    env_name,
    http_url,
    one_line,
    read_settings,
    result,
    seconds,
    text,
)

DEPLOYMENT_HEALTH_QUERY = 'gitlab_deployment_health:service{env="gprd", type!="registry"}'
CANARY_UP_QUERY = 'count(haproxy_backend_up{env="gprd", backend=~"canary_.*"} == 0)'
# Enough to read any instant vector a check asks for; more is not a Prometheus answer we expect.
_MAX_ANSWER = 16 * 1024 * 1024


class PrometheusError(Exception):
    """Prometheus could not be asked, or its answer could not be used; the message is one line."""


@attrs.frozen
class Sample:
    labels: Mapping[str, str]
    value: float

    def describe(self) -> str:
        shown = ", ".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()) if k != "__name__")
        return f"{{{shown}}} = {_number(self.value)}"


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value.is_integer() else str(value)


@attrs.frozen
class Prometheus:
    """Where a check asks: the base url, a time-out, and the bearer token if one is needed."""

    url: str
    timeout_s: float
    token: str | None = attrs.field(default=None, repr=False)

    def graph_link(self, query: str) -> str:
        # Prometheus' (and Thanos') expression browser, for the evidence: people see what we saw.
        return f"{self.url}/graph?{urllib.parse.urlencode({'g0.expr': query, 'g0.tab': '1'})}"


def instant_query(prometheus: Prometheus, query: str) -> list[Sample]:
    """The instant vector ``query`` gives now; PrometheusError (one line, no token) otherwise."""
    address = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    request = urllib.request.Request(address, headers={"Accept": "application/json"})
    if prometheus.token is not None:
        request.add_header("Authorization", f"Bearer {prometheus.token}")
    where = f"Prometheus at {prometheus.url}"
    try:
        with urllib.request.urlopen(request, timeout=prometheus.timeout_s) as answer:
            status, body = answer.status, answer.read(_MAX_ANSWER + 1)
    except urllib.error.HTTPError as error:
        # Prometheus answers a bad query with 400 and an error body; a proxy with its own page.
        status, body = error.code, error.read(_MAX_ANSWER + 1)
        error.close()
        raise PrometheusError(f"{where} answered HTTP {status}{_said(body)}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            raise PrometheusError(f"{where} did not answer within {prometheus.timeout_s:g} s") from None
        what = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise PrometheusError(f"{where} could not be reached ({one_line(what, 100)})") from None
    except TimeoutError:
        raise PrometheusError(f"{where} did not answer within {prometheus.timeout_s:g} s") from None
    except (OSError, ValueError) as error:  # a connection reset mid-answer, a malformed url
        raise PrometheusError(f"{where} could not be asked ({type(error).__name__})") from None
    if len(body) > _MAX_ANSWER:
        raise PrometheusError(f"{where} answered more than {_MAX_ANSWER // (1024 * 1024)} MiB")
    data = _json(body, where, status)
    if data.get("status") != "success":
        raise PrometheusError(f"{where} answered status {data.get('status')!r}{_said(body)}")
    result_data = data.get("data")
    if not isinstance(result_data, Mapping) or result_data.get("resultType") != "vector":
        kind = result_data.get("resultType") if isinstance(result_data, Mapping) else None
        raise PrometheusError(f"{where} answered a {kind or 'missing'} result, not an instant vector; the "
                              "query must give one")
    return [_sample(item, where) for item in result_data.get("result") or ()]


def _json(body: bytes, where: str, status: int) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PrometheusError(f"{where} answered HTTP {status} with something that is not JSON") from None
    if not isinstance(data, Mapping):
        raise PrometheusError(f"{where} answered JSON that is not an object")
    return data


def _said(body: bytes) -> str:
    """Prometheus' own words from an error body (``errorType: error``), if it has them."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, Mapping) or not (data.get("error") or data.get("errorType")):
        return ""
    kind, error = data.get("errorType"), data.get("error")
    return f" ({one_line(f'{kind}: {error}' if kind else error, 200)})"


def _sample(item: object, where: str) -> Sample:
    if not isinstance(item, Mapping):
        raise PrometheusError(f"{where} answered a vector whose samples are not objects")
    labels, value = item.get("metric"), item.get("value")
    if not isinstance(labels, Mapping) or not isinstance(value, list | tuple) or len(value) != 2:
        raise PrometheusError(f"{where} answered a sample without metric and [time, value]")
    try:
        number = float(value[1])  # "1", "0", "NaN", "+Inf": Prometheus sends values as strings
    except (TypeError, ValueError):
        raise PrometheusError(f"{where} answered a sample value {one_line(value[1], 40)!r} that is not a "
                              "number") from None
    return Sample({str(k): str(v) for k, v in labels.items()}, number)


def _service(sample: Sample) -> str:
    # release-tools named a service "<stage>-<type>" (cny-web, main-api).
    stage, kind = sample.labels.get("stage"), sample.labels.get("type")
    if stage and kind:
        return f"{stage}-{kind}"
    return kind or stage or sample.describe()


@attrs.frozen
class DeploymentHealthCheck:
    name: str
    rollback: bool
    query: str
    prometheus: Prometheus

    def run(self, context: CheckContext) -> CheckResult:
        try:
            samples = instant_query(self.prometheus, self.query)
        except PrometheusError as error:
            return result(self.name, Verdict.ERROR, f"{self.name}: {error}")
        link = self.prometheus.graph_link(self.query)
        if not samples:
            return result(self.name, Verdict.ERROR, f"{self.name}: no series for {self.query} at "
                          f"{self.prometheus.url}: no data to judge the services' health by", (link,))
        failing = sorted((s for s in samples if s.value != 1), key=_service)
        if not failing:
            return result(self.name, Verdict.PASSED, f"all {len(samples)} services healthy "
                          f"({', '.join(sorted(_service(s) for s in samples))})")
        names = ", ".join(f"{_service(s)} ({_number(s.value)})" for s in failing)
        return result(self.name, Verdict.FAILED, one_line(
            f"{len(failing)} of {len(samples)} services unhealthy: {names}", 300),
            (*(f"{_service(s)}: {s.labels.get('__name__', '')}{s.describe()}" for s in failing), link))


@attrs.frozen
class CanaryUpCheck:
    name: str
    rollback: bool
    query: str
    prometheus: Prometheus

    def run(self, context: CheckContext) -> CheckResult:
        try:
            samples = instant_query(self.prometheus, self.query)
        except PrometheusError as error:
            return result(self.name, Verdict.ERROR, f"{self.name}: {error}")
        down = [s for s in samples if s.value != 0]
        if not down:
            # count(... == 0) of nothing is nothing: no canary backend is down.
            return result(self.name, Verdict.PASSED, "no canary backend is down")
        link = self.prometheus.graph_link(self.query)
        if any(not math.isfinite(s.value) or s.value < 0 for s in down):
            values = ", ".join(_number(s.value) for s in down)
            return result(self.name, Verdict.ERROR,
                          f"{self.name}: {self.query} gave {values}, not a count of backends down", (link,))
        count = sum(s.value for s in down)
        shown = _number(count)
        return result(self.name, Verdict.FAILED,
                      f"{shown} canary backend{'' if count == 1 else 's'} down ({self.query} = {shown})",
                      (*(f"{self.query} {s.describe()}" for s in down), link))


def _prometheus(name: str, values: Mapping[str, Any], env: Mapping[str, str] | None) -> Prometheus:
    token = None
    variable = values["bearer_token_env"]
    if variable is not None:
        token = (os.environ if env is None else env).get(variable, "").strip()
        if not token:
            raise CheckSettingsError(f"environment variable {variable} is not set or empty; it must hold "
                                     f"the bearer token for Prometheus ([checks.{name}] bearer_token_env "
                                     "names it)")
    return Prometheus(values["url"], values["timeout_s"], token)


def _fields(query: str) -> dict[str, Field]:
    return {"url": Field(REQUIRED, http_url), "query": Field(query, text),
            "timeout_s": Field(10.0, seconds(0.1, 120)), "bearer_token_env": Field(None, env_name)}


def deployment_health(settings: Mapping[str, Any], backend_settings: Mapping[str, Any],
                      env: Mapping[str, str] | None = None) -> DeploymentHealthCheck:
    """Every series of ``query`` must be 1.  ``backend_settings`` are not used (Prometheus is no backend)."""
    values = read_settings("deployment_health", settings, _fields(DEPLOYMENT_HEALTH_QUERY))
    return DeploymentHealthCheck("deployment_health", values["rollback"], values["query"],
                                 _prometheus("deployment_health", values, env))


def canary_up(settings: Mapping[str, Any], backend_settings: Mapping[str, Any],
              env: Mapping[str, str] | None = None) -> CanaryUpCheck:
    """``query`` must be empty (or 0): it counts the canary backends that are down."""
    values = read_settings("canary_up", settings, _fields(CANARY_UP_QUERY))
    return CanaryUpCheck("canary_up", values["rollback"], values["query"],
                         _prometheus("canary_up", values, env))


__all__: Sequence[str] = ["CANARY_UP_QUERY", "DEPLOYMENT_HEALTH_QUERY", "CanaryUpCheck",
                          "DeploymentHealthCheck", "Prometheus", "PrometheusError", "Sample", "canary_up",
                          "deployment_health", "instant_query"]

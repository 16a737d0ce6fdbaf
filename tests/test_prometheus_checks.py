"""The Prometheus production checks against a real Prometheus server (Debian's ``prometheus``).

The test starts its own Prometheus (a temporary TSDB, a free loopback port, 1 s scrapes and rule
evaluations) scraping a small exporter it runs with ``prometheus_client``.  The exporter exposes
``haproxy_backend_up{env, backend}`` and per-SLI health ``gitlab_service_sli_healthy{env, type, stage,
sli}``; a recording rule in the test's config makes ``gitlab_deployment_health:service`` of them (the
minimum per env, type and stage), the series the real check reads.  Tests set the exporter's values and
poll Prometheus' API until it shows them, then run the checks.

Without the ``prometheus`` binary: under CI the test fails (``.ci/run`` installs it); elsewhere it
skips with the reason.  Answers Prometheus would never give (an error with 200, HTML, silence) come
from a tiny HTTP server instead.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from deploystate_backends.prometheus import checks
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from deploystate.errors import DeploystateError
from deploystate.ports import Check, CheckContext, Verdict

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
CONTEXT = CheckContext("13.10.202103011220", "13.10.202103011220", "gprd", 0.0)
WAIT_S = 30.0  # for Prometheus to start, and to show what the exporter says (1 s scrapes)
RULES = {"groups": [{"name": "deployment_health", "interval": "1s", "rules": [{
    "record": "gitlab_deployment_health:service",
    "expr": "min by (env, type, stage) (gitlab_service_sli_healthy)",
}]}]}
HEALTHY = {("gprd", "web", "main"): 1, ("gprd", "web", "cny"): 1, ("gprd", "api", "main"): 1,
           ("gprd", "api", "cny"): 1,
           # Left out by the default query: another environment, and the registry.
           ("gstg", "web", "main"): 0, ("gprd", "registry", "main"): 0}
CANARY_UP = {("gprd", "canary_web"): 1, ("gprd", "canary_api"): 1, ("gprd", "main_web"): 1}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ask(url: str, query: str) -> list[dict[str, Any]]:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(address, timeout=5) as answer:
        return list(json.loads(answer.read())["data"]["result"])


class Exporter:
    """What the scraped services report, as gauges on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sli = Gauge("gitlab_service_sli_healthy", "1 when the SLI meets its objective",
                         ["env", "type", "stage", "sli"], registry=self.registry)
        self.backend = Gauge("haproxy_backend_up", "1 when the HAProxy backend is up", ["env", "backend"],
                             registry=self.registry)
        self.server, self.thread = start_http_server(0, "127.0.0.1", registry=self.registry)
        self.port = int(self.server.server_port)

    def show(self, health: Mapping[tuple[str, str, str], float], backends: Mapping[tuple[str, str], float]
             ) -> None:
        self.sli.clear()  # series not set again disappear from the scrape (Prometheus marks them stale)
        self.backend.clear()
        for (env, kind, stage), value in health.items():
            # Two SLIs per service; the recording rule takes the worse.
            self.sli.labels(env, kind, stage, "apdex").set(1)
            self.sli.labels(env, kind, stage, "errors").set(value)
        for (env, backend), value in backends.items():
            self.backend.labels(env, backend).set(value)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prom:
    def __init__(self, url: str, process: subprocess.Popen[bytes], exporter: Exporter) -> None:
        self.url = url
        self.process = process
        self.exporter = exporter

    def wait_until(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.1)
        raise AssertionError(f"Prometheus at {self.url} did not show {what} within {WAIT_S:g} s")

    def show(self, health: Mapping[tuple[str, str, str], float],
             backends: Mapping[tuple[str, str], float]) -> None:
        """Set the exporter's values, and wait until Prometheus answers exactly them."""
        self.exporter.show(health, backends)

        def seen() -> bool:
            services = {(r["metric"]["env"], r["metric"]["type"], r["metric"]["stage"]): float(r["value"][1])
                        for r in ask(self.url, "gitlab_deployment_health:service")}
            ups = {(r["metric"]["env"], r["metric"]["backend"]): float(r["value"][1])
                   for r in ask(self.url, "haproxy_backend_up")}
            return services == dict(health) and ups == dict(backends)

        self.wait_until(f"health {dict(health)} and backends {dict(backends)}", seen)


def _start(binary: str, folder: Path, exporter: Exporter) -> Prom:
    config = folder / "prometheus.yml"
    (folder / "rules.yml").write_text(json.dumps(RULES))  # JSON is YAML
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(folder / "rules.yml")],
        "scrape_configs": [{"job_name": "exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}],
    }))
    for _ in range(3):  # the free port may be taken between probing and binding it: try another
        port = free_port()
        log = (folder / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        prom = Prom(f"http://127.0.0.1:{port}", process, exporter)

        def ready(prom: Prom = prom) -> bool:
            if prom.process.poll() is not None:
                return True
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{prom.url}/-/ready",
                                                                      timeout=1) as answer:
                return bool(answer.status == 200)
            return False

        prom.wait_until("itself ready", ready)
        if process.poll() is None:
            return prom
    raise AssertionError("prometheus did not start: " + (folder / "prometheus.log").read_text()[-2000:])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    binary = shutil.which("prometheus")
    if binary is None:
        reason = ("the prometheus binary is not installed (Debian: apt-get install prometheus); "
                  "tests/test_prometheus_checks.py runs a real Prometheus server")
        if IN_CI:
            pytest.fail(reason + "; under CI this test must run, not skip")
        pytest.skip(reason)
    exporter = Exporter()
    prom = None
    try:
        prom = _start(binary, tmp_path_factory.mktemp("prometheus"), exporter)
        yield prom
    finally:
        if prom is not None:
            prom.process.kill()
            prom.process.wait(timeout=10)
        exporter.stop()


def make(factory: Callable[..., Check], url: str, **settings: Any) -> Check:
    return factory({"url": url, **settings}, {})


# --- against the real Prometheus ---------------------------------------------------------------------


def test_healthy_services_and_an_up_canary_pass(prometheus):
    prometheus.show(HEALTHY, CANARY_UP)
    health, canary = make(checks.deployment_health, prometheus.url), make(checks.canary_up, prometheus.url)

    first, second = health.run(CONTEXT), canary.run(CONTEXT)

    assert isinstance(health, Check) and isinstance(canary, Check)
    assert (health.name, health.rollback, canary.name) == ("deployment_health", False, "canary_up")
    assert (first.verdict, first.detail) == (
        Verdict.PASSED, "all 4 services healthy (cny-api, cny-web, main-api, main-web)")
    assert (second.verdict, second.detail) == (Verdict.PASSED, "no canary backend is down")


def test_an_unhealthy_service_fails_named_by_its_stage_and_type(prometheus):
    prometheus.show({**HEALTHY, ("gprd", "web", "cny"): 0}, CANARY_UP)

    outcome = make(checks.deployment_health, prometheus.url).run(CONTEXT)

    assert outcome.verdict is Verdict.FAILED
    assert outcome.detail == "1 of 4 services unhealthy: cny-web (0)"
    assert outcome.evidence[0] == ('cny-web: gitlab_deployment_health:service{env="gprd", stage="cny", '
                                   'type="web"} = 0')
    assert outcome.evidence[1].startswith(f"{prometheus.url}/graph?g0.expr=gitlab_deployment_health")


def test_canary_backends_down_fail_with_their_count(prometheus):
    prometheus.show(HEALTHY, {**CANARY_UP, ("gprd", "canary_web"): 0, ("gprd", "canary_api"): 0,
                              ("gprd", "main_web"): 0, ("gstg", "canary_web"): 0})

    outcome = make(checks.canary_up, prometheus.url).run(CONTEXT)

    assert outcome.verdict is Verdict.FAILED
    assert outcome.detail == f"2 canary backends down ({checks.CANARY_UP_QUERY} = 2)"
    assert outcome.evidence[0] == f"{checks.CANARY_UP_QUERY} {{}} = 2"


def test_no_series_at_all_is_an_error_not_health(prometheus):
    prometheus.show(HEALTHY, CANARY_UP)
    query = 'gitlab_deployment_health:service{env="nowhere"}'

    outcome = make(checks.deployment_health, prometheus.url, query=query).run(CONTEXT)

    assert outcome.verdict is Verdict.ERROR
    assert outcome.detail == (f"deployment_health: no series for {query} at {prometheus.url}: no data to "
                              "judge the services' health by")


def test_a_query_prometheus_refuses_is_an_error_with_its_words(prometheus):
    bad = make(checks.deployment_health, prometheus.url, query='gitlab_deployment_health:service{env=')
    ranged = make(checks.canary_up, prometheus.url, query="haproxy_backend_up[1m]")

    refused, matrix = bad.run(CONTEXT), ranged.run(CONTEXT)

    assert refused.verdict is Verdict.ERROR
    assert refused.detail.startswith(f"deployment_health: Prometheus at {prometheus.url} answered HTTP 400 "
                                     "(bad_data: ")
    assert "\n" not in refused.detail
    assert (matrix.verdict, matrix.detail) == (Verdict.ERROR, (
        f"canary_up: Prometheus at {prometheus.url} answered a matrix result, not an instant vector; the "
        "query must give one"))


# --- answers no Prometheus gives, and no answer at all -------------------------------------------------


def test_a_closed_port_is_an_error_that_says_so():
    url = f"http://127.0.0.1:{free_port()}"

    outcome = make(checks.canary_up, url).run(CONTEXT)

    assert (outcome.verdict, outcome.detail) == (
        Verdict.ERROR, f"canary_up: Prometheus at {url} could not be reached (Connection refused)")


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``answer`` (status, body, delay) and keeps the headers it got."""

    answer: tuple[int, bytes, float] = (200, b"", 0.0)
    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        status, body, delay = self.answer
        self.seen.append(dict(self.headers.items()))
        time.sleep(delay)
        with contextlib.suppress(OSError):  # the client may have given up already
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Callable[[int, bytes, float], tuple[str, list[dict[str, str]]]]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(status: int, body: bytes, delay: float = 0.0) -> tuple[str, list[dict[str, str]]]:
        seen: list[dict[str, str]] = []
        handler = type("Answer", (Scripted,), {"answer": (status, body, delay), "seen": seen})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


ERROR_BODY = json.dumps({"status": "error", "errorType": "timeout", "error": "query timed out in\nexpression "
                         "evaluation"}).encode()


@pytest.mark.parametrize(("status", "body", "said"), [
    (200, ERROR_BODY, "answered status 'error' (timeout: query timed out in expression evaluation)"),
    (503, ERROR_BODY, "answered HTTP 503 (timeout: query timed out in expression evaluation)"),
    (502, b"<html>Bad Gateway</html>", "answered HTTP 502"),
    (200, b"<html>Sign in</html>", "answered HTTP 200 with something that is not JSON"),
    (200, b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}',
     "answered a sample without metric and [time, value]"),
    (200, b'{"status": "success", "data": {"resultType": "vector", "result": '
          b'[{"metric": {}, "value": [1, "many"]}]}}', "answered a sample value 'many' that is not a number"),
])
def test_an_answer_that_is_not_a_result_is_an_error(scripted, status, body, said):
    url, _ = scripted(status, body)

    outcome = make(checks.deployment_health, url).run(CONTEXT)

    assert (outcome.verdict, outcome.detail) == (Verdict.ERROR,
                                                 f"deployment_health: Prometheus at {url} {said}")


def test_a_silent_prometheus_is_an_error_after_the_time_out(scripted):
    url, _ = scripted(200, b"{}", 3.0)
    started = time.monotonic()

    outcome = make(checks.canary_up, url, timeout_s=0.3).run(CONTEXT)

    assert time.monotonic() - started < 2.5
    assert (outcome.verdict, outcome.detail) == (
        Verdict.ERROR, f"canary_up: Prometheus at {url} did not answer within 0.3 s")


def test_values_other_than_one_fail_and_a_nonsense_count_is_an_error(scripted):
    vector = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"type": "git", "stage": "main"}, "value": [1.0, "NaN"]},
        {"metric": {"type": "web", "stage": "main"}, "value": [1.0, "1"]},
        {"metric": {"type": "api"}, "value": [1.0, "0.5"]}]}}
    health_url, _ = scripted(200, json.dumps(vector).encode())
    count_url, _ = scripted(200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1.0, "-1"]}]}}).encode())

    health = make(checks.deployment_health, health_url).run(CONTEXT)
    count = make(checks.canary_up, count_url).run(CONTEXT)

    assert (health.verdict, health.detail) == (Verdict.FAILED,
                                               "2 of 3 services unhealthy: api (0.5), main-git (nan)")
    assert count.verdict is Verdict.ERROR and "gave -1, not a count of backends down" in count.detail


def test_a_bearer_token_is_sent_and_never_shown(scripted):
    url, seen = scripted(401, b"Unauthorized")

    outcome = checks.canary_up({"url": url, "bearer_token_env": "THANOS_TOKEN"}, {},
                               env={"THANOS_TOKEN": "s3cr3t-value"}).run(CONTEXT)

    assert seen[0]["Authorization"] == "Bearer s3cr3t-value"
    assert outcome.verdict is Verdict.ERROR and outcome.detail.endswith("answered HTTP 401")
    assert "s3cr3t-value" not in outcome.detail


# --- settings ------------------------------------------------------------------------------------------


def test_settings_are_checked_when_the_check_is_made():
    with pytest.raises(DeploystateError, match=r"\[checks.deployment_health\] is missing url, which is "
                       r"required; known: bearer_token_env, query, rollback, timeout_s, url"):
        checks.deployment_health({}, {})
    with pytest.raises(DeploystateError, match=r"\[checks.canary_up\] unknown setting\(s\) querry; known: "):
        checks.canary_up({"url": "http://127.0.0.1:9090", "querry": "up"}, {})
    with pytest.raises(DeploystateError, match=r"\[checks.canary_up\] timeout_s must be a number of seconds "
                       r"from 0.1 to 120, got 0"):
        checks.canary_up({"url": "http://127.0.0.1:9090", "timeout_s": 0}, {})
    with pytest.raises(DeploystateError, match=r"\[checks.canary_up\] url must be an http\(s\) URL"):
        checks.canary_up({"url": "127.0.0.1:9090"}, {})
    with pytest.raises(DeploystateError, match="environment variable THANOS_TOKEN is not set or empty"):
        checks.canary_up({"url": "http://127.0.0.1:9090", "bearer_token_env": "THANOS_TOKEN"}, {}, env={})
    made = checks.canary_up({"url": "http://127.0.0.1:9090/", "rollback": True, "query": "up == 0"}, {})
    assert (made.rollback, made.query, made.prometheus.url) == (True, "up == 0", "http://127.0.0.1:9090")


def test_the_entry_points_name_these_factories():
    found = {e.name: e.load() for e in importlib.metadata.entry_points(group="deploystate.checks")
             if e.value.startswith("deploystate_backends.prometheus.")}

    assert found == {"deployment_health": checks.deployment_health, "canary_up": checks.canary_up}

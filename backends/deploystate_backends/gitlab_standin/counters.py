"""What happened, counted: requests per route, faults injected, triggers, pipelines created.

Tests read these to assert "exactly one pipeline" or "the trigger was sent twice".
"""

from __future__ import annotations

import threading
from collections import Counter

import attrs


@attrs.frozen
class CountersSnapshot:
    """A consistent copy of the counters at one moment."""

    requests: dict[tuple[str, str], int]  # (method, route) -> count, faulted requests included
    faults: dict[tuple[str, str], int]  # (fault kind, route) -> count
    trigger_requests_by_env: dict[str, int]  # trigger requests past the faults, valid or not
    triggered_pipelines_by_env: dict[str, int]  # pipelines created by a trigger
    pipelines_by_project: dict[str, int]  # every pipeline created, by project path

    def requests_to(self, route: str, method: str | None = None) -> int:
        return sum(n for (m, r), n in self.requests.items() if r == route and method in (None, m))

    @property
    def pipelines_created(self) -> int:
        return sum(self.pipelines_by_project.values())


class Counters:
    """Thread-safe counters; ``snapshot()`` reads them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._faults: Counter[tuple[str, str]] = Counter()
        self._trigger_requests: Counter[str] = Counter()
        self._triggered: Counter[str] = Counter()
        self._pipelines: Counter[str] = Counter()

    def request(self, method: str, route: str) -> None:
        with self._lock:
            self._requests[(method, route)] += 1

    def fault(self, kind: str, route: str) -> None:
        with self._lock:
            self._faults[(kind, route)] += 1

    def trigger_request(self, environment: str) -> None:
        with self._lock:
            self._trigger_requests[environment] += 1

    def pipeline_created(self, project_path: str, source: str, environment: str) -> None:
        with self._lock:
            self._pipelines[project_path] += 1
            if source == "trigger":
                self._triggered[environment] += 1

    def snapshot(self) -> CountersSnapshot:
        with self._lock:
            return CountersSnapshot(
                requests=dict(self._requests),
                faults=dict(self._faults),
                trigger_requests_by_env=dict(self._trigger_requests),
                triggered_pipelines_by_env=dict(self._triggered),
                pipelines_by_project=dict(self._pipelines),
            )

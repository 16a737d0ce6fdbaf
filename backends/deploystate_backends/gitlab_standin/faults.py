"""Fault injection: what goes wrong between a client and GitLab, on purpose.

Two ways to ask for a fault, both per route (``"trigger"``, ``"pipelines"``, ... or None for
any) and optionally per method:

- ``plan.next(n, kind, ...)``: the next ``n`` matching requests get it (scripted, exact);
- ``plan.rate(p, kind, ...)``: each matching request gets it with probability ``p``, drawn
  from a generator seeded with ``seed`` (the same seed and request order give the same faults).

Kinds:

- ``error``: a 5xx answer (``status``), the request is not processed;
- ``rate_limit``: 429 with ``Retry-After: retry_after`` (whole seconds), not processed;
- ``slow``: processed, then answered only after ``delay_s`` wall-clock seconds (past a client's
  time-out);
- ``drop``: the connection is closed without an answer, the request is not processed;
- ``lost_response``: processed (a trigger creates its pipeline), then the answer is lost: a
  ``status`` error (502 by default) or, with ``drop=True``, a closed connection.
"""

from __future__ import annotations

import enum
import random
import threading

import attrs


class FaultKind(enum.StrEnum):
    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    SLOW = "slow"
    DROP = "drop"
    LOST_RESPONSE = "lost_response"

    @property
    def before_processing(self) -> bool:
        """Faults that stop the request before it reaches the application."""
        return self in (FaultKind.ERROR, FaultKind.RATE_LIMIT, FaultKind.DROP)


def _status(_: object, __: attrs.Attribute[int], value: int) -> None:
    if not 400 <= value <= 599:
        raise ValueError(f"a fault's status must be an HTTP error (400-599), got {value}")


@attrs.frozen
class Fault:
    kind: FaultKind = attrs.field(converter=FaultKind)
    status: int = attrs.field(default=502, validator=_status)
    retry_after: int = 1
    delay_s: float = 5.0
    drop: bool = False


@attrs.define
class _Rule:
    fault: Fault
    route: str | None
    method: str | None
    remaining: int | None
    rate: float | None

    def matches(self, route: str, method: str) -> bool:
        return self.route in (None, route) and self.method in (None, method)


class FaultPlan:
    """Which requests fail and how.  Thread-safe; ``clear()`` removes every rule."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []

    def next(
        self,
        n: int,
        kind: FaultKind | str,
        *,
        route: str | None = None,
        method: str | None = None,
        status: int = 502,
        retry_after: int = 1,
        delay_s: float = 5.0,
        drop: bool = False,
    ) -> None:
        """The next ``n`` requests to ``route`` (and ``method``) get the fault."""
        if n < 1:
            raise ValueError(f"n must be 1 or more, got {n}")
        fault = Fault(kind, status, retry_after, delay_s, drop)
        with self._lock:
            self._rules.append(_Rule(fault, route, method.upper() if method else None, n, None))

    def rate(
        self,
        probability: float,
        kind: FaultKind | str,
        *,
        route: str | None = None,
        method: str | None = None,
        status: int = 502,
        retry_after: int = 1,
        delay_s: float = 5.0,
        drop: bool = False,
    ) -> None:
        """Each request to ``route`` (and ``method``) gets the fault with ``probability``."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be between 0 and 1, got {probability}")
        fault = Fault(kind, status, retry_after, delay_s, drop)
        with self._lock:
            self._rules.append(_Rule(fault, route, method.upper() if method else None, None, probability))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def pending(self) -> int:
        """How many scripted (``next``) faults are still to come."""
        with self._lock:
            return sum(r.remaining or 0 for r in self._rules)

    def decide(self, route: str, method: str) -> Fault | None:
        """The fault for this request, if any: scripted ones first, then rates in order."""
        with self._lock:
            for rule in self._rules:
                if rule.remaining and rule.matches(route, method):
                    rule.remaining -= 1
                    return rule.fault
            for rule in self._rules:
                if rule.rate is not None and rule.matches(route, method) and self._rng.random() < rule.rate:
                    return rule.fault
            return None

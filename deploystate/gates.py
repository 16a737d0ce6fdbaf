"""The gate before production: which checks are configured, running them, and their table.

Checks are plugins (entry point group ``deploystate.checks``) or offered by the backend
(``Backends.checks``: a simulated backend simulates them all); ``environment_lock`` is the core's
own, read from the store's environment journals.  ``[checks]`` in ``deploystate.toml``::

    [checks]
    enabled = ["active_incidents", "deployment_health", "environment_lock"]  # default: see below

    [checks.deployment_health]
    url = "http://prometheus:9090"

Without ``enabled``: what the backend offers, every check with a ``[checks.NAME]`` table, and
``environment_lock``.  A check that cannot tell (``Verdict.ERROR``) or that raises is a failure:
the gate fails closed, and says so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

import attrs

from deploystate.config import ConfigError
from deploystate.environments import read_environment
from deploystate.errors import DeploystateError
from deploystate.ports import Backends, Check, CheckContext, CheckResult, Store, Verdict
from deploystate.terminal import printable

GROUP = "deploystate.checks"
ENVIRONMENT_LOCK = "environment_lock"
CheckFactory = Callable[[Mapping[str, Any], Mapping[str, Any]], Check]
_CHECKS_KEYS = frozenset({"enabled"})


@attrs.frozen
class EnvironmentLockCheck:
    """Fails while the environment is locked (``deploystate lock``).  Runs for rollbacks too."""

    store: Store = attrs.field(repr=False)
    name: str = ENVIRONMENT_LOCK
    rollback: bool = True

    def run(self, context: CheckContext) -> CheckResult:
        env = context.environment
        lock = read_environment(self.store, env).lock
        if lock is None:
            return CheckResult(self.name, Verdict.PASSED, f"{env} is not locked")
        return CheckResult(self.name, Verdict.FAILED, f"{env} is locked by {lock.by}: {lock.reason}",
                           (f"unlock with 'deploystate unlock {env} --by YOU'",))


def installed() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)} | {ENVIRONMENT_LOCK})


@functools.cache
def _factory(name: str) -> CheckFactory:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ConfigError(f"no production check named {name!r}; installed checks: {', '.join(installed())}")
    try:
        loaded = found[0].load()
    except ImportError as error:
        raise ConfigError(f"check {name!r} cannot be loaded ({error}); install the extra that provides it "
                          f"({found[0].value})") from None
    return loaded  # type: ignore[no-any-return]


def configured(settings: Mapping[str, Any], backends: Backends, store: Store,
               backend_settings: Mapping[str, Any] | None = None) -> tuple[Check, ...]:
    """The checks ``[checks]`` configures, made and checked now (a bad setting stops the command)."""
    unknown = set(settings) - _CHECKS_KEYS - set(installed()) - set(backends.checks)
    if unknown:
        raise ConfigError(f"[checks] has unknown key(s) {sorted(unknown)}; known: enabled, and a "
                          f"[checks.NAME] table per check ({', '.join(installed())})")
    tables = {name: value for name, value in settings.items() if name not in _CHECKS_KEYS}
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"[checks.{name}] must be a table")
    enabled = settings.get("enabled")
    if enabled is None:
        names = [*backends.checks, *(n for n in tables if n not in backends.checks)]
        if ENVIRONMENT_LOCK not in names:
            names.append(ENVIRONMENT_LOCK)
    elif not isinstance(enabled, list) or not all(isinstance(n, str) and n for n in enabled):
        raise ConfigError(f"[checks] enabled must be a list of check names, got {enabled!r}")
    else:
        names = list(dict.fromkeys(enabled))
    made: list[Check] = []
    for name in names:
        table = tables.get(name, {})
        if name == ENVIRONMENT_LOCK:
            if set(table) - {"rollback"}:
                raise ConfigError(f"[checks.{name}] knows only 'rollback'")
            made.append(EnvironmentLockCheck(store, rollback=bool(table.get("rollback", True))))
        elif name in backends.checks:
            made.append(backends.checks[name])
        else:
            try:
                made.append(_factory(name)(table, backend_settings or {}))
            except DeploystateError as error:
                raise ConfigError(f"[checks.{name}]: {error}") from None
    return tuple(made)


def run_checks(checks: Sequence[Check], context: CheckContext) -> tuple[CheckResult, ...]:
    """Every check's result for ``context``.  A check that raises failed: fail closed."""
    results: list[CheckResult] = []
    for check in checks:
        if context.rollback and not check.rollback:
            results.append(CheckResult(check.name, Verdict.SKIPPED, "not run: this is a rollback"))
            continue
        try:
            result = check.run(context)
        except Exception as error:  # a broken check must refuse, never wave a deployment through
            result = CheckResult(check.name, Verdict.ERROR, f"the check itself failed "
                                 f"({type(error).__name__}: {error}); counted as failed")
        if result.name != check.name:
            result = attrs.evolve(result, name=check.name)
        results.append(result)
    return tuple(results)


def run_for(checks: Sequence[Check], rollout_id: str, version: str, environments: Sequence[str], now: float,
            *, rollback: bool = False) -> tuple[CheckResult, ...]:
    """The checks for each of ``environments`` (several: each result's detail names its environment)."""
    results: list[CheckResult] = []
    for env in environments:
        found = run_checks(checks, CheckContext(rollout_id, version, env, now, rollback))
        if len(environments) > 1:
            found = tuple(attrs.evolve(r, detail=f"{env}: {r.detail}") for r in found)
        results.extend(found)
    return tuple(results)


def table(results: Sequence[CheckResult] | Sequence[Mapping[str, Any]]) -> str:
    """The results as a text table: check, verdict, detail, and the evidence under each."""
    rows = [r if isinstance(r, CheckResult) else CheckResult.from_dict(r) for r in results]
    if not rows:
        return "  (no production checks configured)"
    width = max(len(r.name) for r in rows)
    lines = [f"  {'CHECK'.ljust(width)}  RESULT   DETAIL"]
    for r in rows:
        mark = r.verdict.value.upper() if r.verdict is not Verdict.PASSED else "passed"
        lines.append(f"  {printable(r.name).ljust(width)}  {mark.ljust(7)}  {printable(r.detail)}")
        lines.extend(f"  {' ' * width}           {printable(e)}" for e in r.evidence)
    return "\n".join(lines)


class ChecksRefused(DeploystateError):
    """Production checks failed, and no override covers them: nothing was promoted."""

    def __init__(self, message: str, results: Sequence[CheckResult]) -> None:
        super().__init__(message)
        self.results = tuple(results)

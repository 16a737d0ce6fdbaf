"""Reading a production check's ``[checks.NAME]`` table: known keys only, typed, with defaults.

Every check has ``rollback`` (bool, default false: it does not run for rollbacks).  A mistake is
refused with a :class:`DeploystateError` naming the key, what it must be, and the known keys, so a
typo never silently drops a setting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from deploystate.errors import DeploystateError
from deploystate.ports import CheckResult, Verdict

REQUIRED = object()  # a Field default meaning "must be given"


class CheckSettingsError(DeploystateError):
    pass


@attrs.frozen
class Field:
    """One setting: its default (or REQUIRED) and a reader that returns the value or raises ValueError
    with what the value must be."""

    default: Any
    read: Callable[[object], Any]


def text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value.strip()


def flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def texts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise ValueError('a non-empty list of strings, e.g. ["severity::1", "severity::2"]')
    return tuple(v.strip() for v in value)


def project(value: object) -> str:
    # TOML integers name a project by id, as in [backends.gitlab].
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if not isinstance(value, str) or not re.match(r"^(\d+|[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+)$", value):
        raise ValueError("a project id or path like 'group/project'")
    return value


def http_url(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("an http(s) URL, e.g. https://prometheus.example.com")
    return value.rstrip("/")


def env_name(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Z_][A-Z0-9_]*$", value):
        raise ValueError("the name of an environment variable, like GITLAB_API_TOKEN")
    return value


def seconds(low: float, high: float) -> Callable[[object], float]:
    def read(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not low <= value <= high:
            raise ValueError(f"a number of seconds from {low:g} to {high:g}")
        return float(value)
    return read


ROLLBACK = Field(False, flag)


def read_settings(check: str, raw: Mapping[str, Any], fields: Mapping[str, Field]) -> dict[str, Any]:
    """``raw`` checked against ``fields`` (``rollback`` is added), defaults filled in."""
    if not isinstance(raw, Mapping):
        raise CheckSettingsError(f"[checks.{check}] must be a table, got {type(raw).__name__}")
    fields = {"rollback": ROLLBACK, **fields}
    known = ", ".join(sorted(fields))
    unknown = sorted(str(k) for k in raw if k not in fields)
    if unknown:
        raise CheckSettingsError(f"[checks.{check}] unknown setting(s) {', '.join(unknown)}; known: {known}")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in raw:
            if field.default is REQUIRED:
                raise CheckSettingsError(f"[checks.{check}] is missing {name}, which is required; known: "
                                         f"{known}")
            values[name] = field.default
            continue
        try:
            values[name] = field.read(raw[name])
        except ValueError as error:
            raise CheckSettingsError(f"[checks.{check}] {name} must be {error}, got {raw[name]!r}") from None
    return values


def one_line(value: object, limit: int = 200) -> str:
    """Outside text (an issue title, an error) made one short line for a detail."""
    line = " ".join(str(value).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def result(name: str, verdict: Verdict, detail: str, evidence: Iterable[str] = ()) -> CheckResult:
    """A CheckResult of a check adapter."""
    return CheckResult(name, verdict, detail, tuple(evidence))

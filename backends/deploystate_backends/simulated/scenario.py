"""The script of a simulated world: how long things take and which environments misbehave.

A scenario is plain data read from settings (a mapping of names to numbers, strings and lists,
as parsed from TOML, JSON or ``key=value`` command-line pairs).  Every duration is jittered by a
hash of the seed and what it is for, never by a random generator's state, so the same seed gives
the same durations in any process, in any order of calls.
"""

from __future__ import annotations

import datetime as dt
import difflib
import enum
import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from deploystate_backends.simulated.clock import DEFAULT_START
from deploystate_backends.simulated.errors import SettingsError

# The packages the simulation builds: those of the pipeline it rehearses (the seed's package waits).
# A spec may name any package; waiting on another one is refused when its build is asked for.
PACKAGES = ("cng", "omnibus")
# Roughly the real system's: about an hour each for staging and canary, 90 minutes for production.
DEFAULT_DURATIONS: Mapping[str, float] = {"gstg": 3600.0, "gstg-cny": 3600.0, "gprd-cny": 3600.0,
                                          "gprd": 5400.0}
_AUTO_DEPLOY = re.compile(r"^(\d+\.\d+\.(\d{12}))(?:[+-].*)?$")
# The production checks the simulated backend simulates (its Backends.checks): the real system's.
CHECK_NAMES = ("active_incidents", "change_requests", "deploy_freeze", "deployment_health", "canary_up")


class Behaviour(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"  # fails, and fails again on every retry: nobody fixes it
    RETRY_FIXES = "retry_fixes"  # fails once; a retry (a human's, scripted, or anyone's) passes
    HANG = "hang"  # runs forever


@attrs.frozen
class Segment:
    """One environment's part of a deployment (a legacy deployment has one per environment)."""

    environment: str
    duration_s: float
    behaviour: Behaviour
    unknown: bool  # reports an unknown status for a while before running normally

    def passes(self, attempt: int) -> bool:
        if self.behaviour is Behaviour.FAIL:
            return False
        return self.behaviour is not Behaviour.RETRY_FIXES or attempt > 1


def _sorted_names(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(value)))


@attrs.frozen
class Scenario:
    seed: int = 0
    start: float = DEFAULT_START
    durations: Mapping[str, float] = attrs.field(factory=lambda: dict(DEFAULT_DURATIONS))
    default_duration_s: float = 3600.0
    jitter: float = 0.1  # each duration is its base times a factor in [1 - jitter, 1 + jitter]
    fail: tuple[str, ...] = attrs.field(default=(), converter=_sorted_names)
    retry_fixes: tuple[str, ...] = attrs.field(default=(), converter=_sorted_names)
    hang: tuple[str, ...] = attrs.field(default=(), converter=_sorted_names)
    unknown: tuple[str, ...] = attrs.field(default=(), converter=_sorted_names)
    unknown_s: float = 300.0  # how long an `unknown` environment reports waiting_for_callback
    retry_after_s: float = 600.0  # how long the scripted human takes to retry a `retry_fixes` failure
    retry_run_s: float = 900.0  # how long a retried deployment runs
    build_s: float = 2400.0
    build_appear_s: float = 300.0  # from the tag to its package build pipelines appearing
    fail_builds: tuple[str, ...] = attrs.field(default=(), converter=_sorted_names)
    # Production checks that fail in this world (an S1 incident, a freeze, ...): kept with the
    # scenario, so every later command on the same world sees the same failures.
    failing_checks: tuple[str, ...] = attrs.field(default=(), converter=_sorted_names)

    # -- what happens ---------------------------------------------------------------------------
    def behaviour(self, environment: str) -> Behaviour:
        if environment in self.fail:
            return Behaviour.FAIL
        if environment in self.retry_fixes:
            return Behaviour.RETRY_FIXES
        if environment in self.hang:
            return Behaviour.HANG
        return Behaviour.OK

    def segments(self, version: str, environments: tuple[str, ...]) -> tuple[Segment, ...]:
        return tuple(Segment(env, self.deploy_duration(version, env), self.behaviour(env),
                             env in self.unknown) for env in environments)

    def deploy_duration(self, version: str, environment: str) -> float:
        base = self.durations.get(environment, self.default_duration_s)
        return self._jittered(base, "deploy", version, environment)

    def build_duration(self, package: str, version: str) -> float:
        return self._jittered(self.build_s, "build", package, version)

    def _jittered(self, base: float, *what: str) -> float:
        factor = 1.0 + self.jitter * (2.0 * self._fraction(*what) - 1.0)
        return float(round(base * factor))

    def _fraction(self, *what: str) -> float:
        text = "\0".join((str(self.seed), *what)).encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") / 2.0**64

    # -- package builds -------------------------------------------------------------------------
    def package_tag(self, package: str, version: str) -> str:
        """The tag a packaging project builds for ``version`` (shas are made up, but stable)."""
        match = _AUTO_DEPLOY.match(version)
        if not match:
            return version
        base = match.group(1)
        gitlab_sha = self._sha("gitlab", base)
        if package == "omnibus":
            return f"{base}+{gitlab_sha}.{self._sha('omnibus', base)}"
        return f"{base}+{gitlab_sha}"

    def _sha(self, project: str, base: str) -> str:
        return hashlib.sha256(f"{self.seed}\0{project}\0{base}".encode()).hexdigest()[:12]

    # -- settings -------------------------------------------------------------------------------
    def to_settings(self) -> dict[str, Any]:
        """Plain JSON-able settings that :meth:`from_settings` turns back into this scenario."""
        return {field.name: _plain(getattr(self, field.name)) for field in attrs.fields(Scenario)}

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> Scenario:
        values: dict[str, Any] = {}
        for name, value in settings.items():
            reader = _READERS.get(name)
            if reader is None:
                raise _unknown_setting(name)
            values[name] = reader(name, value)
        if "durations" in values:
            values["durations"] = {**DEFAULT_DURATIONS, **values["durations"]}
        return cls(**values)

    def __attrs_post_init__(self) -> None:
        # One set of rules for scenarios made in code and from settings: re-read every field.
        for name, value in self.to_settings().items():
            _READERS[name](name, value)
        _check_fates(self)


def tag_time(version: str) -> float | None:
    """When the auto-deploy tag in ``version`` was cut (its UTC ``YYYYMMDDHHMM``), if it has one."""
    match = _AUTO_DEPLOY.match(version)
    if not match:
        return None
    try:
        moment = dt.datetime.strptime(match.group(2), "%Y%m%d%H%M")
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.UTC).timestamp()


WORLD = "world"


def parse_settings(settings: Mapping[str, object]) -> tuple[Scenario | None, Path | None]:
    """Split backend settings into the scenario (None if none is given) and the world file."""
    if not isinstance(settings, Mapping):
        raise SettingsError(f"simulated backend settings must be a mapping of names to values, got "
                            f"{type(settings).__name__}")
    for name in settings:
        if not isinstance(name, str):
            raise SettingsError(f"simulated backend setting names must be strings, got {name!r}")
        if name != WORLD and name not in _READERS:
            raise _unknown_setting(name)
    path = _world_path(settings.get(WORLD))
    rest = {name: value for name, value in settings.items() if name != WORLD}
    return (Scenario.from_settings(rest) if rest else None), path


# -- readers: one per setting, each raising SettingsError with the fix ------------------------

def _bad(name: str, value: object, expected: str) -> SettingsError:
    return SettingsError(f"simulated backend setting {name!r}: {value!r} is not valid; {expected}")


def _unknown_setting(name: str) -> SettingsError:
    known = sorted([*_READERS, WORLD])
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return SettingsError(f"unknown simulated backend setting {name!r}; {hint}known settings: "
                         f"{', '.join(known)}")


def _number(name: str, value: object, expected: str) -> float:
    if isinstance(value, bool):
        raise _bad(name, value, expected)
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _bad(name, value, expected) from None
    if not isinstance(number, int | float) or not math.isfinite(number):
        raise _bad(name, value, expected)
    return float(number)


# Longer than this is a typo: 1e300 s would carry the virtual clock past any date that can be shown.
MAX_SECONDS = 30 * 86400
# The virtual clock starts between 1970 and 2999 (UTC): later, its dates could not be shown.
START_RANGE = (0.0, 32503680000.0)


def _seconds(name: str, value: object) -> float:
    expected = f"give a number of seconds from 0 to {MAX_SECONDS} (30 days), e.g. 3600"
    seconds = _number(name, value, expected)
    if not 0 <= seconds <= MAX_SECONDS:
        raise _bad(name, value, expected)
    return seconds


def _seed(name: str, value: object) -> int:
    expected = "give a whole number (e.g. 42)"
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise _bad(name, value, expected) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, value, expected)
    return value


def _jitter(name: str, value: object) -> float:
    expected = "give a fraction from 0 (none) up to but not including 1 (e.g. 0.1 for +-10%)"
    jitter = _number(name, value, expected)
    if not 0.0 <= jitter < 1.0:
        raise _bad(name, value, expected)
    return jitter


def _names(name: str, value: object) -> tuple[str, ...]:
    expected = 'give a list of names (e.g. ["gprd"]) or a comma-separated string ("gstg,gprd")'
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _bad(name, value, expected)
    return tuple(v.strip() for v in value)


def _packages(name: str, value: object) -> tuple[str, ...]:
    names = _names(name, value)
    for package in names:
        if package not in PACKAGES:
            raise _bad(name, value, f"packages are {', '.join(PACKAGES)}")
    return names


def _checks(name: str, value: object) -> tuple[str, ...]:
    names = _names(name, value)
    for check in names:
        if check not in CHECK_NAMES:
            close = difflib.get_close_matches(check, CHECK_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            core = ("environment_lock is not simulated: lock the environment instead (deploystate lock); "
                    if check == "environment_lock" else "")
            raise _bad(name, value, f"{hint}{core}the simulated checks are {', '.join(CHECK_NAMES)}")
    return names


def _durations(name: str, value: object) -> dict[str, float]:
    expected = ('give a mapping of environment to seconds (e.g. {gstg = 3600}) or a string '
                '"gstg=3600,gprd=5400"')
    pairs: list[tuple[object, object]]
    if isinstance(value, str):
        pairs = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            left, equals, right = part.partition("=")
            if not equals or not left.strip():
                raise _bad(name, value, expected)
            pairs.append((left.strip(), right))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise _bad(name, value, expected)
    result: dict[str, float] = {}
    for environment, seconds in pairs:
        if not isinstance(environment, str) or not environment:
            raise _bad(name, value, expected)
        result[environment] = _seconds(f"{name}.{environment}", seconds)
    return result


def _start(name: str, value: object) -> float:
    expected = ("give a UTC time between 1970-01-01 and 2999-12-31 like 2021-03-01T12:20:00Z, or seconds "
                "since the epoch")
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str) and not _looks_numeric(value):
        try:
            moment = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise _bad(name, value, expected) from None
    else:
        moment = None
    if moment is not None and moment.tzinfo is None:
        raise _bad(name, value, "give the time zone too, e.g. 2021-03-01T12:20:00Z")
    at = _number(name, value, expected) if moment is None else moment.timestamp()
    if not START_RANGE[0] <= at < START_RANGE[1]:
        raise _bad(name, value, expected)
    return at


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _world_path(value: object) -> Path | None:
    if value is None or value == "" or value == ":memory:":
        return None
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise _bad(WORLD, value, "give the path of the world file, or leave it out to keep the world in memory")


def _check_fates(scenario: Scenario) -> None:
    fates = {"fail": scenario.fail, "retry_fixes": scenario.retry_fixes, "hang": scenario.hang}
    seen: dict[str, str] = {}
    for fate, environments in fates.items():
        for environment in environments:
            if environment in seen:
                raise SettingsError(f"simulated backend: environment {environment!r} is in both "
                                    f"{seen[environment]!r} and {fate!r}; give each environment one "
                                    "fate (unknown may be combined with any)")
            seen[environment] = fate


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


_READERS: dict[str, Callable[[str, object], object]] = {
    "seed": _seed,
    "start": _start,
    "durations": _durations,
    "default_duration_s": _seconds,
    "jitter": _jitter,
    "fail": _names,
    "retry_fixes": _names,
    "hang": _names,
    "unknown": _names,
    "unknown_s": _seconds,
    "retry_after_s": _seconds,
    "retry_run_s": _seconds,
    "build_s": _seconds,
    "build_appear_s": _seconds,
    "fail_builds": _packages,
    "failing_checks": _checks,
}

"""Settings from ``deploystate.toml`` and the environment, checked before anything starts.

A missing or malformed setting is an error at start, never a silent skip: the seed's missed
notifications came from an environment variable nobody noticed was unset.

Precedence: command-line flags > environment variables > ``deploystate.toml`` > defaults.
Secrets are never stored here: the config names the environment variable that holds a token
(``trigger_token_env = "DEPLOYER_TRIGGER_TOKEN"``), and only the backend reads it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from deploystate.errors import DeploystateError
from deploystate.strategy import Strategy
from deploystate.waiting import (
    FIXED_INTERVAL_RANGE,
    MAX_INTERVAL_RANGE,
    MIN_INTERVAL_RANGE,
    WaitPolicy,
    number_text,
    within,
)

CONFIG_FILE = "deploystate.toml"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

_SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "deploystate": {"backend": str, "store": str, "spec": str, "actor": str, "deploy_user": str,
                    "release_managers": list, "release_managers_file": str},
    "strategy": {"individual_deployments": bool, "trigger_ref": str, "shadow_ref": str,
                 "check_mode_everywhere": bool, "strict_shadow": bool},
    "limits": {"package_wait_minutes": (int, float), "deployment_wait_minutes": (int, float),
               "failed_watch_minutes": (int, float)},
    "waiting": {"min_interval_seconds": (int, float), "max_interval_seconds": (int, float),
                "fixed_interval_seconds": (int, float)},
}
# Sections read by the modules they configure (each refuses its own unknown keys).
_PASSED_ON = ("backends", "checks", "notify")
_ENV = {
    "DEPLOYSTATE_BACKEND": ("deploystate", "backend"),
    "DEPLOYSTATE_STORE": ("deploystate", "store"),
    "DEPLOYSTATE_SPEC": ("deploystate", "spec"),
    "INDIVIDUAL_DEPLOYMENTS": ("strategy", "individual_deployments"),
    "TRIGGER_REF": ("strategy", "trigger_ref"),
}


class ConfigError(DeploystateError):
    pass


# What makes sense for a runner's limits, in seconds: at least a second, at most a week (a wait
# limit of 1e300 or nan never ends; inf crashes the clock's arithmetic mid-run).
LIMIT_RANGE_S = (1.0, 7 * 86400.0)
TRIGGER_DOUBT_RANGE_S = (1.0, 3600.0)
OVERRIDE_RANGE_S = (60.0, 7 * 86400.0)
# The same limits as deploystate.toml gives them, in minutes.
LIMIT_RANGE_MINUTES = (1.0, 7 * 24 * 60.0)


def _seconds_within(low: float, high: float) -> Any:
    def check(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
        if not within(value, low, high):
            raise ValueError(f"{attribute.name} must be between {number_text(low)} and {number_text(high)} "
                             f"seconds, got {value!r}")
    return check


@attrs.frozen
class RunnerConfig:
    """How a runner behaves.  Every default the runner has is written here, and only here."""

    strategy: Strategy = attrs.field(factory=Strategy)
    actor: str = "deploystate"
    deploy_user: str = "deploystate"
    # Promote automatically as this actor once the promotion gate opens (simulations only).
    auto_promote: str | None = None
    package_wait_limit_s: float = attrs.field(default=4 * 3600, validator=_seconds_within(*LIMIT_RANGE_S))
    deployment_wait_limit_s: float = attrs.field(default=6 * 3600, validator=_seconds_within(*LIMIT_RANGE_S))
    # How long a failed step is still watched for a retry made outside (in the deployer's UI).
    failed_watch_s: float = attrs.field(default=2 * 3600, validator=_seconds_within(*LIMIT_RANGE_S))
    wait_policy: WaitPolicy = attrs.field(factory=WaitPolicy)
    # After a trigger failed in a way that leaves it in doubt (time-out, 5xx, dropped connection),
    # the deployer may still be processing it: wait this long before looking its key up, or a
    # late pipeline could appear after our search and the retry would make a second one.
    trigger_doubt_s: float = attrs.field(default=60.0, validator=_seconds_within(*TRIGGER_DOUBT_RANGE_S))
    # Who may promote or skip a bake (None: anyone).
    release_managers: frozenset[str] | None = None
    # How long an override of failing production checks lasts unless its maker says otherwise.
    override_s: float = attrs.field(default=3600.0, validator=_seconds_within(*OVERRIDE_RANGE_S))

    def check_override_s(self, seconds: float) -> None:
        """Refuse an override that would last less than a minute or more than a week."""
        if not within(seconds, *OVERRIDE_RANGE_S):
            raise DeploystateError(f"an override must last between 1 minute and 7 days, not "
                                   f"{number_text(seconds)} s; say e.g. --override-expires 2h")

    def check_release_manager(self, by: str, what: str) -> None:
        """Refuse ``what`` (promote, skip-bake) by someone not on the list of release managers."""
        if self.release_managers is not None and by not in self.release_managers:
            raise DeploystateError(
                f"{by!r} is not a release manager, so may not {what}; nothing was recorded. Ask one of "
                f"{', '.join(sorted(self.release_managers))}, or add {by} to release_managers")


@attrs.frozen
class Config:
    """Everything ``deploystate.toml`` and the environment say; defaults are the classes' own."""

    backend: str = "simulated"
    store: str = "deploystate.sqlite"
    spec: str = "seed"
    runner: RunnerConfig = attrs.field(factory=RunnerConfig)
    backend_settings: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    source: str = "defaults"
    # [checks] and [checks.NAME] as the file gives them; deploystate.gates reads and checks them.
    check_settings: Mapping[str, Any] = attrs.field(factory=dict)
    # [notify.NAME] tables as the file gives them; deploystate.notify_config reads and checks them.
    notify_settings: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def strategy(self) -> Strategy:
        return self.runner.strategy

    def runner_config(self, *, auto_promote: str | None = None) -> RunnerConfig:
        return attrs.evolve(self.runner, auto_promote=auto_promote)

    def settings_for(self, backend: str) -> Mapping[str, Any]:
        return self.backend_settings.get(backend, {})


# TOML keys of [limits] and [waiting] -> RunnerConfig / WaitPolicy fields (minutes and seconds).
_LIMITS = {"package_wait_minutes": "package_wait_limit_s",
           "deployment_wait_minutes": "deployment_wait_limit_s",
           "failed_watch_minutes": "failed_watch_s"}
_WAITING = {"min_interval_seconds": "min_interval_s", "max_interval_seconds": "max_interval_s",
            "fixed_interval_seconds": "fixed_interval_s"}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or ``$DEPLOYSTATE_CONFIG``, or ``./deploystate.toml``) and the environment."""
    env = os.environ if env is None else env
    chosen = path or env.get("DEPLOYSTATE_CONFIG")
    data: dict[str, Any] = {}
    source = "defaults"
    if chosen is not None:
        file = Path(chosen)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist; create it or drop --config")
        data, source = _read(file), str(file)
    elif Path(CONFIG_FILE).is_file():
        data, source = _read(Path(CONFIG_FILE)), CONFIG_FILE
    return _build(data, env, source)


def _read(file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{file}: not valid TOML ({error}); fix the syntax") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{file}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"cannot read {file}: {error.strerror}") from None


def _build(data: Mapping[str, Any], env: Mapping[str, str], source: str) -> Config:
    unknown = set(data) - set(_SECTIONS) - set(_PASSED_ON)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; known: "
                          f"{', '.join([*_SECTIONS, *_PASSED_ON])}")
    for section in _PASSED_ON:
        if not isinstance(data.get(section, {}), Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table")
    values: dict[str, dict[str, Any]] = {}
    for section, fields in _SECTIONS.items():
        raw = data.get(section, {})
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in raw.items():
            if key not in fields:
                raise ConfigError(f"{source}: [{section}] has unknown key {key!r}; known: "
                                  f"{', '.join(fields)}")
            expected = fields[key]
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
                raise ConfigError(f"{source}: [{section}] {key} has the wrong type ({value!r})")
            values.setdefault(section, {})[key] = value
    for name, (section, key) in _ENV.items():
        if name in env:
            values.setdefault(section, {})[key] = _from_env(name, env[name], _SECTIONS[section][key])
    backends = data.get("backends", {})
    if not isinstance(backends, Mapping) or not all(isinstance(v, Mapping) for v in backends.values()):
        raise ConfigError(f"{source}: [backends.NAME] sections must be tables")
    main = values.get("deploystate", {})
    limits = values.get("limits", {})
    waiting = values.get("waiting", {})
    low, high = LIMIT_RANGE_MINUTES
    for key, value in limits.items():
        if not within(value, low, high):
            raise ConfigError(f"{source}: [limits] {key} must be between {number_text(low)} and "
                              f"{number_text(high)} minutes (7 days), got {value!r}")
    _check_waiting(waiting, source)
    for key in ("backend", "store", "spec", "actor", "deploy_user"):
        if key in main and not str(main[key]).strip():
            raise ConfigError(f"{source}: [deploystate] {key} is empty; set it or remove the line")
    try:
        strategy = Strategy(**values.get("strategy", {}))
        given: dict[str, Any] = {_WAITING[k]: float(v) for k, v in waiting.items()}
        policy = WaitPolicy(**given)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None
    runner = RunnerConfig(strategy=strategy, wait_policy=policy,
                          release_managers=_release_managers(main, source),
                          **{k: main[k] for k in ("actor", "deploy_user") if k in main},
                          **{_LIMITS[k]: 60.0 * v for k, v in limits.items()})
    return Config(**{k: main[k] for k in ("backend", "store", "spec") if k in main}, runner=runner,
                  backend_settings={k: dict(v) for k, v in backends.items()}, source=source,
                  check_settings=dict(data.get("checks", {})), notify_settings=dict(data.get("notify", {})))


def _release_managers(main: Mapping[str, Any], source: str) -> frozenset[str] | None:
    """Who may promote or skip a bake: ``release_managers`` and the logins in ``release_managers_file``
    (one a line, ``#`` comments).  None: anyone, as without a list."""
    if "release_managers" not in main and "release_managers_file" not in main:
        return None
    names: set[str] = set()
    for name in main.get("release_managers", []):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{source}: [deploystate] release_managers must be a list of logins, "
                              f"got {name!r}")
        names.add(name.strip())
    if "release_managers_file" in main:
        file = Path(main["release_managers_file"])
        if not file.is_absolute() and source != "defaults":
            file = Path(source).parent / file
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{source}: [deploystate] release_managers_file {file} cannot be read "
                              f"({getattr(error, 'strerror', None) or error}); fix the path") from None
        names |= {line.split("#", 1)[0].strip() for line in lines} - {""}
    if not names:
        raise ConfigError(f"{source}: [deploystate] release_managers names nobody, so nobody could promote; "
                          "name the release managers, or remove the setting to let anyone")
    return frozenset(names)


_WAITING_RANGES = {"min_interval_seconds": MIN_INTERVAL_RANGE, "max_interval_seconds": MAX_INTERVAL_RANGE,
                   "fixed_interval_seconds": FIXED_INTERVAL_RANGE}


def _check_waiting(waiting: Mapping[str, Any], source: str) -> None:
    """[waiting]'s numbers, named as the file names them (WaitPolicy checks them again, by field)."""
    for key, value in waiting.items():
        low, high = _WAITING_RANGES[key]
        if not within(value, low, high):
            raise ConfigError(f"{source}: [waiting] {key} must be between {number_text(low)} and "
                              f"{number_text(high)} seconds, got {value!r}")
    default = WaitPolicy()
    shortest = waiting.get("min_interval_seconds", default.min_interval_s)
    longest = waiting.get("max_interval_seconds", default.max_interval_s)
    if shortest > longest:
        def shown(key: str, value: float) -> str:
            return repr(value) if key in waiting else f"{number_text(value)}, the default"
        raise ConfigError(f"{source}: [waiting] min_interval_seconds "
                          f"({shown('min_interval_seconds', shortest)}) is more than max_interval_seconds "
                          f"({shown('max_interval_seconds', longest)}); "
                          "the shortest wait cannot be longer than the longest")


def _from_env(name: str, text: str, expected: type | tuple[type, ...]) -> Any:
    if expected is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"environment variable {name}={text!r} is not a yes/no value; use true or false")
    if not text.strip():
        raise ConfigError(f"environment variable {name} is set but empty; set a value or unset it")
    return text.strip()

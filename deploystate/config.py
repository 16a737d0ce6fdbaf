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
from deploystate.runner import RunnerConfig
from deploystate.strategy import Strategy
from deploystate.waiting import WaitPolicy

CONFIG_FILE = "deploystate.toml"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

_SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "deploystate": {"backend": str, "store": str, "spec": str, "actor": str, "deploy_user": str},
    "strategy": {"individual_deployments": bool, "trigger_ref": str, "shadow_ref": str,
                 "check_mode_everywhere": bool},
    "limits": {"package_wait_minutes": (int, float), "deployment_wait_minutes": (int, float),
               "failed_watch_minutes": (int, float)},
    "waiting": {"min_interval_seconds": (int, float), "max_interval_seconds": (int, float),
                "fixed_interval_seconds": (int, float)},
}
_ENV = {
    "DEPLOYSTATE_BACKEND": ("deploystate", "backend"),
    "DEPLOYSTATE_STORE": ("deploystate", "store"),
    "DEPLOYSTATE_SPEC": ("deploystate", "spec"),
    "INDIVIDUAL_DEPLOYMENTS": ("strategy", "individual_deployments"),
    "TRIGGER_REF": ("strategy", "trigger_ref"),
}


class ConfigError(DeploystateError):
    pass


@attrs.frozen
class Config:
    backend: str = "simulated"
    store: str = "deploystate.sqlite"
    spec: str = "seed"
    actor: str = "deploystate"
    deploy_user: str = "deploystate"
    strategy: Strategy = attrs.field(factory=Strategy)
    package_wait_s: float = 4 * 3600
    deployment_wait_s: float = 6 * 3600
    failed_watch_s: float = 2 * 3600
    wait_policy: WaitPolicy = attrs.field(factory=WaitPolicy)
    backend_settings: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    source: str = "defaults"

    def runner_config(self, *, auto_promote: str | None = None) -> RunnerConfig:
        return RunnerConfig(strategy=self.strategy, actor=self.actor, deploy_user=self.deploy_user,
                            auto_promote=auto_promote, package_wait_limit_s=self.package_wait_s,
                            deployment_wait_limit_s=self.deployment_wait_s,
                            failed_watch_s=self.failed_watch_s, wait_policy=self.wait_policy)

    def settings_for(self, backend: str) -> Mapping[str, Any]:
        return self.backend_settings.get(backend, {})


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
    except OSError as error:
        raise ConfigError(f"cannot read {file}: {error.strerror}") from None


def _build(data: Mapping[str, Any], env: Mapping[str, str], source: str) -> Config:
    unknown = set(data) - set(_SECTIONS) - {"backends"}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; known: "
                          f"{', '.join([*_SECTIONS, 'backends'])}")
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
    try:
        strategy = Strategy(**values.get("strategy", {}))
        policy = WaitPolicy(
            min_interval_s=float(waiting.get("min_interval_seconds", 15)),
            max_interval_s=float(waiting.get("max_interval_seconds", 600)),
            fixed_interval_s=(float(waiting["fixed_interval_seconds"])
                              if "fixed_interval_seconds" in waiting else None),
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None
    for key, value in limits.items():
        if value <= 0:
            raise ConfigError(f"{source}: [limits] {key} must be > 0, got {value}")
    for key in ("backend", "store", "spec", "actor", "deploy_user"):
        if key in main and not str(main[key]).strip():
            raise ConfigError(f"{source}: [deploystate] {key} is empty; set it or remove the line")
    return Config(
        backend=main.get("backend", "simulated"), store=main.get("store", "deploystate.sqlite"),
        spec=main.get("spec", "seed"), actor=main.get("actor", "deploystate"),
        deploy_user=main.get("deploy_user", "deploystate"), strategy=strategy,
        package_wait_s=60.0 * limits.get("package_wait_minutes", 240),
        deployment_wait_s=60.0 * limits.get("deployment_wait_minutes", 360),
        failed_watch_s=60.0 * limits.get("failed_watch_minutes", 120),
        wait_policy=policy, backend_settings={k: dict(v) for k, v in backends.items()}, source=source,
    )


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

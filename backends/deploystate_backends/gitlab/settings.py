"""Settings of the GitLab backend (``[backends.gitlab]`` in deploystate.toml).

Tokens are never settings: the settings name the environment variables that hold them, and
the values are read once, kept out of every message, and sent only to GitLab.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from deploystate.errors import DeploystateError

_PROJECT = re.compile(r"^(\d+|[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+)$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
REQUIRED = ("url", "deployer_project", "cng_project", "omnibus_project")


class GitLabSettingsError(DeploystateError):
    pass


def _project_text(value: object) -> object:
    # TOML has integers: `deployer_project = 123` means the project with id 123.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _project(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _PROJECT.match(value):
        raise GitLabSettingsError(f"[backends.gitlab] {attribute.name} = {value!r} is not a project id or "
                                  "path like 'group/project'")


def _env_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise GitLabSettingsError(f"[backends.gitlab] {attribute.name} must name an environment variable "
                                  f"(like DEPLOYER_TRIGGER_TOKEN), got {value!r}")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _positive(low: float, high: float, unit: str = " seconds") -> Callable[[object, attrs.Attribute[Any],
                                                                             object], None]:
    # nan, inf and 1e300 are "positive" too: each crashed or hung a run, so each number has a range.
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not _finite(value) or not low <= value <= high:  # type: ignore[operator]
            raise GitLabSettingsError(f"[backends.gitlab] {attribute.name} must be a positive number between "
                                      f"{_shown(low)} and {_shown(high)}{unit}, got {value!r}")
    return check


def _count(high: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise GitLabSettingsError(f"[backends.gitlab] {attribute.name} must be a whole number between 1 "
                                      f"and {high}, got {value!r}")
    return check


def _optional_env_name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _env_name(instance, attribute, value)  # type: ignore[arg-type]


def _listen(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str)
                              or not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$", value)):
        raise GitLabSettingsError("[backends.gitlab] webhook_listen must be HOST:PORT where GitLab's "
                                  f"Pipeline Hooks arrive, e.g. \"0.0.0.0:8930\", got {value!r}")


def _url(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise GitLabSettingsError(f"[backends.gitlab] url = {value!r} is not an http(s) URL, e.g. "
                                  "https://gitlab.example.com")


_YEAR_3000 = 32503680000


def _anchor(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not _finite(value) or not 0 <= value < _YEAR_3000):  # type: ignore[operator]
        raise GitLabSettingsError(f"[backends.gitlab] clock_anchor must be a Unix time in seconds between 0 "
                                  f"and {_YEAR_3000} (year 3000), got {value!r}")


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class GitLabSettings:
    url: str = attrs.field(validator=_url)
    deployer_project: str = attrs.field(converter=_project_text, validator=_project)
    cng_project: str = attrs.field(converter=_project_text, validator=_project)
    omnibus_project: str = attrs.field(converter=_project_text, validator=_project)
    trigger_token_env: str = attrs.field(default="DEPLOYER_TRIGGER_TOKEN", validator=_env_name)
    api_token_env: str = attrs.field(default="GITLAB_API_TOKEN", validator=_env_name)
    timeout_s: float = attrs.field(default=15.0, validator=_positive(0.1, 300))
    read_attempts: int = attrs.field(default=4, validator=_count(20))
    backoff_s: float = attrs.field(default=0.5, validator=_positive(0.001, 60))
    max_backoff_s: float = attrs.field(default=30.0, validator=_positive(0.001, 600))
    # How many of the deployer's newest triggered pipelines are searched for an idempotency key.
    find_depth: int = attrs.field(default=50, validator=_count(1000))
    key_variable: str = attrs.field(default="DEPLOYSTATE_KEY", validator=_env_name)
    # Rehearsals against a stand-in only: time runs clock_speed times faster than the wall clock,
    # anchored where both agree, exactly as the stand-in's --speed and --anchor.
    clock_speed: float = attrs.field(default=1.0, validator=_positive(0.01, 10000, unit=""))
    clock_anchor: float | None = attrs.field(default=None, validator=_anchor)
    # Optional: receive GitLab's Pipeline Hooks here (the hook's secret token is in the variable
    # webhook_secret_env names) and poll only as a safety net.  Without them, waiting polls.
    webhook_listen: str | None = attrs.field(default=None, validator=_listen)
    webhook_secret_env: str | None = attrs.field(default=None, validator=_optional_env_name)

    def __attrs_post_init__(self) -> None:
        if self.backoff_s > self.max_backoff_s:
            raise GitLabSettingsError(f"[backends.gitlab] backoff_s ({self.backoff_s!r}) is more than "
                                      f"max_backoff_s ({self.max_backoff_s!r}); the first wait cannot be "
                                      "longer than the longest")
        if (self.webhook_listen is None) != (self.webhook_secret_env is None):
            raise GitLabSettingsError("[backends.gitlab] webhook_listen and webhook_secret_env go together: "
                                      "set both to receive Pipeline Hooks, or neither to poll")
        if self.clock_speed == 1:
            return
        # A fast clock shortens the bake, a safety gate: never against a real GitLab.
        if not is_loopback(self.url):
            raise GitLabSettingsError(f"[backends.gitlab] clock_speed = {self.clock_speed} is for "
                                      "rehearsals against a local stand-in (a loopback url); remove it "
                                      "for a real GitLab")
        if self.clock_anchor is None:
            raise GitLabSettingsError("[backends.gitlab] clock_speed needs clock_anchor, the stand-in's "
                                      "anchor (`deploystate sim-gitlab` prints both)")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> GitLabSettings:
        known = {f.name for f in attrs.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise GitLabSettingsError(f"[backends.gitlab] unknown setting(s) {sorted(unknown)}; known: "
                                      f"{', '.join(sorted(known))}")
        missing = [name for name in REQUIRED if name not in raw]
        if missing:
            raise GitLabSettingsError(f"[backends.gitlab] is missing {', '.join(missing)}; see README, "
                                      "'Running against GitLab'")
        return cls(**raw)  # type: ignore[arg-type]

    def webhook_secret(self, env: Mapping[str, str] | None = None) -> str | None:
        """The Pipeline Hooks' secret token, if webhooks are configured (never from the file)."""
        name = self.webhook_secret_env
        if name is None:
            return None
        value = (os.environ if env is None else env).get(name, "").strip()
        if not value:
            raise GitLabSettingsError(f"environment variable {name} is not set or empty; it must hold the "
                                      "secret token of the GitLab Pipeline Hook ([backends.gitlab] "
                                      "webhook_secret_env names it)")
        return value

    def token(self, which: str, env: Mapping[str, str] | None = None) -> str:
        """Read a token from the environment variable the settings name (never from the file)."""
        name = self.trigger_token_env if which == "trigger" else self.api_token_env
        value = (os.environ if env is None else env).get(name, "")
        if not value.strip():
            kind = "pipeline trigger token of the deployer project" if which == "trigger" else "API token"
            state = "is empty" if name in (os.environ if env is None else env) else "is not set"
            raise GitLabSettingsError(f"environment variable {name} {state}; it must hold the GitLab {kind} "
                                      f"([backends.gitlab] {which}_token_env names it)")
        return value.strip()

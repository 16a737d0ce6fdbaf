"""Settings of the GitLab backend (``[backends.gitlab]`` in deploystate.toml).

Tokens are never settings: the settings name the environment variables that hold them, and
the values are read once, kept out of every message, and sent only to GitLab.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import attrs

from deploystate.errors import DeploystateError

_PROJECT = re.compile(r"^(\d+|[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+)$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class GitLabSettingsError(DeploystateError):
    pass


def _project(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _PROJECT.match(value):
        raise GitLabSettingsError(f"[backends.gitlab] {attribute.name} = {value!r} is not a project id or "
                                  "path like 'group/project'")


def _env_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise GitLabSettingsError(f"[backends.gitlab] {attribute.name} must name an environment variable "
                                  f"(like DEPLOYER_TRIGGER_TOKEN), got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise GitLabSettingsError(f"[backends.gitlab] {attribute.name} must be a positive number, "
                                  f"got {value!r}")


def _url(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise GitLabSettingsError(f"[backends.gitlab] url = {value!r} is not an http(s) URL, e.g. "
                                  "https://gitlab.example.com")


@attrs.frozen
class GitLabSettings:
    url: str = attrs.field(validator=_url)
    deployer_project: str = attrs.field(validator=_project)
    cng_project: str = attrs.field(validator=_project)
    omnibus_project: str = attrs.field(validator=_project)
    trigger_token_env: str = attrs.field(default="DEPLOYER_TRIGGER_TOKEN", validator=_env_name)
    api_token_env: str = attrs.field(default="GITLAB_API_TOKEN", validator=_env_name)
    timeout_s: float = attrs.field(default=15.0, validator=_positive)
    read_attempts: int = attrs.field(default=4, validator=_positive)
    backoff_s: float = attrs.field(default=0.5, validator=_positive)
    max_backoff_s: float = attrs.field(default=30.0, validator=_positive)
    # How many of the deployer's newest triggered pipelines are searched for an idempotency key.
    find_depth: int = attrs.field(default=50, validator=_positive)
    key_variable: str = attrs.field(default="DEPLOYSTATE_KEY", validator=_env_name)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> GitLabSettings:
        known = {f.name for f in attrs.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise GitLabSettingsError(f"[backends.gitlab] unknown setting(s) {sorted(unknown)}; known: "
                                      f"{', '.join(sorted(known))}")
        missing = [name for name in ("url", "deployer_project", "cng_project", "omnibus_project")
                   if name not in raw]
        if missing:
            raise GitLabSettingsError(f"[backends.gitlab] is missing {', '.join(missing)}; see README, "
                                      "'Running against GitLab'")
        return cls(**raw)  # type: ignore[arg-type]

    def token(self, which: str, env: Mapping[str, str] | None = None) -> str:
        """Read a token from the environment variable the settings name (never from the file)."""
        name = self.trigger_token_env if which == "trigger" else self.api_token_env
        value = (os.environ if env is None else env).get(name, "")
        if not value.strip():
            raise GitLabSettingsError(f"environment variable {name} is not set; it must hold the GitLab "
                                      f"{'pipeline trigger' if which == 'trigger' else 'API'} token")
        return value.strip()

"""Both tokens checked against GitLab when a rollout is created, before anything is written.

A wrong token would otherwise show only mid-run: package waits recorded failed, or the first
trigger refused.  ``check_access`` (the backend's ``prepare``) only reads, and creates nothing:

1. ``GET /projects/:id`` for the deployer, CNG and Omnibus projects (each once), with the API
   token: 401 means a bad token, 403 a token whose user may not read the project, 404 a wrong path
   (or a project the token's user is no member of);
2. ``GET /projects/:id/triggers`` of the deployer project, with the API token: the trigger token
   must be one of those listed.  GitLab has no read-only check of a trigger token itself, so
   this is the nearest, with two limits: listing needs the Maintainer role (a 403 here is no
   refusal: a warning says the first trigger will tell), and GitLab shows a trigger token in full
   only to the user who created it, to others its first four characters (then a token with those
   four characters passes with a warning; one without them is refused).

Messages name the environment variable and the project, and say what to do; never a token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gitlab

from deploystate.errors import DeploystateError
from deploystate.ports import BackendError
from deploystate_backends.gitlab import client
from deploystate_backends.gitlab.settings import GitLabSettings

logger = logging.getLogger("deploystate_backends.gitlab.access")

PROJECT_SETTINGS = ("deployer_project", "cng_project", "omnibus_project")
NOTHING_STARTED = "nothing was started"


class GitLabAccessError(DeploystateError):
    """A token or project that GitLab refuses: the rollout is not created."""


def check_access(gl: gitlab.Gitlab, settings: GitLabSettings, trigger_token: str, secrets: tuple[str, ...],
                 *, sleep: Callable[[float], None] = time.sleep) -> None:
    """Raise :class:`GitLabAccessError` unless both tokens work (at most four reads)."""
    api = settings.api_token_env
    checked: set[str] = set()
    for setting in PROJECT_SETTINGS:
        project = str(getattr(settings, setting))
        if project in checked:
            continue
        checked.add(project)
        where, done = f"project {project!r}, {setting} in [backends.gitlab]", NOTHING_STARTED
        try:
            _read(_getter(gl, project), f"reading project {project!r}", settings, secrets, sleep)
        except client.GitLabApiError as error:
            if error.status == 401:
                raise GitLabAccessError(
                    f"GitLab rejects the API token in {api} (401 reading {where}): it is wrong, expired or "
                    f"revoked. Put a valid token with the read_api scope in {api}; {done}") from None
            if error.status == 403:
                raise GitLabAccessError(
                    f"the API token in {api} may not read {where} (403): give its user at least the "
                    f"Reporter role there, or use a token with the read_api scope; {done}") from None
            if error.status == 404:
                raise GitLabAccessError(
                    f"project {project!r} ({setting} in [backends.gitlab]) is not found with the API token "
                    f"in {api} (404): check the path or id, and that the token's user is a member of the "
                    f"project; {done}") from None
            raise
    _check_trigger_token(gl, settings, trigger_token, secrets, sleep)


def _getter(gl: gitlab.Gitlab, project: str) -> Callable[[], Any]:
    return lambda: gl.projects.get(project)


def _check_trigger_token(gl: gitlab.Gitlab, settings: GitLabSettings, trigger_token: str,
                         secrets: tuple[str, ...], sleep: Callable[[float], None]) -> None:
    variable, api, deployer = settings.trigger_token_env, settings.api_token_env, settings.deployer_project
    project = gl.projects.get(deployer, lazy=True)
    try:
        listed: list[Any] = _read(lambda: project.triggers.list(get_all=True),
                                  f"listing the trigger tokens of project {deployer!r}", settings, secrets,
                                  sleep)
    except client.GitLabApiError as error:
        if error.status not in (403, 404):
            raise
        logger.warning("cannot check %s at start: listing the trigger tokens of project %r needs the "
                       "Maintainer role, which the user of %s lacks (%s); a wrong trigger token shows at the "
                       "first trigger", variable, deployer, api, error.status)
        return
    tokens = [str(getattr(trigger, "token", "") or "") for trigger in listed]
    if trigger_token in tokens:
        return
    shortened = [t for t in tokens if t and len(t) < len(trigger_token) and trigger_token.startswith(t)]
    if shortened:
        logger.warning("%s could only be matched by its first %d characters: GitLab shows project %r's "
                       "trigger tokens in full only to the user who created them; a wrong trigger token "
                       "shows at the first trigger", variable, len(shortened[0]), deployer)
        return
    raise GitLabAccessError(
        f"the pipeline trigger token in {variable} is none of the trigger tokens of project {deployer!r} "
        f"(deployer_project in [backends.gitlab]): copy one from that project's Settings > CI/CD > Pipeline "
        f"trigger tokens into {variable}; {NOTHING_STARTED}")


def _read(call: Callable[[], Any], what: str, settings: GitLabSettings, secrets: tuple[str, ...],
          sleep: Callable[[float], None]) -> Any:
    """A read with the backend's retries; an error that is no refusal of a token says so."""
    try:
        return client.read(call, what, settings, secrets, sleep=sleep)
    except client.GitLabApiError as error:
        if error.status in (401, 403, 404):
            raise
        if error.transient:
            raise GitLabAccessError(f"cannot check the GitLab tokens now: {error}; try again once GitLab "
                                    f"answers; {NOTHING_STARTED}") from None
        raise GitLabAccessError(f"cannot check the GitLab tokens: {error}; {NOTHING_STARTED}") from None
    except BackendError as error:  # not from GitLab's answer (a connection, a time-out)
        if error.transient:
            raise GitLabAccessError(f"cannot check the GitLab tokens now: {error}; try again once GitLab "
                                    f"answers; {NOTHING_STARTED}") from None
        raise GitLabAccessError(f"cannot check the GitLab tokens: {error}; {NOTHING_STARTED}") from None

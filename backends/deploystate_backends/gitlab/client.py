"""python-gitlab, set up the way a rollout needs it, and its errors translated.

- ``retry_transient_errors`` stays off: python-gitlab would otherwise re-send a POST after a 5xx,
  and a trigger could create two pipelines.  Reads are retried here, with backoff; a trigger is
  never retried blindly (the runner looks its key up first).
- 429 is left to python-gitlab, which waits for ``Retry-After`` (the request was not processed).
- Every call has a time-out (python-gitlab has none by default).
- Messages never contain a token: they are built from our own words plus the HTTP status.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import gitlab
import gitlab.exceptions
import requests

from deploystate.ports import BackendError
from deploystate_backends.gitlab.settings import GitLabSettings

T = TypeVar("T")


def connect(settings: GitLabSettings, api_token: str) -> gitlab.Gitlab:
    # Every request keeps python-gitlab's obey_rate_limit: after 429 it waits for Retry-After and
    # sends again; GitLab refused that request before doing anything, so even a trigger is safe.
    return gitlab.Gitlab(settings.url, private_token=api_token, timeout=settings.timeout_s,
                         retry_transient_errors=False, keep_base_url=True)


class GitLabApiError(BackendError):
    """A BackendError from GitLab's API; ``status`` is the HTTP status GitLab answered, if any."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message, transient=transient, gone=status == 404)
        self.status = status


def translate(error: Exception, what: str, secrets: Sequence[str] = (),
              not_found: str | None = None) -> BackendError:
    """A BackendError saying what failed; transient when trying again later may help.

    ``not_found`` replaces the advice given for a 404 (a trigger's 404 means a wrong token).
    """
    if isinstance(error, gitlab.exceptions.GitlabAuthenticationError):
        return GitLabApiError(f"{what}: GitLab refused the credentials (401); check the token's "
                              "environment variable and its scopes", transient=False, status=401)
    if isinstance(error, gitlab.exceptions.GitlabError):
        code = error.response_code
        detail = _scrub(str(error.error_message or ""), secrets)[:200]
        if code is None:
            return GitLabApiError(f"{what}: GitLab's answer could not be read ({detail})", transient=True)
        if code >= 500 or code == 429:
            return GitLabApiError(f"{what}: GitLab answered {code} ({detail})", transient=True, status=code)
        if code == 404:
            return GitLabApiError(f"{what}: not found (404); " + (
                not_found or "check the project path or id in [backends.gitlab] and that the API token "
                "can see it"), transient=False, status=code)
        if code == 403:
            return GitLabApiError(f"{what}: forbidden (403); the token lacks permission", transient=False,
                                  status=code)
        return GitLabApiError(f"{what}: GitLab refused the request ({code}: {detail})", transient=False,
                              status=code)
    if isinstance(error, requests.exceptions.Timeout):
        return BackendError(f"{what}: GitLab did not answer in time", transient=True)
    if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return BackendError(f"{what}: connection to GitLab failed or was dropped", transient=True)
    # Anything else requests refuses (a malformed URL, redirects without end) will not mend itself.
    return BackendError(f"{what}: the request to GitLab failed ({type(error).__name__}); check "
                        "[backends.gitlab] url", transient=False)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return text


_TRANSLATED = (gitlab.exceptions.GitlabError, requests.exceptions.RequestException)


def once(call: Callable[[], T], what: str, secrets: Sequence[str] = (), not_found: str | None = None) -> T:
    """One attempt; errors become BackendError.  For triggers, which must not be repeated here."""
    try:
        return call()
    except _TRANSLATED as error:
        raise translate(error, what, secrets, not_found) from None


def read(call: Callable[[], T], what: str, settings: GitLabSettings, secrets: Sequence[str] = (),
         sleep: Callable[[float], None] = time.sleep) -> T:
    """A read, retried with exponential backoff and jitter while the error is transient."""
    delay = settings.backoff_s
    for attempt in range(1, settings.read_attempts + 1):
        try:
            return call()
        except _TRANSLATED as error:
            translated = translate(error, what, secrets)
            if not translated.transient or attempt == settings.read_attempts:
                raise translated from None
        sleep(min(settings.max_backoff_s, delay) * random.uniform(0.5, 1.0))
        delay *= 2
    raise AssertionError("unreachable: the last attempt returns or raises")

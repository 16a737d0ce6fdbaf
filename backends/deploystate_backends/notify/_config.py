"""What every notifier's factory checks, and how every notifier reads an HTTP answer.

Secrets are never settings: a setting names the environment variable that holds one, and the
value is read once, checked, and kept out of every message (a Slack webhook URL is a secret: it
is the only credential its sender needs).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from deploystate.errors import DeploystateError
from deploystate.ports import NotifierError

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+(?:[/?#]\S*)?$")
TIMEOUT_RANGE = (0.1, 300.0)
DEFAULT_TIMEOUT_S = 10.0
# A Retry-After longer than this is taken as this: a receiver's typo must not park delivery for days.
MAX_RETRY_AFTER_S = 3600.0


class NotifierSettingsError(DeploystateError):
    """A ``[notify.NAME]`` table, or a variable it names, is not usable; nothing was sent."""


def check_keys(section: str, settings: Mapping[str, Any], known: Iterable[str]) -> None:
    known = sorted(known)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise NotifierSettingsError(f"{section}: unknown setting(s) {', '.join(unknown)}; known: "
                                    f"{', '.join(known)} (and notices)")


def env_name(section: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise NotifierSettingsError(f"{section} {key} must name an environment variable (like "
                                    f"SLACK_WEBHOOK_URL), got {value!r}")
    return value


def from_env(section: str, key: str, name: str, env: Mapping[str, str], what: str) -> str:
    """The value of the variable ``name`` (which setting ``key`` named), refused if unset or empty."""
    value = env.get(name, "")
    if not value.strip():
        state = "is empty" if name in env else "is not set"
        raise NotifierSettingsError(f"environment variable {name} {state}; it must hold {what} ({section} "
                                    f"{key} names it)")
    return value.strip()


def url_in(section: str, key: str, name: str, value: str) -> str:
    """``value`` (from variable ``name``) if it is an http(s) URL; the refusal never shows it."""
    if not _HTTP_URL.match(value):
        raise NotifierSettingsError(f"environment variable {name} does not hold an http(s) URL (its value is "
                                    f"not shown: it is a secret); {section} {key} names it")
    return value


def timeout(section: str, value: object) -> float:
    low, high = TIMEOUT_RANGE
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or not low <= value <= high):
        raise NotifierSettingsError(f"{section} timeout_s must be a number of seconds between {low:g} and "
                                    f"{high:g}, got {value!r}")
    return float(value)


def text(section: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise NotifierSettingsError(f"{section} {key} must be a non-empty string, got {value!r}")
    return value.strip()


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def refusal(who: str, status: int, detail: str, retry_after_header: str | None = None) -> NotifierError:
    """The NotifierError for an HTTP answer that is not 2xx.

    429: try again after ``Retry-After``; 5xx and 408: transient (the receiver's trouble); any
    other 4xx (Slack's 404 ``no_service``, 410 ``channel_is_archived``, 403 ``invalid_token``, a
    400 for a payload it will never take) and 3xx (a moved endpoint): permanent, a person must
    fix the settings.
    """
    detail = " ".join(detail.split())[:200]
    said = f": {detail}" if detail else ""
    if status == 429:
        wait = retry_after(retry_after_header)
        when = f"; try again in {wait:g} s" if wait is not None else ""
        return NotifierError(f"{who} rate-limited the notice (429{said}){when}", retry_after=wait)
    if status >= 500 or status == 408:
        shown = f" ({detail})" if detail else ""
        return NotifierError(f"{who} answered {status}{shown}; will try again")
    if 300 <= status < 400:
        return NotifierError(f"{who} answered a redirect ({status}); point the settings at the final URL",
                             permanent=True)
    return NotifierError(f"{who} refused the notice ({status}{said}); trying again will not help: check "
                         "its settings", permanent=True)


def scrub(message: str, secrets: Iterable[str]) -> str:
    """``message`` without any of ``secrets`` (belt and braces: our messages never put them in)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, "[secret]")
    return message

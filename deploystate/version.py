"""Auto-deploy versions: ``MAJOR.MINOR.YYYYMMDDHHMM`` (UTC), e.g. ``13.10.202103011220``."""

from __future__ import annotations

import datetime as dt
import re

from deploystate.errors import DeploystateError

AUTO_DEPLOY_TAG = re.compile(r"^(\d+)\.(\d+)\.(\d{12})$")
EXAMPLE = "13.10.202103011220"


class BadVersion(DeploystateError, ValueError):
    pass


def check_version(text: str) -> str:
    """Return ``text`` if it is an auto-deploy tag, else raise :class:`BadVersion` saying why."""
    match = AUTO_DEPLOY_TAG.match(text)
    if not match:
        raise BadVersion(f"version {text!r} is not an auto-deploy tag; expected MAJOR.MINOR.YYYYMMDDHHMM "
                         f"(UTC), e.g. {EXAMPLE}")
    try:
        dt.datetime.strptime(match.group(3), "%Y%m%d%H%M")
    except ValueError:
        raise BadVersion(f"version {text!r}: {match.group(3)} is not a valid UTC time YYYYMMDDHHMM; "
                         f"e.g. {EXAMPLE}") from None
    return text

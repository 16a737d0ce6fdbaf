"""Auto-deploy versions: ``MAJOR.MINOR.YYYYMMDDHHMM`` (UTC), e.g. ``13.10.202103011220``.

The format belongs to the backends that drive the auto-deploy pipeline (GitLab's, and the
simulated one that rehearses it), not to the core: each passes :func:`check_version` as its
``Backends.check_version``, so a rollout of anything else is refused before it is created.
"""

from __future__ import annotations

import datetime as dt
import re

from deploystate.errors import DeploystateError

__all__ = ["AUTO_DEPLOY_TAG", "EXAMPLE", "RUNBOOK", "BadVersion", "check_version", "tag_time"]

# Matched whole (fullmatch), so that no trailing newline or other text slips through; ASCII digits
# only, since ``\d`` would also take other scripts' digits.
AUTO_DEPLOY_TAG = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]{12})")
# MAJOR and MINOR as GitLab writes them: no leading zero (13.010.X would be a second rollout of
# 13.10.X), at most four digits.
_RELEASE_NUMBER = re.compile(r"0|[1-9][0-9]{0,3}")
# Tag times a rollout can have: later ones end past the dates that can be shown (year 9999).
YEARS = (2000, 2999)
EXAMPLE = "13.10.202103011220"
# The release team's runbooks: where a failure notice of an auto-deploy rollout points.
RUNBOOK = "https://gitlab.com/gitlab-org/release/docs/-/tree/master/runbooks"

_TIME_FORMAT = "%Y%m%d%H%M"


class BadVersion(DeploystateError, ValueError):
    """A version that is not an auto-deploy tag; the message says what one looks like."""


def _tag_moment(text: str) -> tuple[re.Match[str] | None, dt.datetime | None]:
    match = AUTO_DEPLOY_TAG.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None, None
    try:
        return match, dt.datetime.strptime(match.group(3), _TIME_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return match, None


def check_version(text: str) -> str:
    """Return ``text`` if it is an auto-deploy tag, else raise :class:`BadVersion` saying why."""
    match, moment = _tag_moment(text)
    if match is None:
        raise BadVersion(f"version {text!r} is not an auto-deploy tag; expected MAJOR.MINOR.YYYYMMDDHHMM "
                         f"(UTC), e.g. {EXAMPLE}")
    if not all(_RELEASE_NUMBER.fullmatch(part) for part in match.group(1, 2)):
        raise BadVersion(f"version {text!r}: MAJOR and MINOR are whole numbers without leading zeros, of at "
                         f"most 4 digits; e.g. {EXAMPLE}")
    if moment is None:
        raise BadVersion(f"version {text!r}: {match.group(3)} is not a valid UTC time YYYYMMDDHHMM; "
                         f"e.g. {EXAMPLE}")
    if not YEARS[0] <= moment.year <= YEARS[1]:
        when = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
                f"{moment.hour:02d}:{moment.minute:02d}")
        raise BadVersion(f"version {text!r}: tag time {when} UTC is not between {YEARS[0]} and {YEARS[1]}; "
                         f"give the auto-deploy tag's own time, e.g. {EXAMPLE}")
    return text


def tag_time(version: str) -> float | None:
    """When the auto-deploy tag ``version`` was cut (seconds since the epoch), None if it is not one."""
    _match, moment = _tag_moment(version)
    return None if moment is None else moment.timestamp()

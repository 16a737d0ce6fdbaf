"""Production checks read from GitLab: active incidents, change requests, deploy freezes.

Entry points of the ``deploystate.checks`` group; each is a factory ``(settings, backend_settings)``
where ``settings`` is ``[checks.NAME]`` and ``backend_settings`` the configured backend's table
(``[backends.gitlab]``).  GitLab's ``url``, ``api_token_env``, ``timeout_s`` and read retries come from
the backend's table; a check may name another GitLab with ``url`` and ``api_token_env`` (GitLab.com's
production tracker, while the deployer lives on an ops instance).

- ``active_incidents``: ``GET /projects/:id/issues?labels=Incident::Active,severity::N&state=opened``
  for each severity label (default ``severity::1``, ``severity::2``) in ``project`` (default
  ``gitlab-com/gl-infra/production``): any issue found fails the check.
- ``change_requests``: the same with ``change::in-progress`` and ``C1`` / ``C2``.
- ``deploy_freeze``: ``GET /projects/:id/freeze_periods`` of ``project`` (default: the backend's
  ``deployer_project``, where deployments run and GitLab's own ``$CI_DEPLOY_FREEZE`` would apply);
  inside a freeze window at the check's ``now`` fails.

A check never raises for an outside failure: GitLab down, a 5xx after the backend's read retries, a
401, an answer it cannot read, a cron expression or time zone it cannot use: each is
``Verdict.ERROR`` (fail closed) with one line saying what went wrong.  Tokens are read from the
environment when the check is made (a missing one is refused then) and never appear in a detail.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import croniter
import gitlab

from deploystate.ports import BackendError, CheckContext, CheckResult, Verdict
from deploystate_backends.check_settings import (
    REQUIRED,
    CheckSettingsError,
    Field,
    env_name,
    http_url,
    one_line,
    project,
    read_settings,
    result,
    seconds,
    text,
    texts,
)
from deploystate_backends.gitlab.client import _scrub, connect, read
from deploystate_backends.gitlab.settings import GitLabSettings

PRODUCTION_TRACKER = "gitlab-com/gl-infra/production"
# Where GitLab's url and token come from, unless the check names its own.
_CONNECTION = ("url", "api_token_env", "timeout_s", "read_attempts", "backoff_s", "max_backoff_s")


@attrs.frozen
class GitLabAccess:
    """How a check reaches GitLab: the backend's settings (or the check's own url and token variable)
    and the API token read from the environment."""

    settings: GitLabSettings
    token: str = attrs.field(repr=False)

    def client(self) -> gitlab.Gitlab:
        return connect(self.settings, self.token)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.token,)


def _access(check: str, values: Mapping[str, Any], backend_settings: Mapping[str, Any], project_path: str,
            env: Mapping[str, str] | None) -> GitLabAccess:
    given = {k: v for k, v in backend_settings.items() if k in _CONNECTION}
    given.update({k: values[k] for k in ("url", "api_token_env", "timeout_s") if values.get(k) is not None})
    if "url" not in given:
        raise CheckSettingsError(f"[checks.{check}] needs GitLab's url: configure [backends.gitlab] or set "
                                 f"url (and api_token_env) under [checks.{check}]")
    # GitLabSettings checks the numbers and the url, and knows how a token is read (never from the
    # file); the projects it asks for are this check's own, since the check reads only that one.
    settings = GitLabSettings(deployer_project=project_path, cng_project=project_path,
                              omnibus_project=project_path, **given)
    variables = os.environ if env is None else env
    if values.get("api_token_env") is None:
        return GitLabAccess(settings, settings.token("api", variables))
    token = variables.get(settings.api_token_env, "").strip()
    if not token:  # the backend's message would blame [backends.gitlab] for the check's own setting
        raise CheckSettingsError(f"environment variable {settings.api_token_env} is not set or empty; it "
                                 f"must hold a GitLab API token ([checks.{check}] api_token_env names it)")
    return GitLabAccess(settings, token)


def _connection_fields() -> dict[str, Field]:
    return {"url": Field(None, http_url), "api_token_env": Field(None, env_name),
            "timeout_s": Field(None, seconds(0.1, 300))}


def _error(name: str, what: str, error: BaseException, secrets: Sequence[str]) -> CheckResult:
    """Fail closed: the check could not tell, said in one line (BackendErrors carry no token)."""
    if isinstance(error, BackendError):
        message = str(error)
    else:  # an answer that parsed but was not what GitLab documents (a list without web_url, ...)
        message = f"{what}: GitLab's answer was not what its API documents ({type(error).__name__})"
    return result(name, Verdict.ERROR, one_line(_scrub(message, secrets), 300))


# --- labelled issues: active incidents, change requests ----------------------------------------------


@attrs.frozen
class LabelledIssuesCheck:
    """Open issues in ``project`` labelled ``label`` and at least one of ``any_of`` fail the check.

    One list per ``any_of`` label (``labels=label,other``: GitLab ANDs them), all pages, so the
    filtering is GitLab's own; an issue with two of them is counted once.
    """

    name: str
    rollback: bool
    project: str
    label: str
    any_of: tuple[str, ...]
    noun: str  # "active incident", "change request in progress"
    access: GitLabAccess

    def run(self, context: CheckContext) -> CheckResult:
        what = f"{self.name}: listing open issues of {self.project}"
        try:
            found = self._find()
        except Exception as error:  # fail closed on anything the outside does
            return _error(self.name, what, error, self.access.secrets)
        wanted = f"{self.label} and {' or '.join(self.any_of)}"
        if not found:
            return result(self.name, Verdict.PASSED,
                               f"no open issue in {self.project} labelled {wanted}")
        count = len(found)
        first_title, first_url, _ = found[0]
        which = "/".join(label for label in self.any_of if any(label in labels for _, _, labels in found))
        more = f" and {count - 1} more" if count > 1 else ""
        detail = (f"{count} {self.noun}{'s' if count > 1 else ''} ({which}): {one_line(first_title, 120)} "
                  f"({first_url}){more}")
        evidence = tuple(f"{url} {one_line(title)}" for title, url, _ in found)
        return result(self.name, Verdict.FAILED, detail, evidence)

    def _find(self) -> list[tuple[str, str, tuple[str, ...]]]:
        gl = self.access.client()
        try:
            issues = gl.projects.get(self.project, lazy=True).issues
            seen: dict[int, tuple[str, str, tuple[str, ...]]] = {}
            for other in self.any_of:
                def listed(labels: str = f"{self.label},{other}") -> list[Any]:
                    return list(issues.list(labels=labels, state="opened", get_all=True, per_page=100))
                for issue in read(listed, f"{self.name}: listing open issues of {self.project} labelled "
                                          f"{self.label},{other}", self.access.settings, self.access.secrets):
                    attributes = issue.attributes
                    seen.setdefault(int(attributes["iid"]), (
                        str(attributes["title"]), str(attributes["web_url"]),
                        tuple(str(label) for label in attributes.get("labels") or ())))
            # Oldest first: the incident that has lasted longest leads the detail.
            return [seen[iid] for iid in sorted(seen)]
        finally:
            gl.session.close()


def _labelled(name: str, noun: str, label: str, any_of_key: str, any_of: tuple[str, ...],
              settings: Mapping[str, Any], backend_settings: Mapping[str, Any],
              env: Mapping[str, str] | None) -> LabelledIssuesCheck:
    values = read_settings(name, settings, {
        "project": Field(PRODUCTION_TRACKER, project), "label": Field(label, text),
        any_of_key: Field(any_of, texts), **_connection_fields()})
    return LabelledIssuesCheck(name=name, rollback=values["rollback"], project=values["project"],
                               label=values["label"], any_of=values[any_of_key], noun=noun,
                               access=_access(name, values, backend_settings, values["project"], env))


def active_incidents(settings: Mapping[str, Any], backend_settings: Mapping[str, Any],
                     env: Mapping[str, str] | None = None) -> LabelledIssuesCheck:
    """Open ``Incident::Active`` issues of severity 1 or 2 in the production tracker fail the check.

    Settings: ``project``, ``label`` (``Incident::Active``), ``severity_labels``
    (``["severity::1", "severity::2"]``), ``url``, ``api_token_env``, ``timeout_s``, ``rollback``.
    """
    return _labelled("active_incidents", "active incident", "Incident::Active", "severity_labels",
                     ("severity::1", "severity::2"), settings, backend_settings, env)


def change_requests(settings: Mapping[str, Any], backend_settings: Mapping[str, Any],
                    env: Mapping[str, str] | None = None) -> LabelledIssuesCheck:
    """Open ``change::in-progress`` issues of criticality C1 or C2 fail the check.

    Settings: ``project``, ``label`` (``change::in-progress``), ``criticality_labels``
    (``["C1", "C2"]``), ``url``, ``api_token_env``, ``timeout_s``, ``rollback``.
    """
    return _labelled("change_requests", "change request in progress", "change::in-progress",
                     "criticality_labels", ("C1", "C2"), settings, backend_settings, env)


# --- deploy freezes ----------------------------------------------------------------------------------


class FreezeError(ValueError):
    """A freeze period whose cron expressions or time zone cannot be used (the check fails closed)."""


@attrs.frozen
class Freeze:
    """One freeze period, and where ``now`` stands in it."""

    id: int
    freeze_start: str
    freeze_end: str
    cron_timezone: str
    started: dt.datetime | None  # the latest freeze_start at or before now
    ended: dt.datetime | None  # the latest freeze_end at or before now
    ends: dt.datetime  # the next freeze_end after now

    @property
    def active(self) -> bool:
        # Inside the window: the last start came after the last end (an end at the very moment of a
        # start closes the window).  No end ever before now but a start: inside, too.
        return self.started is not None and (self.ended is None or self.started > self.ended)


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise FreezeError(f"time zone {name!r} is not an IANA time zone name (like Europe/Berlin)") from None


def _latest(expression: str, moment: dt.datetime) -> dt.datetime | None:
    """The latest time ``expression`` matches at or before ``moment`` (None: never, e.g. 30 February).

    croniter's get_prev is strictly before its start, and cron times are whole seconds at most: so
    start one second after ``moment`` with its fraction dropped, and a match at ``moment`` counts.
    """
    start = moment.replace(microsecond=0) + dt.timedelta(seconds=1)
    try:
        found = croniter.croniter(expression, start).get_prev(dt.datetime)
    except croniter.CroniterBadDateError:
        return None
    assert isinstance(found, dt.datetime)
    return found


def where_in_freeze(period: Mapping[str, Any], now: float) -> Freeze:
    """Where ``now`` (Unix time) stands in a GitLab freeze period ``{id, freeze_start, freeze_end,
    cron_timezone}``; FreezeError if its expressions or zone cannot be used."""
    start, end = str(period["freeze_start"]), str(period["freeze_end"])
    zone_name = str(period.get("cron_timezone") or "UTC")  # GitLab's default when none was given
    zone = _zone(zone_name)
    for expression in (start, end):
        if not croniter.croniter.is_valid(expression):
            raise FreezeError(f"cron expression {expression!r} cannot be read")
    moment = dt.datetime.fromtimestamp(now, zone)
    try:
        ends = croniter.croniter(end, moment).get_next(dt.datetime)
    except croniter.CroniterError:
        raise FreezeError(f"freeze_end {end!r} never comes") from None
    assert isinstance(ends, dt.datetime)
    return Freeze(id=int(period.get("id") or 0), freeze_start=start, freeze_end=end, cron_timezone=zone_name,
                  started=_latest(start, moment), ended=_latest(end, moment), ends=ends)


def _when(moment: dt.datetime) -> str:
    return moment.strftime("%a %Y-%m-%d %H:%M %Z")


def _left(seconds_left: float) -> str:
    minutes = max(0, math.ceil(seconds_left / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    return " ".join([*parts, f"{hours}h {minutes:02d}m"])


@attrs.frozen
class DeployFreezeCheck:
    name: str
    rollback: bool
    project: str
    access: GitLabAccess

    def run(self, context: CheckContext) -> CheckResult:
        what = f"{self.name}: listing the freeze periods of {self.project}"
        try:
            periods = self._periods(what)
        except Exception as error:  # fail closed on anything the outside does
            return _error(self.name, what, error, self.access.secrets)
        freezes: list[Freeze] = []
        for period in periods:
            try:
                freezes.append(where_in_freeze(period, context.now))
            except FreezeError as error:
                return result(self.name, Verdict.ERROR, one_line(
                    f"{self.name}: freeze period {period.get('id')} of {self.project} cannot be checked: "
                    f"{error}", 300), (self._settings_url(),))
            except (KeyError, TypeError, ValueError) as error:
                return _error(self.name, what, error, self.access.secrets)
        active = sorted((f for f in freezes if f.active), key=lambda f: f.ends)
        if not active:
            return result(self.name, Verdict.PASSED,
                               f"no deploy freeze of {self.project} is on ({len(freezes)} freeze period"
                               f"{'' if len(freezes) == 1 else 's'})")
        # The freeze that lasts longest decides when deployments may go on.
        last = active[-1]
        until = last.ends.timestamp()
        detail = (f"deploy freeze of {self.project} ({last.freeze_start!r} to {last.freeze_end!r}, "
                  f"{last.cron_timezone}): frozen until {_when(last.ends)} (in {_left(until - context.now)})")
        if len(active) > 1:
            detail += f"; {len(active)} freeze periods are on"
        evidence = tuple(
            f"freeze period {f.id}: {f.freeze_start!r} to {f.freeze_end!r} ({f.cron_timezone}), since "
            f"{_when(f.started) if f.started else '?'}, until {_when(f.ends)}" for f in active)
        return result(self.name, Verdict.FAILED, detail, (*evidence, self._settings_url()))

    def _settings_url(self) -> str:
        # Where people see and change deploy freezes in GitLab (Settings > CI/CD > Deploy freezes).
        base = self.access.settings.url.rstrip("/")
        return f"{base}/{self.project}/-/settings/ci_cd#js-deploy-freeze-settings"

    def _periods(self, what: str) -> list[Mapping[str, Any]]:
        gl = self.access.client()
        try:
            path = f"/projects/{urllib.parse.quote(self.project, safe='')}/freeze_periods"
            listed: Callable[[], Any] = lambda: gl.http_list(path, get_all=True, per_page=100)  # noqa: E731
            answer = read(listed, what, self.access.settings, self.access.secrets)
            if not isinstance(answer, list) or not all(isinstance(p, Mapping) for p in answer):
                raise TypeError("not a list of freeze periods")
            return list(answer)
        finally:
            gl.session.close()


def deploy_freeze(settings: Mapping[str, Any], backend_settings: Mapping[str, Any],
                  env: Mapping[str, str] | None = None) -> DeployFreezeCheck:
    """Inside one of GitLab's deploy freeze periods of ``project``, the check fails.

    Settings: ``project`` (default: ``[backends.gitlab] deployer_project``), ``url``,
    ``api_token_env``, ``timeout_s``, ``rollback``.
    """
    default = backend_settings.get("deployer_project")
    values = read_settings("deploy_freeze", settings, {
        "project": Field(REQUIRED if default is None else project(default), project),
        **_connection_fields()})
    access = _access("deploy_freeze", values, backend_settings, values["project"], env)
    return DeployFreezeCheck(name="deploy_freeze", rollback=values["rollback"], project=values["project"],
                             access=access)

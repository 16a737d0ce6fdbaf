"""Notes on a GitLab issue (the release issue a release manager follows), with python-gitlab.

``[notify.gitlab_issue]`` settings: ``project`` (path or numeric id), ``issue_iid``, ``url`` (the
GitLab instance, as ``[backends.gitlab] url``), ``api_token_env`` (default ``GITLAB_API_TOKEN``,
as the backend's), ``timeout_s``.  Any notice can be rendered; the delivery core sends only the
milestones here by default.

Each note is markdown (emoji, bold title, a table of check results) ending in a hidden line
``<!-- deploystate notice ROLLOUT:SEQ -->``.  Before creating a note, the issue's newest notes are
read: a note already carrying that line is this notice delivered before (a process killed after
GitLab took it, a 5xx after it was written), and it is not posted twice.

429s are not waited out inside python-gitlab: the answer's ``Retry-After`` goes back to delivery
(``NotifierError.retry_after``), which waits without holding anything else up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from deploystate.ports import Notice, NotifierError
from deploystate_backends.notify import _config
from deploystate_backends.notify.render import describe, markdown_for, marker

SECTION = "[notify.gitlab_issue]"
KNOWN = ("project", "issue_iid", "url", "api_token_env", "timeout_s")
DEFAULT_TOKEN_ENV = "GITLAB_API_TOKEN"  # the GitLab backend's default too
_PROJECT = re.compile(r"^(\d+|[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+)$")
_URL = re.compile(r"^https?://[^\s/]+")
# What the delivery core sends here unless [notify.gitlab_issue] notices says otherwise.
default_notices = "milestones"
# How many of the issue's newest notes are searched for a notice's marker before posting it.
LOOKBACK = 100


class GitLabIssueNotifier:
    def __init__(self, url: str, token: str, project: str, issue_iid: int, *,
                 timeout_s: float = _config.DEFAULT_TIMEOUT_S, name: str = "gitlab_issue") -> None:
        import gitlab
        import requests

        self.name = name
        self.project = project
        self.issue_iid = issue_iid
        self._token = token
        self._last: requests.Response | None = None
        self._session = requests.Session()
        # python-gitlab's errors lack the answer's headers; the last answer keeps Retry-After.
        self._session.hooks["response"].append(self._keep)
        self._gitlab = gitlab.Gitlab(url, private_token=token, timeout=timeout_s, session=self._session,
                                     retry_transient_errors=False, keep_base_url=True)
        self._notes = self._gitlab.projects.get(project, lazy=True).issues.get(issue_iid, lazy=True).notes

    def __repr__(self) -> str:
        return f"GitLabIssueNotifier(project={self.project!r}, issue_iid={self.issue_iid})"

    def _keep(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self._last = response

    def body(self, notice: Notice) -> str:
        return markdown_for(describe(notice))

    def notify(self, notice: Notice) -> None:
        body = self.body(notice)
        try:
            if notice.seq is not None and self._posted(notice):
                return
            self._notes.create({"body": body}, obey_rate_limit=False)
        except Exception as error:
            raise self._translate(error) from None

    def _posted(self, notice: Notice) -> bool:
        line = marker(notice)
        newest = self._notes.list(per_page=LOOKBACK, sort="desc", order_by="created_at", get_all=False,
                                  obey_rate_limit=False)
        return any(line in str(getattr(note, "body", "")) for note in newest)

    def _translate(self, error: Exception) -> NotifierError:
        import gitlab.exceptions
        import requests

        where = f"GitLab issue {self.project}#{self.issue_iid}"
        if isinstance(error, gitlab.exceptions.GitlabError):
            code = error.response_code
            if code is None:
                return NotifierError(f"{where}: GitLab's answer could not be read; will try again")
            detail = _config.scrub(str(error.error_message or ""), [self._token])
            if code in (401, 403):
                return NotifierError(f"{where}: GitLab refused the token ({code}); check the variable "
                                     f"{SECTION} api_token_env names and its api scope", permanent=True)
            if code == 404:
                return NotifierError(f"{where}: not found (404); check {SECTION} project and issue_iid, and "
                                     "that the token can see the project", permanent=True)
            header = self._last.headers.get("Retry-After") if self._last is not None else None
            return _config.refusal(f"{where}: GitLab", code, detail, header)
        if isinstance(error, requests.exceptions.RequestException):
            return NotifierError(f"{where}: GitLab did not answer ({type(error).__name__}); will try again")
        return NotifierError(_config.scrub(f"{where}: {type(error).__name__}: {error}", [self._token]))

    def close(self) -> None:
        self._session.close()


def create(settings: Mapping[str, Any], env: Mapping[str, str]) -> GitLabIssueNotifier:
    _config.check_keys(SECTION, settings, KNOWN)
    missing = [key for key in ("project", "issue_iid", "url") if key not in settings]
    if missing:
        raise _config.NotifierSettingsError(f"{SECTION} is missing {', '.join(missing)} (the project and "
                                            "issue to post notes on, and the GitLab url)")
    project = settings["project"]
    if isinstance(project, int) and not isinstance(project, bool):
        project = str(project)
    if not isinstance(project, str) or not _PROJECT.match(project):
        raise _config.NotifierSettingsError(f"{SECTION} project = {project!r} is not a project id or path "
                                            "like 'gitlab-org/release/tasks'")
    iid = settings["issue_iid"]
    if isinstance(iid, bool) or not isinstance(iid, int) or iid < 1:
        raise _config.NotifierSettingsError(f"{SECTION} issue_iid must be the issue's number in its project "
                                            f"(a whole number, 1 or more), got {iid!r}")
    url = settings["url"]
    if not isinstance(url, str) or not _URL.match(url):
        raise _config.NotifierSettingsError(f"{SECTION} url = {url!r} is not an http(s) URL, e.g. "
                                            "https://gitlab.example.com")
    token_env = _config.env_name(SECTION, "api_token_env", settings.get("api_token_env", DEFAULT_TOKEN_ENV))
    timeout_s = _config.timeout(SECTION, settings.get("timeout_s", _config.DEFAULT_TIMEOUT_S))
    token = _config.from_env(SECTION, "api_token_env", token_env, env, "a GitLab API token (api scope)")
    return GitLabIssueNotifier(url.rstrip("/"), token, project, iid, timeout_s=timeout_s)

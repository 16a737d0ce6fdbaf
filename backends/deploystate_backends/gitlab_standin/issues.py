"""Issues with labels, and deploy freeze periods: what production checks read from GitLab.

Tests set them up on the world (``world.add_issue``, ``world.close_issue``,
``world.add_freeze_period``) and the API lists them as GitLab does:

- ``GET /projects/:id/issues``: ``labels`` is a comma-separated list that an issue must carry
  *all* of (GitLab's documented AND; ``None`` and ``Any`` are its special values), ``state``
  ``opened|closed|all``, ``order_by`` ``created_at|updated_at`` (default ``created_at``), ``sort``
  (default ``desc``), offset pagination like every other list;
- ``GET /projects/:id/freeze_periods``: every period, oldest ``created_at`` first, paginated.

Cron expressions are stored as given, never checked: GitLab validates them when a period is
created, but a check must still fail closed on one it cannot read, so tests may give any text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from deploystate_backends.gitlab_standin.specs import JobSpec, ProjectSpec

# The production issue tracker the production checks read (incidents, change requests). Not one of
# the default projects: a test that needs it adds it (``World([*DEFAULT_PROJECTS, PRODUCTION])``).
PRODUCTION = ProjectSpec(
    id=50,
    path="gitlab-com/gl-infra/production",
    description="Production incidents and change requests",
    jobs=(JobSpec("triage", "test"),),
)
ISSUE_STATES = ("opened", "closed")
ISSUE_TYPES = ("issue", "incident", "test_case", "task")


@attrs.define(eq=False)
class Issue:
    """One issue.  Read it under ``World.lock``: closing it changes it."""

    id: int
    iid: int
    project_id: int
    title: str
    labels: tuple[str, ...]
    created_at: float
    updated_at: float
    description: str | None = None
    issue_type: str = "issue"
    state: str = "opened"
    closed_at: float | None = None
    author: str = "deploy-bot"
    closed_by: str | None = None


@attrs.frozen
class FreezePeriod:
    id: int
    project_id: int
    freeze_start: str
    freeze_end: str
    cron_timezone: str
    created_at: float
    updated_at: float


class BadIssueParameter(ValueError):
    """A list parameter GitLab would refuse with 400 ``{"error": "<name> does not have a valid value"}``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} does not have a valid value")
        self.name = name


_ORDER_BY: dict[str, Callable[[Issue], Any]] = {
    "created_at": lambda i: (i.created_at, i.id),
    "updated_at": lambda i: (i.updated_at, i.id),
}


def _labelled(issue: Issue, wanted: Sequence[str]) -> bool:
    # GitLab: "None" lists issues without labels, "Any" those with at least one (case-insensitive);
    # other names must all be on the issue.
    for name in wanted:
        if name.casefold() == "none":
            if issue.labels:
                return False
        elif name.casefold() == "any":
            if not issue.labels:
                return False
        elif name not in issue.labels:
            return False
    return True


def find_issues(issues: Sequence[Issue], *, labels: str | None = None, state: str | None = None,
                order_by: str | None = None, sort: str | None = None) -> list[Issue]:
    """``issues`` as ``GET /projects/:id/issues`` lists them (call under ``World.lock``)."""
    if state not in (None, "all", *ISSUE_STATES):
        raise BadIssueParameter("state")
    order, direction = order_by or "created_at", sort or "desc"
    if order not in _ORDER_BY:
        raise BadIssueParameter("order_by")
    if direction not in ("asc", "desc"):
        raise BadIssueParameter("sort")
    wanted = [name.strip() for name in (labels or "").split(",") if name.strip()]
    found = [i for i in issues if (state in (None, "all") or i.state == state) and _labelled(i, wanted)]
    return sorted(found, key=_ORDER_BY[order], reverse=direction == "desc")


def render_issue(issue: Issue, spec: ProjectSpec, base_url: str, user: Callable[[str], dict[str, Any]],
                 timestamp: Callable[[float | None], str | None], *, notes: int = 0) -> dict[str, Any]:
    """An issue in the shape of GitLab's documented example (Issues API, list project issues);
    ``notes``: how many notes it has (``user_notes_count``)."""
    base = base_url.rstrip("/")
    api = f"{base}/api/v4/projects/{spec.id}"
    return {
        "project_id": spec.id,
        "milestone": None,
        "author": user(issue.author),
        "description": issue.description,
        "state": issue.state,
        "iid": issue.iid,
        "assignees": [],
        "assignee": None,
        "type": "INCIDENT" if issue.issue_type == "incident" else "ISSUE",
        "labels": list(issue.labels),
        "upvotes": 0,
        "downvotes": 0,
        "merge_requests_count": 0,
        "id": issue.id,
        "title": issue.title,
        "updated_at": timestamp(issue.updated_at),
        "created_at": timestamp(issue.created_at),
        "closed_at": timestamp(issue.closed_at),
        "closed_by": None if issue.closed_by is None else user(issue.closed_by),
        "user_notes_count": notes,
        "due_date": None,
        "imported": False,
        "imported_from": "none",
        "web_url": f"{base}/{spec.path}/-/issues/{issue.iid}",
        "references": {"short": f"#{issue.iid}", "relative": f"#{issue.iid}",
                       "full": f"{spec.path}#{issue.iid}"},
        "time_stats": {"time_estimate": 0, "total_time_spent": 0, "human_time_estimate": None,
                       "human_total_time_spent": None},
        "has_tasks": False,
        "task_status": "0 of 0 checklist items completed",
        "confidential": False,
        "discussion_locked": False,
        "issue_type": issue.issue_type,
        "severity": "UNKNOWN",
        "_links": {
            "self": f"{api}/issues/{issue.iid}",
            "notes": f"{api}/issues/{issue.iid}/notes",
            "award_emoji": f"{api}/issues/{issue.iid}/award_emoji",
            "project": api,
            # GitLab's entity: a link only for an issue closed as a duplicate, else null.
            "closed_as_duplicate_of": None,
        },
        "task_completion_status": {"count": 0, "completed_count": 0},
    }


def render_freeze_period(period: FreezePeriod,
                         timestamp: Callable[[float | None], str | None]) -> dict[str, Any]:
    """A freeze period in the shape of GitLab's documented example (Freeze Periods API)."""
    return {
        "id": period.id,
        "freeze_start": period.freeze_start,
        "freeze_end": period.freeze_end,
        "cron_timezone": period.cron_timezone,
        "created_at": timestamp(period.created_at),
        "updated_at": timestamp(period.updated_at),
    }

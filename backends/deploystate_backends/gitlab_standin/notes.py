"""Notes (comments) on issues: what deploystate's release-issue notifier posts.

``POST /projects/:id/issues/:issue_iid/notes`` (``body`` required, at most 1,000,000 characters)
answers 201 with the note; ``GET`` of the same path lists the issue's notes, ``sort`` ``desc``
(default) or ``asc`` by ``order_by`` ``created_at`` (default) or ``updated_at``, paginated like
every other list.  An issue that does not exist is 404 ``{"message": "404 Issue Not Found"}``.
Shapes as in GitLab's Notes API documentation ("List project issue notes").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

NOTE_LIMIT = 1_000_000


@attrs.define(eq=False)
class Note:
    id: int
    issue_id: int
    issue_iid: int
    project_id: int
    body: str
    author: str
    created_at: float
    updated_at: float
    internal: bool = False


class BadNoteParameter(ValueError):
    """A parameter GitLab refuses with 400 ``{"error": "..."}``."""


def sorted_notes(notes: Sequence[Note], *, order_by: str | None, sort: str | None) -> list[Note]:
    order, direction = order_by or "created_at", sort or "desc"
    if order not in ("created_at", "updated_at"):
        raise BadNoteParameter("order_by does not have a valid value")
    if direction not in ("asc", "desc"):
        raise BadNoteParameter("sort does not have a valid value")
    return sorted(notes, key=lambda n: (getattr(n, order), n.id), reverse=direction == "desc")


def render_note(note: Note, user: Callable[..., dict[str, Any]],
                timestamp: Callable[[float | None], str | None]) -> dict[str, Any]:
    """A note in the shape of GitLab's documented example (Notes API, list project issue notes)."""
    author = user(note.author)
    # The docs' author has email and created_at; a note's author is a "user basic" otherwise.
    author = {key: author[key] for key in ("id", "username", "name", "state") if key in author}
    author.update({"email": f"{note.author}@example.com", "created_at": timestamp(note.created_at - 86400.0)})
    return {
        "id": note.id,
        "body": note.body,
        "attachment": None,
        "author": author,
        "created_at": timestamp(note.created_at),
        "updated_at": timestamp(note.updated_at),
        "system": False,
        "noteable_id": note.issue_id,
        "noteable_type": "Issue",
        "project_id": note.project_id,
        "noteable_iid": note.issue_iid,
        "resolvable": False,
        "confidential": note.internal,
        "internal": note.internal,
        "imported": False,
        "imported_from": "none",
    }

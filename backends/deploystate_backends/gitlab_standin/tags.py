"""Repository tags, and the package builds of an auto-deploy version.

GitLab runs a tag pipeline only for a tag that exists, so the stand-in's tags are the refs of its
tag pipelines: a tag appears with its first pipeline and points at that pipeline's commit.

Package tags extend the auto-deploy version with commit ids (see domain.md): CNG builds
``VERSION+<gitlab_sha12>``, Omnibus ``VERSION+<gitlab_sha12>.<omnibus_sha12>``.

Search follows GitLab's ``GitRefsFinder``: case-insensitive; ``^term`` and ``term$`` anchor the
term and ``*`` matches anything; a plain term matches anywhere in the name, an exact match first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from deploystate_backends.gitlab_standin.render import timestamp
from deploystate_backends.gitlab_standin.specs import CNG, OMNIBUS, ProjectSpec, Script
from deploystate_backends.gitlab_standin.world import Seed, World, fake_sha

# The project whose commit the package tags name first (GitLab itself).
GITLAB_SOURCE = "gitlab-org/security/gitlab"


@attrs.frozen
class Tag:
    name: str
    target: str  # the commit it points at
    created_at: float


def package_tags(version: str) -> tuple[str, str]:
    """The CNG and Omnibus package tags built for auto-deploy ``version``."""
    gitlab_sha = fake_sha(GITLAB_SOURCE, version)[:12]
    omnibus_sha = fake_sha(OMNIBUS.path, version)[:12]
    return f"{version}+{gitlab_sha}", f"{version}+{gitlab_sha}.{omnibus_sha}"


def seed_package_builds(world: World, version: str, *, after_s: float = 0.0, cng: Script | None = None,
                        omnibus: Script | None = None) -> tuple[Seed, Seed]:
    """CNG and Omnibus pipelines for ``version``'s package tags, appearing ``after_s`` from now."""
    cng_tag, omnibus_tag = package_tags(version)
    return (world.seed_pipeline(CNG.path, cng_tag, after_s=after_s, script=cng),
            world.seed_pipeline(OMNIBUS.path, omnibus_tag, after_s=after_s, script=omnibus))


def _version_key(tag: Tag) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", tag.name)]


ORDER_BY: dict[str, Callable[[Tag], Any]] = {
    "name": lambda t: t.name,
    "updated": lambda t: (t.created_at, t.name),
    "version": _version_key,
}


def _matcher(term: str) -> re.Pattern[str]:
    pattern = re.escape(term.lower())
    if any(op in term for op in "^$*"):
        pattern = pattern.replace(r"\^", "^", 1).replace(r"\*", ".*?").replace(r"\$", "$", 1)
    return re.compile(pattern)


def find_tags(world: World, spec: ProjectSpec, *, search: str | None = None, order_by: str = "updated",
              sort: str = "desc") -> list[Tag]:
    """``spec``'s tags as ``GET /projects/:id/repository/tags`` lists them (call under ``world.lock``)."""
    tags: dict[str, Tag] = {}
    for pipeline in world.pipelines(spec):
        if pipeline.tag and pipeline.ref not in tags:
            tags[pipeline.ref] = Tag(pipeline.ref, pipeline.sha, pipeline.created_at)
    found = sorted(tags.values(), key=ORDER_BY[order_by], reverse=sort == "desc")
    if not search:
        return found
    matcher = _matcher(search)
    found = [t for t in found if matcher.search(t.name.lower())]
    if not any(op in search for op in "^$*"):
        found.sort(key=lambda t: t.name.lower() != search.lower())  # stable: an exact match first
    return found


def render_tag(tag: Tag, base_url: str, spec: ProjectSpec, user: str) -> dict[str, Any]:
    """A tag in the shape of GitLab's documented example (Tags API, list project repository tags)."""
    when = timestamp(tag.created_at)
    return {
        "commit": {
            "id": tag.target,
            "short_id": tag.target[:8],
            "title": f"Release {tag.name}",
            "created_at": when,
            "parent_ids": [fake_sha(spec.path, tag.name, "parent")],
            "message": f"Release {tag.name}",
            "author_name": user,
            "author_email": f"{user}@example.com",
            "authored_date": when,
            "committer_name": user,
            "committer_email": f"{user}@example.com",
            "committed_date": when,
            "web_url": f"{base_url.rstrip('/')}/{spec.path}/-/commit/{tag.target}",
        },
        "release": None,
        "name": tag.name,
        "target": tag.target,
        "message": None,
        "protected": True,
        "created_at": when,
    }

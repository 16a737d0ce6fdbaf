"""Package builds on GitLab: the newest pipeline whose ref is the package's tag.

Package tags extend the auto-deploy version with commit ids (``13.10.202103011220+abc...``), so
the tag is found by a prefix search in the packaging project's tags, then its pipelines.
"""

from __future__ import annotations

from typing import Any

import gitlab

from deploystate.ports import BackendError, Outcome, PackageBuild
from deploystate_backends.gitlab import client
from deploystate_backends.gitlab.settings import GitLabSettings
from deploystate_backends.gitlab.statuses import outcome


class GitLabPackages:
    def __init__(self, gl: gitlab.Gitlab, settings: GitLabSettings, secrets: tuple[str, ...] = ()) -> None:
        self._gl = gl
        self._settings = settings
        self._secrets = secrets
        self._tags: dict[tuple[str, str], str] = {}
        self.projects = {"cng": settings.cng_project, "omnibus": settings.omnibus_project}

    def tag(self, package: str, version: str) -> str | None:
        """The package tag built for ``version``, once it exists (then remembered)."""
        cached = self._tags.get((package, version))
        if cached is not None:
            return cached
        project = self._gl.projects.get(self.projects[package], lazy=True)
        found: list[Any] = client.read(
            lambda: project.tags.list(search=f"^{version}", per_page=20, page=1),
            f"searching {package} tags for {version}", self._settings, self._secrets)
        names = sorted((str(t.name) for t in found if t.name == version or t.name.startswith(f"{version}+")),
                       reverse=True)
        if not names:
            return None
        self._tags[(package, version)] = names[0]
        return names[0]

    def status(self, package: str, version: str) -> PackageBuild:
        if package not in self.projects:
            raise BackendError(f"no project for package {package!r}: the GitLab backend watches "
                               f"{' and '.join(self.projects)} builds; fix the spec's package_wait step",
                               transient=False)
        tag = self.tag(package, version)
        if tag is None:
            return PackageBuild(package, version, "missing", Outcome.MISSING)
        project = self._gl.projects.get(self.projects[package], lazy=True)
        pipelines: list[Any] = client.read(
            lambda: project.pipelines.list(ref=tag, order_by="id", sort="desc", per_page=1, page=1),
            f"reading {package} pipelines for {tag}", self._settings, self._secrets)
        if not pipelines:
            return PackageBuild(package, tag, "missing", Outcome.MISSING)
        newest = pipelines[0]
        return PackageBuild(package, tag, str(newest.status), outcome(str(newest.status)),
                            getattr(newest, "web_url", None))

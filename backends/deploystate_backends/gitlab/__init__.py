"""The GitLab backend: real deployer pipelines and package builds, through python-gitlab.

Entry point ``gitlab`` in the ``deploystate.backends`` group.  Settings come from
``[backends.gitlab]``; tokens from the environment variables those settings name.
"""

from __future__ import annotations

from collections.abc import Mapping

from deploystate.clock import SystemClock
from deploystate.ports import Backends
from deploystate_backends.autodeploy import RUNBOOK, check_version
from deploystate_backends.gitlab.access import GitLabAccessError, check_access
from deploystate_backends.gitlab.client import connect
from deploystate_backends.gitlab.deployer import GitLabDeployer
from deploystate_backends.gitlab.packages import GitLabPackages
from deploystate_backends.gitlab.rehearsal import RehearsalClock
from deploystate_backends.gitlab.settings import GitLabSettings, GitLabSettingsError
from deploystate_backends.gitlab.watching import watch

__all__ = [
    "GitLabAccessError", "GitLabDeployer", "GitLabPackages", "GitLabSettings", "GitLabSettingsError",
    "RehearsalClock", "create",
]


def create(settings: Mapping[str, object], env: Mapping[str, str] | None = None) -> Backends:
    """Check the settings now, and both tokens against GitLab when a rollout is created (``prepare``)."""
    parsed = GitLabSettings.from_mapping(settings)
    trigger_token = parsed.token("trigger", env)
    api_token = parsed.token("api", env)
    secrets = (trigger_token, api_token)
    gl = connect(parsed, api_token)
    packages = GitLabPackages(gl, parsed, secrets)
    deployer = GitLabDeployer(gl, parsed, trigger_token, packages, secrets)
    clock = SystemClock() if parsed.clock_anchor is None or parsed.clock_speed == 1 else RehearsalClock(
        parsed.clock_speed, parsed.clock_anchor)
    rehearsal = f" (rehearsal clock x{parsed.clock_speed:g})" if isinstance(clock, RehearsalClock) else ""
    description = f"gitlab {parsed.url} deployer {parsed.deployer_project}{rehearsal}"
    # What its deployments reach, whatever the way of watching them (hooks or polls).
    identity = f"gitlab {parsed.url} deployer project {parsed.deployer_project}"
    secret = parsed.webhook_secret(env)

    def prepare(version: str) -> None:
        # Before a rollout is written: both tokens work (four reads; nothing is created).
        check_access(gl, parsed, trigger_token, secrets)

    if parsed.webhook_listen is not None and secret is not None:
        # Listening starts with the first read, so commands that only look (status) bind no port.
        hooks = watch(deployer, packages, parsed, clock, secret=secret, listen=parsed.webhook_listen,
                      start=False)

        def close_all() -> None:
            try:
                hooks.listener.stop()
            finally:
                gl.session.close()

        return Backends(deployer=hooks.deployer, packages=hooks.packages, clock=clock,
                        description=f"{description}; Pipeline Hooks on {parsed.webhook_listen}",
                        check_version=check_version, prepare=prepare, runbook=RUNBOOK, closer=close_all,
                        identity=identity)
    return Backends(deployer=deployer, packages=packages, clock=clock, description=description,
                    check_version=check_version, prepare=prepare, runbook=RUNBOOK, closer=gl.session.close,
                    identity=identity)

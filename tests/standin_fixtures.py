"""Pytest fixtures for the GitLab stand-in (loaded through ``pytest_plugins`` in conftest.py).

``gitlab_standin``: a stand-in on a free loopback port with the default projects, a virtual
clock (``standin.world.advance(seconds)``) and a seeded fault plan; stopped after the test.
It is the :class:`Standin` itself: ``.url``, ``.world``, ``.faults``, ``.counters()``.

``standin_factory``: builds more stand-ins (own projects, tokens, clocks), all stopped after the test.

``gitlab_client``: python-gitlab connected to ``gitlab_standin`` with a 5 s time-out.
"""

from __future__ import annotations

import http.server
import json
from collections.abc import Callable, Iterator
from typing import Any

import gitlab
import pytest
import requests
from deploystate_backends.gitlab_standin import FaultPlan, Standin, VirtualClock, World

STANDIN_TOKEN = "standin-token"
DEPLOYER_TRIGGER_TOKEN = "deployer-trigger-token"


def make_client(standin: Standin, **options: Any) -> gitlab.Gitlab:
    """python-gitlab for ``standin``; proxies from the environment are ignored (loopback)."""
    session = requests.Session()
    session.trust_env = False
    options.setdefault("private_token", STANDIN_TOKEN)
    options.setdefault("timeout", 5)
    return gitlab.Gitlab(standin.url, session=session, **options)


@pytest.fixture
def standin_factory() -> Iterator[Callable[..., Standin]]:
    started: list[Standin] = []

    def make(world: World | None = None, *, seed: int = 1234, **options: Any) -> Standin:
        world = world if world is not None else World(clock=VirtualClock())
        standin = Standin(world, faults=FaultPlan(seed=seed), **options).start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()


@pytest.fixture
def gitlab_standin(standin_factory: Callable[..., Standin]) -> Standin:
    return standin_factory()


@pytest.fixture
def gitlab_client(gitlab_standin: Standin) -> gitlab.Gitlab:
    return make_client(gitlab_standin)


class HookCapture(http.server.BaseHTTPRequestHandler):
    """A receiver of the stand-in's Pipeline Hooks: subclass it with a ``received`` list, which gets
    each hook's headers and body."""

    received: list[tuple[dict[str, str], dict[str, Any]]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((dict(self.headers.items()), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass

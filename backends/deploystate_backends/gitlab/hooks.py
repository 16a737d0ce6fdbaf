"""Receiving GitLab's Pipeline Hooks: a small HTTP server thread that checks and dedupes them.

A hook is only a hint that a pipeline changed: it wakes the runner, which then reads the
pipeline through the API (the truth).  So a hook that comes twice, late or out of order does no
harm, and one that never comes is caught by the safety polls.  What the receiver must get right
is refusing strangers: the ``X-Gitlab-Token`` header must equal the configured secret (compared in
constant time), or the answer is 401.  The secret never appears in a log line, error or answer.

GitLab counts any non-2xx answer as a failed delivery and disables hooks that keep failing, so
hooks of other kinds (job events, pushes) are answered 200 and ignored rather than refused.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import attrs

from deploystate.errors import DeploystateError

logger = logging.getLogger("deploystate_backends.gitlab.hooks")

PIPELINE_EVENT = "Pipeline Hook"
MAX_BODY = 1 << 20  # GitLab's pipeline payloads are a few kB; anything this large is not one
REMEMBERED_KEYS = 10_000


class HookSetupError(DeploystateError):
    pass


@attrs.frozen
class PipelineEvent:
    """What a Pipeline Hook says, reduced to what waiting needs."""

    project_id: int | None
    project_path: str
    pipeline_id: int
    ref: str
    status: str
    key: str | None = None


@attrs.define
class HookStats:
    accepted: int = 0
    duplicates: int = 0
    refused: int = 0  # bad or missing secret
    ignored: int = 0  # another kind of hook
    malformed: int = 0


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8930"`` -> ("127.0.0.1", 8930); ``[::1]:8930`` for IPv6."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise HookSetupError(f"webhook_listen = {text!r} is not HOST:PORT, e.g. \"127.0.0.1:8930\"")
    return host, int(port)


def parse_event(body: bytes, key: str | None) -> PipelineEvent:
    """The event in a Pipeline Hook's body; ValueError says what is missing."""
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict) or data.get("object_kind") != "pipeline":
        raise ValueError("object_kind is not 'pipeline'")
    attributes, project = data.get("object_attributes"), data.get("project")
    if not isinstance(attributes, dict) or not isinstance(project, dict):
        raise ValueError("object_attributes or project is missing")
    pipeline_id, status = attributes.get("id"), attributes.get("status")
    if not isinstance(pipeline_id, int) or isinstance(pipeline_id, bool) or not isinstance(status, str):
        raise ValueError("object_attributes.id (a number) or object_attributes.status is missing")
    project_id = project.get("id")
    return PipelineEvent(
        project_id=project_id if isinstance(project_id, int) and not isinstance(project_id, bool) else None,
        project_path=str(project.get("path_with_namespace") or ""),
        pipeline_id=pipeline_id, ref=str(attributes.get("ref") or ""), status=status, key=key)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: HookReceiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # answers are tiny; do not wait for delayed ACKs
    server_version = "deploystate-hooks"

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds no secret (it travels in a header); headers are never logged.
        logger.debug("%s %s", self.address_string(), format % args)

    def _answer(self, status: int, body: dict[str, object], *, close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(405, {"message": "405 Method Not Allowed: send Pipeline Hooks with POST"})

    do_PUT = do_DELETE = do_PATCH = do_GET

    def do_POST(self) -> None:
        receiver = self.server.receiver
        # The secret first: a stranger's body is not even read.
        if not receiver._authentic(self.headers.get("X-Gitlab-Token")):
            how = "without" if self.headers.get("X-Gitlab-Token") is None else "with a wrong"
            receiver._count("refused")
            logger.warning("refused a webhook from %s %s X-Gitlab-Token; check the hook's secret token "
                           "in GitLab against the webhook secret variable", self.client_address[0], how)
            self._answer(401, {"message": "401 Unauthorized"}, close=True)
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            receiver._count("malformed")
            self._answer(413 if length > MAX_BODY else 400, {"message": "bad Content-Length"}, close=True)
            return
        body = self.rfile.read(length)
        event_kind = self.headers.get("X-Gitlab-Event")
        if event_kind != PIPELINE_EVENT:
            receiver._count("ignored")
            logger.info("ignored a %r webhook; only Pipeline Hooks are used (untick the other events in "
                        "GitLab's hook settings)", (event_kind or "")[:40])
            self._answer(200, {"message": "ignored: not a Pipeline Hook"})
            return
        key = self.headers.get("Idempotency-Key") or self.headers.get("X-Gitlab-Event-UUID")
        try:
            event = parse_event(body, key)
        except ValueError as error:
            receiver._count("malformed")
            logger.warning("malformed Pipeline Hook from %s: %s", self.client_address[0], error)
            self._answer(400, {"message": f"400 Bad Request: {error}"})
            return
        if not receiver._first_time(key):
            receiver._count("duplicates")
            self._answer(200, {"message": "duplicate delivery; already handled"})
            return
        receiver._count("accepted")
        try:
            receiver.on_event(event)
        except Exception:
            logger.exception("handling Pipeline Hook for pipeline %s failed", event.pipeline_id)
        self._answer(200, {"message": "ok"})


class HookReceiver:
    """Listens on ``host:port`` and calls ``on_event`` once per authentic Pipeline Hook delivery."""

    def __init__(self, host: str, port: int, secret: str, on_event: Callable[[PipelineEvent], None]) -> None:
        if not secret:
            raise HookSetupError("the webhook secret is empty; set the environment variable the "
                                 "settings name to the hook's secret token")
        self._secret = secret.encode()
        self.on_event = on_event
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.stats = HookStats()
        try:
            self._httpd = _Server((host, port), _Handler)
        except OSError as error:
            raise HookSetupError(f"cannot listen for webhooks on {host}:{port} ({error.strerror}); pick a "
                                 "free port in webhook_listen") from None
        self._httpd.receiver = self
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"HookReceiver({self.url})"

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/hooks/gitlab"

    def start(self) -> HookReceiver:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="gitlab-hooks", daemon=True)
            self._thread.start()
            logger.info("listening for GitLab Pipeline Hooks on %s", self.url)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> HookReceiver:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _authentic(self, token: str | None) -> bool:
        if token is None:
            return False
        # http.server decodes headers as Latin-1: encoding back gives the bytes as sent.
        return hmac.compare_digest(token.encode("latin-1"), self._secret)

    def _first_time(self, key: str | None) -> bool:
        if key is None:
            return True  # nothing to dedupe by; a repeat costs one extra read at most
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > REMEMBERED_KEYS:
                self._seen.popitem(last=False)
            return True

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.stats, what, getattr(self.stats, what) + 1)

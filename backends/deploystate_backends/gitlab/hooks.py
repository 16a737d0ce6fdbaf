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
import contextlib
import hmac
import json
import logging
import sys
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import attrs

from deploystate.errors import DeploystateError

logger = logging.getLogger("deploystate_backends.gitlab.hooks")

PIPELINE_EVENT = "Pipeline Hook"
HOOK_PATH = "/hooks/gitlab"
MAX_BODY = 1 << 20  # GitLab's pipeline payloads are a few kB; anything this large is not one
REMEMBERED_KEYS = 10_000
TIMEOUT_S = 10.0  # GitLab sends a hook at once; a connection that idles this long is dropped
MAX_CONNECTIONS = 32  # GitLab posts a few hooks at a time; more at once are strangers
BUSY_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
               b"Connection: close\r\nContent-Length: 39\r\n\r\n{\"message\": \"503 too many connections\"}")


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
    busy: int = 0  # connections turned away: every slot was taken


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


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def delivery_key(headers: Any) -> str | None:
    """What tells one delivery from another: ``Idempotency-Key`` (the same when GitLab repeats a
    delivery), else the hook's ``X-Gitlab-Webhook-UUID`` with the event's ``X-Gitlab-Event-UUID``:
    hooks fired by one event (or recursively from it) share the event's UUID, so it alone would
    drop every hook but the first.  None: nothing to tell repeats by."""
    key = headers.get("Idempotency-Key")
    if key:
        return str(key)
    hook, event = headers.get("X-Gitlab-Webhook-UUID"), headers.get("X-Gitlab-Event-UUID")
    return f"{hook}/{event}" if hook and event else None


class _Server(ThreadingHTTPServer):
    """At most ``max_connections`` at once, each in its own thread; more are turned away at the
    door with a 503, without a thread.  Errors of a connection are logged in one line, never as a
    traceback on stderr (socketserver's default)."""

    daemon_threads = True
    request_queue_size = 128  # a burst of connections waits in the kernel, not refused by it
    receiver: HookReceiver

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.receiver._slots.acquire(blocking=False):
            self.receiver._busy(request, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.receiver._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.receiver._slot_freed()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Reached only if a handler lets an error out; it says what in one line.
        logger.debug("connection from %s failed: %s", _client(client_address), _why())


def _client(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)


def _why() -> str:
    kind = sys.exc_info()[0]
    return kind.__name__ if kind is not None else "unknown error"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # answers are tiny; do not wait for delayed ACKs
    server_version = "deploystate-hooks"
    said = False  # one log line per connection at most

    def setup(self) -> None:
        self.request.settimeout(self.server.receiver.timeout_s)  # every read and write of this connection
        super().setup()

    @property
    def client(self) -> str:
        return _client(self.client_address)

    def say(self, level: int, message: str, *args: object) -> None:
        if not self.said:
            self.said = True
            logger.log(level, message, *args)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ValueError, EOFError) as error:  # hung up, reset, cut short, or too slow
            self.close_connection = True
            self.say(logging.DEBUG, "connection from %s ended early (%s)", self.client, type(error).__name__)

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the answer could not be flushed: the client is gone
            super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # no access log: a line per hook says nothing the stats do not

    def log_message(self, format: str, *args: Any) -> None:
        # Malformed requests and time-outs (the request line holds no secret; headers are never logged).
        self.say(logging.DEBUG, "%s %s", self.client, format % args)

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

    def _on_hook_path(self) -> bool:
        path = urllib.parse.urlsplit(self.path).path
        if path.rstrip("/") == HOOK_PATH:
            return True
        self._answer(404, {"message": f"404 Not Found: Pipeline Hooks go to {HOOK_PATH}"}, close=True)
        return False

    def do_GET(self) -> None:
        if self._on_hook_path():
            self._answer(405, {"message": "405 Method Not Allowed: send Pipeline Hooks with POST"})

    do_PUT = do_DELETE = do_PATCH = do_GET

    def _body(self) -> bytes:
        """The body, as sent with Content-Length or in chunks; _BodyError says what is wrong."""
        coding = self.headers.get("Transfer-Encoding")
        if coding is not None:
            if coding.split(",")[-1].strip().lower() != "chunked":
                raise _BodyError(400, f"unsupported Transfer-Encoding {coding[:40]!r}")
            return self._chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length > MAX_BODY:
            raise _BodyError(413, "body too large")
        if length < 0:
            raise _BodyError(400, "bad Content-Length")
        body = self.rfile.read(length)
        if len(body) < length:
            raise EOFError("the body ended early")
        return body

    def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise EOFError("the body ended early")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, "bad chunk size") from None
            if size < 0 or len(body) + size > MAX_BODY:
                raise _BodyError(413 if size > 0 else 400, "body too large")
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise EOFError("the body ended early")
            body += chunk
            if self.rfile.readline(3).strip():
                raise _BodyError(400, "a chunk is longer than its size")
        for _ in range(64):  # trailer fields, up to the empty line
            if self.rfile.readline(8192).strip() == b"":
                break
        return bytes(body)

    def do_POST(self) -> None:
        receiver = self.server.receiver
        if not self._on_hook_path():
            return
        # The secret first: a stranger's body is not even read.
        if not receiver._authentic(self.headers.get("X-Gitlab-Token")):
            how = "without" if self.headers.get("X-Gitlab-Token") is None else "with a wrong"
            receiver._count("refused")
            level = logging.WARNING if receiver._first_refusal(self.client_address[0]) else logging.DEBUG
            self.say(level, "refused a webhook from %s %s X-Gitlab-Token; check the hook's secret token in "
                     "GitLab against the webhook secret variable", self.client, how)
            self._answer(401, {"message": "401 Unauthorized"}, close=True)
            return
        try:
            body = self._body()
        except _BodyError as error:
            receiver._count("malformed")
            self._answer(error.status, {"message": f"{error.status} {error}"}, close=True)
            return
        event_kind = self.headers.get("X-Gitlab-Event")
        if event_kind != PIPELINE_EVENT:
            receiver._count("ignored")
            self.say(logging.INFO, "ignored a %r webhook from %s; only Pipeline Hooks are used (untick the "
                     "other events in GitLab's hook settings)", (event_kind or "")[:40], self.client)
            self._answer(200, {"message": "ignored: not a Pipeline Hook"})
            return
        key = delivery_key(self.headers)
        try:
            event = parse_event(body, key)
        except ValueError as error:
            receiver._count("malformed")
            self.say(logging.WARNING, "malformed Pipeline Hook from %s: %s", self.client, error)
            self._answer(400, {"message": f"400 Bad Request: {error}"})
            return
        if not receiver._first_time(key):
            receiver._count("duplicates")
            self._answer(200, {"message": "duplicate delivery; already handled"})
            return
        receiver._count("accepted")
        try:
            receiver.on_event(event)
        except Exception:  # our own bug, not the sender's: worth its traceback
            self.said = True
            logger.exception("handling Pipeline Hook for pipeline %s failed", event.pipeline_id)
        self._answer(200, {"message": "ok"})


class HookReceiver:
    """Listens on ``host:port`` and calls ``on_event`` once per authentic Pipeline Hook delivery.

    Strangers cost little: each read or write of a connection waits ``timeout_s`` at most, at most
    ``max_connections`` are served at once (others get a 503 and no thread), and a connection logs
    one line at most, never a traceback.
    """

    def __init__(self, host: str, port: int, secret: str, on_event: Callable[[PipelineEvent], None], *,
                 timeout_s: float = TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> None:
        if not secret:
            raise HookSetupError("the webhook secret is empty; set the environment variable the "
                                 "settings name to the hook's secret token")
        self._secret = secret.encode()
        self.on_event = on_event
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._max_connections = max_connections
        self._full = False  # the cap was reached and said so; said again once it was not
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._refusers: collections.OrderedDict[str, None] = collections.OrderedDict()
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
        return f"http://{host!s}:{port}{HOOK_PATH}"

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

    def _first_refusal(self, host: str) -> bool:
        """Whether ``host`` is refused for the first time (warned once; later refusals are debug)."""
        with self._lock:
            if host in self._refusers:
                return False
            self._refusers[host] = None
            if len(self._refusers) > REMEMBERED_KEYS:
                self._refusers.popitem(last=False)
            return True

    def _busy(self, request: Any, client_address: Any) -> None:
        """Turn a connection away without a thread: every slot is taken."""
        with self._lock:
            self.stats.busy += 1
            first, self._full = not self._full, True
        if first:
            logger.warning("%s connections to the webhook receiver are open, its limit; turning %s and "
                           "later ones away with 503 until some end", self._max_connections,
                           _client(client_address))
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(BUSY_ANSWER)

    def _slot_freed(self) -> None:
        self._slots.release()
        with self._lock:
            self._full = False

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.stats, what, getattr(self.stats, what) + 1)

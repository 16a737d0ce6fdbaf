"""The HTTP side: a threaded standard-library server on loopback, faults applied at the door.

``Standin`` bundles the server with its world, fault plan and counters; ``start()`` runs it in
a background thread (tests), ``serve()`` blocks (rehearsals).  Every answer is JSON, including
the server's own errors for malformed requests.  Logs go to the ``deploystate_backends.
gitlab_standin`` logger, with every token-like query parameter redacted; headers and bodies are
never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from deploystate_backends.gitlab_standin.api import Api, Request, Response
from deploystate_backends.gitlab_standin.counters import CountersSnapshot
from deploystate_backends.gitlab_standin.faults import Fault, FaultKind, FaultPlan
from deploystate_backends.gitlab_standin.specs import DEFAULT_TOKENS
from deploystate_backends.gitlab_standin.world import World

logger = logging.getLogger("deploystate_backends.gitlab_standin")

MAX_BODY = 1 << 20
_SECRET = re.compile(r"(?i)((?:private_token|job_token|access_token|token)=)[^&\s\"']*")
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout", 429: "Too Many Requests"}


def redact(text: str) -> str:
    """Hide token values in text that may hold a request line or URL."""
    return _SECRET.sub(r"\1[REDACTED]", text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung (slow) handler must not keep the process alive
    standin: Standin


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' sessions expect
    # The base class assumes HTTP/0.9 for a malformed request line and then sends no status
    # line or headers at all; an answer with a head is more useful to whoever sent it.
    default_request_version = "HTTP/1.0"
    # Headers and body leave in two writes; with Nagle's algorithm and delayed ACKs on loopback
    # every answer would wait ~40 ms.
    disable_nagle_algorithm = True
    server_version = "gitlab-standin"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.standin._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.standin._track(self.connection, add=False)

    # Every method goes through one dispatcher; unknown methods get the base class's 501.
    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), redact(format % args))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class answers malformed requests with HTML; GitLab's API answers JSON."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        text = message or self.responses.get(code, ("",))[0]
        with contextlib.suppress(OSError):
            self._write(Response(code, {"error": f"{code} {text}"}))

    def _write(self, response: Response) -> None:
        body = json.dumps(response.body).encode()
        self.send_response(response.status, _REASONS.get(response.status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.send_error(411, "Length Required")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return None
        if length > MAX_BODY:
            self.send_error(413, "Payload Too Large")
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _drop(self) -> None:
        # No answer at all: the client sees the connection closed (RemoteDisconnected).
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _dispatch(self) -> None:
        standin = self.server.standin
        body = self._read_body()
        if body is None:
            return
        raw_path, _, query_text = self.path.partition("?")
        method = self.command
        route, _ = standin.api.route(method, raw_path)
        standin.world.counters.request(method, route)
        fault = standin.faults.decide(route, method)
        if fault is not None:
            standin.world.counters.fault(fault.kind.value, route)
            if fault.kind.before_processing:
                self._fail(fault)
                return
        host = self.headers.get("Host")
        request = Request(
            method=method,
            raw_path=raw_path,
            query=urllib.parse.parse_qs(query_text, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            base_url=f"http://{host}" if host else standin.url,
        )
        try:
            response = standin.api.handle(request)
        except Exception:
            logger.exception("stand-in bug while answering %s %s", method, redact(raw_path))
            response = Response(500, {"message": "500 Internal Server Error"})
        if fault is not None and fault.kind == FaultKind.SLOW and standin._stopping.wait(fault.delay_s):
            self._drop()  # stopping: do not hold the server up for a late answer
            return
        if fault is not None and fault.kind == FaultKind.LOST_RESPONSE:
            self._fail(Fault(FaultKind.DROP) if fault.drop else Fault(FaultKind.ERROR, fault.status))
            return
        try:
            self._write(response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its time-out) before the answer

    def _fail(self, fault: Fault) -> None:
        if fault.kind == FaultKind.DROP:
            self._drop()
            return
        try:
            if fault.kind == FaultKind.RATE_LIMIT:
                self._write(Response(429, {"message": "429 Too Many Requests - Retry later"},
                                     (("Retry-After", str(fault.retry_after)),)))
            else:
                reason = _REASONS.get(fault.status, "Error")
                self._write(Response(fault.status, {"message": f"{fault.status} {reason}"}))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class Standin:
    """A GitLab stand-in on ``127.0.0.1``: ``url``, ``world``, ``faults``, ``counters()``.

    ``port=0`` picks a free port.  Use as a context manager, or ``start()``/``stop()``.
    ``maintainer_tokens`` and ``mask_trigger_tokens`` shape ``GET /projects/:id/triggers`` (see
    :class:`~deploystate_backends.gitlab_standin.api.Api`).
    """

    def __init__(
        self,
        world: World | None = None,
        *,
        faults: FaultPlan | None = None,
        tokens: frozenset[str] = DEFAULT_TOKENS,
        host: str = "127.0.0.1",
        port: int = 0,
        maintainer_tokens: frozenset[str] | None = None,
        mask_trigger_tokens: bool = False,
    ) -> None:
        self.world = world if world is not None else World()
        self.faults = faults if faults is not None else FaultPlan()
        self.api = Api(self.world, tokens, maintainer_tokens=maintainer_tokens,
                       mask_trigger_tokens=mask_trigger_tokens)
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.standin = self
        self._thread: threading.Thread | None = None
        self._serving = False  # shutdown() would wait forever for a loop that never ran

    @property
    def url(self) -> str:
        """The base URL to give python-gitlab (``gitlab.Gitlab(url, ...)``)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v4"

    def counters(self) -> CountersSnapshot:
        return self.world.counters.snapshot()

    def start(self) -> Standin:
        if self._thread is not None:
            raise RuntimeError("the stand-in is running already; stop() it before starting again")
        self._thread = threading.Thread(target=self.serve_forever, name="gitlab-standin", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` is called from another thread."""
        self._serving = True
        logger.info("GitLab stand-in listening on %s", self.url)
        # A short poll keeps stop() quick: tests start and stop a server each.
        self._httpd.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        """Stop serving, cut open connections (and slow answers), release the port."""
        self._stopping.set()
        if self._serving:
            self._httpd.shutdown()
        with self._connections_lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def __enter__(self) -> Standin:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(
    world: World | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: FaultPlan | None = None,
    tokens: frozenset[str] = DEFAULT_TOKENS,
    ready: Callable[[Standin], None] | None = None,
) -> None:
    """Run a stand-in in this thread until interrupted (Ctrl-C): for rehearsals.

    ``ready`` is called with the running stand-in once it listens (e.g. to print its URL).
    """
    standin = Standin(world, faults=faults, tokens=tokens, host=host, port=port)
    if ready is not None:
        ready(standin)
    try:
        standin.serve_forever()
    except KeyboardInterrupt:
        logger.info("GitLab stand-in interrupted; stopping")
    finally:
        standin.stop()

"""Local HTTP receivers that stand in for Slack's incoming webhook endpoint and for a generic
(Standard Webhooks) consumer, for tests of notifiers and of delivery.

A :class:`Receiver` is a real HTTP server (stdlib ``http.server``) on 127.0.0.1 and a free port,
serving in a thread of the test process, so ``deploystate`` subprocesses (killed with -9 or not)
can deliver to it while the test reads its counts.  Each receiver:

- answers by a scripted fault plan, consumed one request at a time:
  ``receiver.script(Fault(500, times=3), Fault(429, retry_after=2))`` answers 500 three times,
  then 429 with ``Retry-After: 2`` once, then 200 for good (``Fault(0)`` drops the connection
  without an answer; ``delay_s`` answers late, to catch a sender in flight);
- checks what arrives: for ``kind="slack"`` the payload shape ``slack_sdk``'s ``WebhookClient``
  sends (a JSON object with ``text`` and/or Block Kit ``blocks``, within Slack's limits) and
  answers like Slack (200 ``ok``; 400 ``invalid_blocks`` / ``no_text`` / ``invalid_payload``);
  for ``kind="webhook"`` with a ``secret``, the Standard Webhooks signature, verified by the
  ``standardwebhooks`` package (400 when it does not verify);
- keeps every request (``requests``), the accepted bodies in arrival order (``accepted``), and
  how often each notice was accepted (``counts()``; ``duplicates()`` names those accepted twice);
- with ``log_path``, rewrites a JSON snapshot after every request (atomically), for a test or a
  tool in another process: :func:`read_log`.

A notice's id is ``"<rollout>:<seq>"``: the ``webhook-id`` header of a generic webhook, or, for
Slack (whose payload has no id field), the record named in the context footer deploystate's
Slack messages end with (``deploystate · `ROLLOUT` · record SEQ · ...``).

Run one on its own (e.g. to point ``deploystate simulate`` at it by hand)::

    python tests/notify_receivers.py slack --port-file /tmp/port --log /tmp/slack.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

# A secret in Standard Webhooks' form (24 random bytes, base64): the tests' shared secret.
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SLACK_PATH = "/services/T0000TEST/B0000TEST/notARealSlackWebhookSecret0"
WEBHOOK_PATH = "/hooks/deploystate"

# The Slack footer's record reference (see the module docstring).
_SLACK_ID = re.compile(r"`([^`]+)` · record (\d+)")

# Block Kit limits Slack enforces on messages (https://docs.slack.dev/reference/block-kit/blocks).
_BLOCK_TYPES = {"section", "header", "context", "divider", "actions", "image", "rich_text", "input",
                "file", "video", "markdown", "table"}
_MAX_BLOCKS = 50


@dataclass(frozen=True)
class Fault:
    """Answer ``status`` to the next ``times`` requests (0: close the connection unanswered)."""

    status: int
    times: int = 1
    retry_after: float | None = None  # sent as Retry-After (a 429's, usually)
    body: str | None = None  # None: what Slack (or a plain consumer) says for that status
    delay_s: float = 0.0  # wait before answering (the request has been read by then)


@dataclass
class Delivery:
    """One request as the receiver saw it, and what it answered."""

    n: int  # 1, 2, ... in arrival order
    at: float  # time.time() when it was read
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: str
    notice_id: str | None
    status: int  # what was answered (0: dropped)
    problems: list[str] = field(default_factory=list)  # why a 400 refused it

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def slack_problems(headers: Mapping[str, str], body: bytes) -> tuple[str, list[str]]:
    """What Slack would refuse in this request: its error word and the reasons (none: accepted)."""
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    if not content_type.lower().startswith("application/json"):
        return "invalid_payload", [f"Content-Type {content_type!r} is not application/json"]
    try:
        payload = json.loads(body)
    except ValueError as error:
        return "invalid_payload", [f"body is not JSON: {error}"]
    if not isinstance(payload, dict):
        return "invalid_payload", ["body is not a JSON object"]
    problems: list[str] = []
    text, blocks = payload.get("text"), payload.get("blocks")
    if text is not None and not isinstance(text, str):
        problems.append("text is not a string")
    if not text and not blocks:
        return "no_text", ["neither text nor blocks"]
    if not text:
        # Slack accepts blocks alone, but notifications then show "This content can't be displayed".
        problems.append("no text fallback beside the blocks")
    if blocks is not None:
        problems += _block_problems(blocks)
    for key in ("channel", "username", "icon_emoji"):
        if key in payload and not isinstance(payload[key], str):
            problems.append(f"{key} is not a string")
    return ("invalid_blocks" if problems else ""), problems


def _text_problems(obj: Any, where: str, limit: int, types: tuple[str, ...] = ("plain_text", "mrkdwn")
                   ) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where} is not a text object"]
    problems = []
    if obj.get("type") not in types:
        problems.append(f"{where}.type {obj.get('type')!r} is not one of {types}")
    value = obj.get("text")
    if not isinstance(value, str) or not value:
        problems.append(f"{where}.text is empty or not a string")
    elif len(value) > limit:
        problems.append(f"{where}.text has {len(value)} characters, more than {limit}")
    return problems


def _block_problems(blocks: Any) -> list[str]:
    if not isinstance(blocks, list):
        return ["blocks is not a list"]
    if len(blocks) > _MAX_BLOCKS:
        return [f"{len(blocks)} blocks, more than {_MAX_BLOCKS}"]
    problems: list[str] = []
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        if not isinstance(block, dict) or block.get("type") not in _BLOCK_TYPES:
            problems.append(f"{where} has no known type")
            continue
        kind = block["type"]
        if "block_id" in block and (not isinstance(block["block_id"], str) or len(block["block_id"]) > 255):
            problems.append(f"{where}.block_id is not a string of at most 255 characters")
        if kind == "header":
            problems += _text_problems(block.get("text"), f"{where}.text", 150, ("plain_text",))
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                problems.append(f"{where} has neither text nor fields")
            if "text" in block:
                problems += _text_problems(block["text"], f"{where}.text", 3000)
            fields = block.get("fields", [])
            if not isinstance(fields, list) or len(fields) > 10:
                problems.append(f"{where}.fields is not a list of at most 10")
            else:
                for n, item in enumerate(fields):
                    problems += _text_problems(item, f"{where}.fields[{n}]", 2000)
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                problems.append(f"{where}.elements is not a list of 1 to 10")
            else:
                for n, item in enumerate(elements):
                    if isinstance(item, dict) and item.get("type") == "image":
                        continue
                    problems += _text_problems(item, f"{where}.elements[{n}]", 3000)
        elif kind == "divider" and set(block) - {"type", "block_id"}:
            problems.append(f"{where}: a divider has nothing but a type")
    return problems


def notice_id(headers: Mapping[str, str], body: bytes) -> str | None:
    """The notice a request carries: ``webhook-id``, or the record in a Slack message's footer."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if lowered.get("webhook-id"):
        return lowered["webhook-id"]
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    for block in payload.get("blocks") or () if isinstance(payload, dict) else ():
        if isinstance(block, dict) and block.get("type") == "context":
            for element in block.get("elements") or ():
                match = _SLACK_ID.search(str(element.get("text", ""))) if isinstance(element, dict) else None
                if match:
                    return f"{match.group(1)}:{match.group(2)}"
    return None


class Receiver:
    """One endpoint (``url``): a Slack incoming webhook (``kind="slack"``) or a generic webhook
    consumer (``kind="webhook"``; ``secret``: verify Standard Webhooks signatures with it)."""

    def __init__(self, kind: str = "slack", *, secret: str | None = None, faults: tuple[Fault, ...] = (),
                 log_path: str | Path | None = None, port: int = 0) -> None:
        if kind not in ("slack", "webhook"):
            raise ValueError(f"kind must be 'slack' or 'webhook', got {kind!r}")
        self.kind = kind
        self.secret = secret
        self.log_path = Path(log_path) if log_path is not None else None
        self.path = SLACK_PATH if kind == "slack" else WEBHOOK_PATH
        self._lock = threading.Condition()
        self._plan: list[list[Any]] = []
        self.requests: list[Delivery] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.script(*faults)

    # -- life ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def start(self) -> Receiver:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"{self.kind}-receiver:{self.port}", daemon=True)
            self._thread.start()
            self._write_log()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the plan -------------------------------------------------------------------------------
    def script(self, *faults: Fault) -> None:
        """Answer the next requests by ``faults`` in order (then 200), replacing any plan left."""
        with self._lock:
            self._plan = [[fault, fault.times] for fault in faults if fault.times > 0]

    def _next_fault(self) -> Fault | None:
        with self._lock:
            while self._plan and self._plan[0][1] <= 0:
                self._plan.pop(0)
            if not self._plan:
                return None
            self._plan[0][1] -= 1
            return self._plan[0][0]  # type: ignore[no-any-return]

    # -- what arrived ---------------------------------------------------------------------------
    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Every accepted body (parsed), in the order they arrived."""
        with self._lock:
            return [json.loads(d.body) for d in self.requests if d.accepted]

    def counts(self) -> dict[str, int]:
        """How many times each notice id was accepted."""
        with self._lock:
            return dict(Counter(d.notice_id for d in self.requests if d.accepted and d.notice_id))

    def attempts(self) -> dict[str, int]:
        """How many requests carried each notice id, whatever was answered."""
        with self._lock:
            return dict(Counter(d.notice_id for d in self.requests if d.notice_id))

    def duplicates(self) -> dict[str, int]:
        return {key: n for key, n in self.counts().items() if n > 1}

    def refused(self) -> list[Delivery]:
        """Requests refused for what they carried (a bad shape or signature), not by the plan."""
        with self._lock:
            return [d for d in self.requests if d.problems]

    def wait_for(self, accepted: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``accepted`` bodies have been accepted; AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(d.accepted for d in self.requests) < accepted:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.kind} receiver accepted "
                                         f"{sum(d.accepted for d in self.requests)} of {accepted} "
                                         f"within {timeout} s; requests: {self.summary()}")
                self._lock.wait(left)
        return self.accepted

    def summary(self) -> list[tuple[int, str | None, int]]:
        with self._lock:
            return [(d.n, d.notice_id, d.status) for d in self.requests]

    def snapshot(self) -> dict[str, Any]:
        """What the log file holds: the url, every request, the counts."""
        with self._lock:
            return {"kind": self.kind, "url": self.url, "pid": os.getpid(),
                    "requests": [asdict(d) for d in self.requests],
                    "counts": dict(Counter(d.notice_id for d in self.requests if d.accepted and d.notice_id)),
                    "accepted": sum(d.accepted for d in self.requests)}

    def _write_log(self) -> None:
        if self.log_path is None:
            return
        text = json.dumps(self.snapshot(), indent=1)
        # Atomic: a reader in another process never sees half a file.
        fd, temporary = tempfile.mkstemp(dir=self.log_path.parent, prefix=self.log_path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        os.replace(temporary, self.log_path)

    # -- HTTP -----------------------------------------------------------------------------------
    def _judge(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str,
                                                                                              list[str]]:
        """The answer (status, body, problems) to a request the fault plan lets through."""
        if method != "POST":
            return 405, "invalid_method", ["not a POST"]
        if path != self.path:
            # Slack answers an unknown or revoked webhook with 404 no_service.
            return 404, "no_service", [f"no endpoint at {path}"]
        if self.kind == "slack":
            word, problems = slack_problems(headers, body)
            return (400, word, problems) if problems else (200, "ok", [])
        if self.secret is not None:
            import standardwebhooks

            try:
                standardwebhooks.Webhook(self.secret).verify(body, headers)
            except Exception as error:  # every verification failure is a refusal, as a consumer's
                return 400, "invalid signature", [f"signature: {type(error).__name__}: {error}"]
        try:
            json.loads(body)
        except ValueError:
            return 400, "invalid json", ["body is not JSON"]
        return 200, "", []

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}  # HTTP names have no case
                fault = receiver._next_fault()
                if fault is not None and fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault is not None:
                    status, text, problems = fault.status, fault.body, []
                    if text is None:
                        text = {429: "rate_limited", 404: "no_service", 410: "channel_is_archived",
                                403: "invalid_token"}.get(status, "internal_error" if status >= 500 else "")
                else:
                    status, text, problems = receiver._judge(method, self.path, headers, body)
                record = Delivery(0, time.time(), method, self.path, headers, body.decode("utf-8", "replace"),
                                  notice_id(headers, body), status, problems)
                with receiver._lock:
                    record.n = len(receiver.requests) + 1
                    receiver.requests.append(record)
                    receiver._lock.notify_all()
                receiver._write_log()
                if status == 0:
                    # Drop the connection: the sender cannot know whether it arrived.
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if receiver.kind == "slack" else "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                if fault is not None and fault.retry_after is not None:
                    self.send_header("Retry-After", f"{fault.retry_after:g}")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def read_log(path: str | Path) -> dict[str, Any]:
    """A receiver's JSON snapshot, written by another process (or thread)."""
    return json.loads(Path(path).read_text())  # type: ignore[no-any-return]


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Starts receivers (``receivers("slack")``, ``receivers("webhook", secret=...)``), all stopped after
    the test."""
    started: list[Receiver] = []

    def make(kind: str = "slack", **options: Any) -> Receiver:
        receiver = Receiver(kind, **options).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


@pytest.fixture
def slack_receiver(receivers: Callable[..., Receiver]) -> Receiver:
    return receivers("slack")


@pytest.fixture
def webhook_receiver(receivers: Callable[..., Receiver]) -> Receiver:
    return receivers("webhook", secret=WEBHOOK_SECRET)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a local Slack / Standard Webhooks receiver, until Ctrl-C")
    parser.add_argument("kind", choices=["slack", "webhook"])
    parser.add_argument("--secret", help="verify Standard Webhooks signatures (whsec_...)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the port here once listening")
    parser.add_argument("--log", help="keep a JSON snapshot of every request here")
    args = parser.parse_args(argv)
    receiver = Receiver(args.kind, secret=args.secret, log_path=args.log, port=args.port).start()
    if args.port_file:
        Path(args.port_file).write_text(str(receiver.port))
    print(receiver.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()

"""The Pipeline Hook receiver against real HTTP clients: its path, chunked bodies, deduplication
without ``Idempotency-Key``, and strangers that close early or never finish.

Everything is on loopback.  Nothing here is timed: waits are bounded loops on what the receiver
reports (its stats and thread count), and the receiver's socket time-out is short so they end soon.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
from deploystate_backends.gitlab.hooks import HookReceiver, PipelineEvent
from deploystate_backends.gitlab_standin import DEPLOYER

SECRET = "s3cret-hook-token-value"
BODY = {"object_kind": "pipeline", "object_attributes": {"id": 1001, "ref": "master", "status": "success"},
        "project": {"id": DEPLOYER.id, "path_with_namespace": DEPLOYER.path}}


@pytest.fixture
def receiver() -> Iterator[tuple[HookReceiver, list[PipelineEvent]]]:
    events: list[PipelineEvent] = []
    with HookReceiver("127.0.0.1", 0, SECRET, events.append, timeout_s=0.5, max_connections=8) as started:
        yield started, events


def session() -> requests.Session:
    made = requests.Session()
    made.trust_env = False
    return made


def headers(**more: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": SECRET,
            **more}


def address(server: HookReceiver) -> tuple[str, int]:
    host, port = server._httpd.server_address[:2]
    return str(host), int(port)


def test_only_the_hook_path_is_answered(receiver: tuple[HookReceiver, list[PipelineEvent]]) -> None:
    server, events = receiver
    base = server.url.removesuffix("/hooks/gitlab")
    with session() as client:
        elsewhere = [client.post(f"{base}{path}", data=json.dumps(BODY), headers=headers(), timeout=5)
                     for path in ("/", "/hooks", "/hooks/gitlab/x", "/api/v4/projects", "/hooks/gitlabx")]
        got = client.get(f"{base}/favicon.ico", timeout=5)
        here = client.post(f"{server.url}?from=gitlab", data=json.dumps(BODY), headers=headers(), timeout=5)
    assert [a.status_code for a in elsewhere] == [404] * 5 and got.status_code == 404
    assert here.status_code == 200
    assert len(events) == 1


def test_a_chunked_body_is_read(receiver: tuple[HookReceiver, list[PipelineEvent]]) -> None:
    server, events = receiver
    text = json.dumps(BODY).encode()

    def pieces() -> Iterator[bytes]:  # requests sends a generator with Transfer-Encoding: chunked
        for start in range(0, len(text), 7):
            yield text[start:start + 7]

    with session() as client:
        answer = client.post(server.url, data=pieces(), headers=headers(**{"Idempotency-Key": "chunked-1"}),
                             timeout=5)
    assert answer.status_code == 200, answer.text
    assert [(e.pipeline_id, e.status, e.key) for e in events] == [(1001, "success", "chunked-1")]


def test_a_malformed_chunked_body_is_a_bad_request(
        receiver: tuple[HookReceiver, list[PipelineEvent]]) -> None:
    server, events = receiver
    connection = http.client.HTTPConnection(*address(server), timeout=5)
    connection.putrequest("POST", "/hooks/gitlab")
    for name, value in {**headers(), "Transfer-Encoding": "chunked"}.items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(b"zz\r\n{}\r\n0\r\n\r\n")
    answer = connection.getresponse()
    assert answer.status == 400
    connection.close()
    assert events == []


def test_without_idempotency_keys_hooks_are_told_apart_by_webhook_and_event_uuid(
        receiver: tuple[HookReceiver, list[PipelineEvent]]) -> None:
    """GitLab before 17.4 sends no Idempotency-Key.  Two hooks fired by one event (or recursively
    from it) share its X-Gitlab-Event-UUID; each hook has its own X-Gitlab-Webhook-UUID."""
    server, events = receiver
    event = "9cebe914-4827-408f-b014-cfa23a47a35f"
    first = headers(**{"X-Gitlab-Webhook-UUID": "3c5c0404-c866-44bc-a5f6-452bb1bfc76e",
                       "X-Gitlab-Event-UUID": event})
    second = {**first, "X-Gitlab-Webhook-UUID": "d96cd136-d798-4abc-b542-07c41d1d9333"}
    with session() as client:
        answers = [client.post(server.url, data=json.dumps(BODY), headers=h, timeout=5).status_code
                   for h in (first, second, first)]
    assert answers == [200, 200, 200]
    assert len(events) == 2 and events[0].key != events[1].key
    assert (server.stats.accepted, server.stats.duplicates) == (2, 1)


def _early_closer(where: tuple[str, int], how: int) -> None:
    """A stranger that hangs up early, each a different way."""
    with socket.create_connection(where, timeout=5) as sock:
        if how % 4 == 1:
            sock.sendall(b"POST /hooks/gitlab HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        elif how % 4 == 2:
            sock.sendall(b"POST /hooks/gitlab HTTP/1.1\r\nHost: x\r\nX-Gitlab-Token: guess\r\n"
                         b"Content-Length: 900\r\n\r\n{\"object")  # refused, answer never read
        elif how % 4 == 3:
            sock.sendall(b"POST /hooks/gitlab HTTP/1.1\r\nHost: x\r\nX-Gitlab-Token: " + SECRET.encode()
                         + b"\r\nX-Gitlab-Event: Pipeline Hook\r\nContent-Length: 900\r\n\r\n{")  # cut short
        # how % 4 == 0: connects and says nothing at all
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # hang up with RST


def test_early_closing_and_slow_strangers_cost_no_tracebacks_and_bounded_threads(
        receiver: tuple[HookReceiver, list[PipelineEvent]], caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    server, events = receiver
    where = address(server)
    threads_before = threading.active_count()
    caplog.set_level(logging.DEBUG)
    slow: list[socket.socket] = []
    peak = 0
    try:
        for n in range(200):
            if n % 2:
                _early_closer(where, n // 2)
            else:  # slow: opens, sends a first line, then nothing more
                sock = socket.create_connection(where, timeout=5)
                with contextlib.suppress(OSError):
                    sock.sendall(b"POST /hooks/gitlab HTTP/1.1\r\n")
                slow.append(sock)
            peak = max(peak, threading.active_count())
    finally:
        for sock in slow:
            sock.close()
    # The receiver still answers GitLab once the strangers are gone (a bounded wait: slots free up as
    # the time-outs end the held connections).
    answer = None
    for _ in range(100):
        with session() as client:
            answer = client.post(server.url, data=json.dumps(BODY), headers=headers(), timeout=5)
        if answer.status_code == 200:
            break
    assert answer is not None and answer.status_code == 200
    assert len(events) == 1

    assert peak - threads_before <= 8 + 2  # the connection cap, not one thread per stranger
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    records = [r for r in caplog.records if r.name.startswith("deploystate_backends.gitlab")]
    assert not [r for r in records if r.exc_info or "Traceback" in r.getMessage()]
    per_client = Counter(word for r in records for word in r.getMessage().split()
                         if word.startswith("127.0.0.1:"))
    assert per_client and max(per_client.values()) == 1  # at most one line per client
    assert len(records) <= 200
    assert server.stats.refused >= 1 and server.stats.busy >= 1

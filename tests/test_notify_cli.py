"""Notifiers on the real command line, against real local HTTP receivers (tests/notify_receivers.py).

- ``simulate`` with Slack and a signed webhook configured delivers the whole story: every record's
  notice once, in order, in a shape Slack takes and with a signature that verifies;
- a variable a notifier needs, unset or empty, refuses ``start``, ``run`` and ``simulate`` with exit
  2 naming it, and nothing is written (not even a journal);
- ``status`` says what a notifier has not accepted; ``notify-test`` says what each one answered.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import notify_receivers
import pytest
from deploystate_backends.gitlab_standin import RELEASE_TOOLS, VirtualClock, World
from notify_receivers import WEBHOOK_SECRET, Fault, Receiver
from standin_fixtures import STANDIN_TOKEN

from deploystate.sqlite_store import SQLiteStore

VERSION = "13.10.202103011220"
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC",
                "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF", "DEPLOYSTATE_KILL_AT", "SLACK_WEBHOOK_URL",
                "DEPLOYSTATE_WEBHOOK_URL", "DEPLOYSTATE_WEBHOOK_SECRET")
receivers = notify_receivers.receivers  # the fixture: receivers("slack"), receivers("webhook", secret=...)
CONFIG = """
[notify]
drain_seconds = 10
retry_min_seconds = 0.05
retry_max_seconds = 0.5

[notify.slack]
channel = "#releases"

[notify.webhook]
"""


def ds(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    return subprocess.run([sys.executable, "-m", "deploystate", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd, env={**clean, **(env or {})})


def env_for(slack: Receiver | None = None, webhook: Receiver | None = None) -> dict[str, str]:
    env = {}
    if slack is not None:
        env["SLACK_WEBHOOK_URL"] = slack.url
    if webhook is not None:
        env.update(DEPLOYSTATE_WEBHOOK_URL=webhook.url, DEPLOYSTATE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    return env


def record_ids(path: Path) -> list[str]:
    with SQLiteStore(path) as store:
        return [f"{r.rollout_id}:{r.seq}" for r in store.read(VERSION)]


def of_records(counts: dict[str, int]) -> dict[str, int]:
    """Counts of the records' notices (delivery's own notices have other ids)."""
    return {key: n for key, n in counts.items() if re.fullmatch(r".+:\d+", key)}


def test_simulate_delivers_the_whole_story_to_slack_and_a_signed_webhook(
        tmp_path: Path, receivers: Any) -> None:
    slack, webhook = receivers("slack"), receivers("webhook", secret=WEBHOOK_SECRET)
    (tmp_path / "deploystate.toml").write_text(CONFIG)
    store = tmp_path / "journal.sqlite"
    done = ds("simulate", VERSION, "--store", str(store), cwd=tmp_path, env=env_for(slack, webhook))
    assert done.returncode == 0, done.stderr
    ids = record_ids(store)
    for receiver in (slack, webhook):
        assert receiver.refused() == [], receiver.refused()[:1]  # Slack's shape; a valid signature
        assert of_records(receiver.counts()) == dict.fromkeys(ids, 1)
        arrived = [d.notice_id for d in receiver.requests if d.notice_id in set(ids)]
        assert arrived == ids  # in journal order
    bodies = webhook.accepted
    assert bodies[0]["action"] == "created" and bodies[-1]["message"] == f"rollout {VERSION} done"
    slack_text = [body["text"] for body in slack.accepted]
    assert any(text.startswith("✅ trigger_gprd: finished") for text in slack_text), slack_text
    assert slack.accepted[0]["channel"] == "#releases"
    print(f"\nsimulate with slack and webhook: {len(ids)} records; slack accepted "
          f"{sum(slack.counts().values())}, webhook accepted {sum(webhook.counts().values())}")


def test_an_in_memory_simulation_delivers_too(tmp_path: Path, receivers: Any) -> None:
    slack = receivers("slack")
    (tmp_path / "deploystate.toml").write_text("[notify.slack]\n")
    done = ds("simulate", VERSION, "--json", cwd=tmp_path, env=env_for(slack))
    assert done.returncode == 0, done.stderr
    assert len(of_records(slack.counts())) > 20 and not slack.duplicates()
    assert [p.name for p in tmp_path.iterdir()] == ["deploystate.toml"]  # nothing written


@pytest.mark.parametrize("variable,value", [("SLACK_WEBHOOK_URL", None), ("SLACK_WEBHOOK_URL", "  "),
                                            ("DEPLOYSTATE_WEBHOOK_SECRET", None)])
def test_an_unset_or_empty_variable_refuses_start_run_and_simulate_and_nothing_is_written(
        tmp_path: Path, receivers: Any, variable: str, value: str | None) -> None:
    slack, webhook = receivers("slack"), receivers("webhook", secret=WEBHOOK_SECRET)
    env = env_for(slack, webhook)
    env.pop(variable)
    if value is not None:
        env[variable] = value
    (tmp_path / "deploystate.toml").write_text(CONFIG)
    store = tmp_path / "journal.sqlite"
    state = "is empty" if value is not None else "is not set"
    for command in (("start", VERSION), ("simulate", VERSION), ("run", VERSION)):
        refused = ds(*command, "--store", str(store), cwd=tmp_path, env=env)
        assert refused.returncode == 2, (command, refused.stderr)
        assert f"environment variable {variable} {state}" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1 and refused.stdout == ""
        assert sorted(p.name for p in tmp_path.iterdir()) == ["deploystate.toml"], command
    assert slack.requests == [] and webhook.requests == []

    # A journal that exists is left exactly as it was by a refused run.
    made = ds("start", VERSION, "--store", str(store), cwd=tmp_path, env=env_for(slack, webhook))
    assert made.returncode == 0, made.stderr
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    refused = ds("run", VERSION, "--store", str(store), cwd=tmp_path, env=env)
    assert refused.returncode == 2 and variable in refused.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == before


def test_an_operator_command_is_never_refused_for_a_notifier(tmp_path: Path, receivers: Any) -> None:
    slack = receivers("slack")
    (tmp_path / "deploystate.toml").write_text("[notify.slack]\n")
    store = tmp_path / "journal.sqlite"
    assert ds("start", VERSION, "--store", str(store), cwd=tmp_path, env=env_for(slack)).returncode == 0
    aborted = ds("abort", VERSION, "--reason", "incident", "--by", "rm", "--store", str(store), cwd=tmp_path)
    assert aborted.returncode == 0, aborted.stderr
    assert "notifier slack cannot deliver now (environment variable SLACK_WEBHOOK_URL is not set" \
        in aborted.stderr
    status = ds("status", VERSION, "--store", str(store), cwd=tmp_path)
    assert "delivery: slack has not accepted 1 notice since" in status.stdout, status.stdout
    # The next command that can deliver it does.
    again = ds("run", VERSION, "--store", str(store), cwd=tmp_path, env=env_for(slack))
    assert again.returncode == 1, again.stderr  # the rollout is aborted
    assert of_records(slack.counts()) == dict.fromkeys(record_ids(store), 1)


def test_status_says_what_a_notifier_has_not_accepted(tmp_path: Path, receivers: Any) -> None:
    slack, webhook = receivers("slack"), receivers("webhook", secret=WEBHOOK_SECRET)
    slack.script(Fault(404, times=1000))  # a revoked webhook: refused for good
    (tmp_path / "deploystate.toml").write_text(CONFIG)
    store = tmp_path / "journal.sqlite"
    done = ds("simulate", VERSION, "--store", str(store), cwd=tmp_path, env=env_for(slack, webhook))
    assert done.returncode == 0, done.stderr
    records = len(record_ids(store))
    assert re.search(rf"slack: {records} notices since .* not delivered \(it refuses them: Slack refused "
                     r"the notice \(404: no_service\)", done.stderr), done.stderr
    assert "the next deploystate command on this journal" in done.stderr
    # The trouble was announced on the other notifier.
    told = [b["message"] for b in webhook.accepted if b["action"] == "delivery"]
    assert told and told[0].startswith("slack refuses notices (Slack refused the notice (404"), told
    status = ds("status", VERSION, "--store", str(store), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert re.search(rf"delivery: slack has not accepted {records} notices since 2021-03-01 12:20 UTC; "
                     r"webhook: all delivered", status.stdout), status.stdout
    listed = ds("status", "--store", str(store), cwd=tmp_path)
    assert f"slack has not accepted {records} notices of 1 rollout since" in listed.stdout, listed.stdout
    as_json = ds("status", VERSION, "--json", "--store", str(store), cwd=tmp_path)
    assert '"undelivered": ' + str(records) in as_json.stdout
    # Slack fixed: the next command delivers all of it, once.
    slack.script()
    resumed = ds("run", VERSION, "--store", str(store), cwd=tmp_path, env=env_for(slack, webhook))
    assert resumed.returncode == 0, resumed.stderr
    assert of_records(slack.counts()) == dict.fromkeys(record_ids(store), 1)
    assert "delivery: slack: all delivered; webhook: all delivered" in ds(
        "status", VERSION, "--store", str(store), cwd=tmp_path).stdout


def test_notify_test_reports_what_each_notifier_answered(tmp_path: Path, receivers: Any) -> None:
    slack, webhook = receivers("slack"), receivers("webhook", secret=WEBHOOK_SECRET)
    (tmp_path / "deploystate.toml").write_text(CONFIG)
    ok = ds("notify-test", cwd=tmp_path, env=env_for(slack, webhook))
    assert ok.returncode == 0, ok.stderr
    assert re.fullmatch(r"slack: accepted \(\d+\.\d\ds\)\nwebhook: accepted \(\d+\.\d\ds\)\n", ok.stdout)
    assert len(slack.accepted) == 1 and "notify-test" in slack.accepted[0]["text"]
    assert webhook.refused() == [] and len(webhook.accepted) == 1

    slack.script(Fault(429, retry_after=30))
    only = ds("notify-test", "--to", "slack", cwd=tmp_path, env=env_for(slack, webhook))
    assert only.returncode == 2
    assert only.stdout.startswith("slack: refused: Slack rate-limited the notice (429")
    assert "retry after 30s" in only.stdout
    assert "webhook" not in only.stdout

    unset = ds("notify-test", cwd=tmp_path, env=env_for(slack))
    assert unset.returncode == 2
    assert "slack: accepted" in unset.stdout
    assert "webhook: not configured: environment variable DEPLOYSTATE_WEBHOOK_URL is not set" in unset.stdout

    unknown = ds("notify-test", "--to", "pager", cwd=tmp_path, env=env_for(slack, webhook))
    assert unknown.returncode == 2 and "no [notify.pager]" in unknown.stderr
    (tmp_path / "deploystate.toml").write_text("")
    nothing = ds("notify-test", cwd=tmp_path)
    assert nothing.returncode == 2 and "no notifier is configured" in nothing.stderr


def test_an_unknown_notifier_is_refused_naming_the_installed_ones(tmp_path: Path) -> None:
    (tmp_path / "deploystate.toml").write_text("[notify.pager]\nurl_env = 'X'\n")
    refused = ds("simulate", VERSION, cwd=tmp_path)
    assert refused.returncode == 2
    assert "no notifier named 'pager' is installed; installed:" in refused.stderr
    assert "slack" in refused.stderr and "webhook" in refused.stderr


def timed_simulate(folder: Path, env: dict[str, str], store: Path) -> tuple[float, float, str, str]:
    """``simulate`` as a subprocess: seconds until its progress says the rollout is done, seconds until
    the command ended (delivery drained), stdout, stderr."""
    started = time.monotonic()
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    process = subprocess.Popen([sys.executable, "-m", "deploystate", "simulate", VERSION, "--store",
                                str(store)], cwd=folder, env={**clean, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    done_at = None
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if done_at is None and f"rollout {VERSION} done" in line:
            done_at = time.monotonic() - started
    err = process.stderr.read() if process.stderr is not None else ""
    process.wait(120)
    assert process.returncode == 0, err
    assert done_at is not None, "".join(lines)
    return done_at, time.monotonic() - started, "".join(lines), err


def test_a_receiver_failing_then_rate_limiting_gets_everything_in_order_and_the_rollout_never_waits(
        tmp_path: Path, receivers: Any) -> None:
    (tmp_path / "deploystate.toml").write_text(CONFIG.replace("drain_seconds = 10", "drain_seconds = 30"))
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    (healthy / "deploystate.toml").write_text(CONFIG)
    slack, webhook = receivers("slack"), receivers("webhook", secret=WEBHOOK_SECRET)
    plain_done, plain_total, _, _ = timed_simulate(healthy, env_for(slack, webhook),
                                                   healthy / "journal.sqlite")

    slack, webhook = receivers("slack"), receivers("webhook", secret=WEBHOOK_SECRET)
    slack.script(Fault(500, times=10**6))  # down until this test has seen status say so
    store = tmp_path / "journal.sqlite"
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(zip(
        ("done", "total", "out", "err"), timed_simulate(tmp_path, env_for(slack, webhook), store),
        strict=True)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        # The rollout is over (webhook has its end) and slack's trouble was announced there.
        while {"finish", "delivery"} - {b["action"] for b in webhook.accepted} or len(slack.requests) < 4:
            assert time.monotonic() < deadline, (slack.summary(), webhook.summary())
            time.sleep(0.05)
        status = ds("status", VERSION, "--store", str(store), cwd=tmp_path)
    finally:
        # Then 500 a few more times, 429 with Retry-After, and 200 for good.
        slack.script(Fault(500, times=2), Fault(429, retry_after=1.5))
        thread.join(120)
    ids = record_ids(store)
    assert re.search(r"delivery: slack has not accepted \d+ notices? since 2021-03-01 12:20 UTC; webhook: ",
                     status.stdout), status.stdout

    answered = [d.status for d in slack.requests]
    assert answered.count(500) >= 6 and answered.count(429) == 1 and answered[-len(ids):] == [200] * len(ids)
    arrived = [d.notice_id for d in slack.requests if d.accepted]
    assert arrived == ids  # everything, in journal order, once
    assert all(d.notice_id == ids[0] for d in slack.requests if not d.accepted)  # it never skipped ahead
    limited = next(n for n, d in enumerate(slack.requests) if d.status == 429)
    assert slack.requests[limited + 1].at - slack.requests[limited].at >= 1.4  # Retry-After obeyed
    told = [b["message"] for b in webhook.accepted if b["action"] == "delivery"]
    assert told[0].startswith("slack has not accepted") and "(Slack answered 500" in told[0], told
    assert any(m.startswith("slack accepts notices again") for m in told), told
    assert of_records(webhook.counts()) == dict.fromkeys(ids, 1)
    assert "warning: slack has not accepted" in outcome["err"]
    print(f"\nrollout wall time (simulate, to its 'done' line): {plain_done:.2f}s with both receivers "
          f"healthy, {outcome['done']:.2f}s with Slack answering 500 x{answered.count(500)}, then 429 "
          f"Retry-After 1.5, then 200\ncommand wall time (with delivery's drain): {plain_total:.2f}s "
          f"healthy, "
          f"{outcome['total']:.2f}s faulty; Slack: {len(slack.requests)} requests, {len(arrived)} accepted "
          f"for {len(ids)} records, 0 repeats")


def test_the_release_issue_gets_the_milestones_once_and_nothing_else(tmp_path: Path, standin_factory: Any,
                                                                    receivers: Any) -> None:
    """simulate with the issue notifier (its default: milestones) and Slack (everything), against the
    GitLab stand-in's issue notes and the Slack receiver."""
    world = World(clock=VirtualClock())
    issue = world.add_issue(RELEASE_TOOLS, f"Release {VERSION}")
    standin = standin_factory(world)
    slack = receivers("slack")
    (tmp_path / "deploystate.toml").write_text(
        f"[notify.slack]\n[notify.gitlab_issue]\nproject = {RELEASE_TOOLS.path!r}\nissue_iid = {issue.iid}\n"
        f"url = {standin.url!r}\n")
    store = tmp_path / "journal.sqlite"
    done = ds("simulate", VERSION, "--store", str(store), cwd=tmp_path,
              env={**env_for(slack), "GITLAB_API_TOKEN": STANDIN_TOKEN, "NO_PROXY": "127.0.0.1"})
    assert done.returncode == 0, done.stderr
    with SQLiteStore(store) as journal:
        records = journal.read(VERSION)
        assert journal.delivered(VERSION) == {"slack": len(records), "gitlab_issue": len(records)}
    noted = [re.search(r"<!-- deploystate notice (\S+) -->", note.body) for note in world.notes(issue)]
    seqs = [int(found.group(1).rsplit(":", 1)[1]) for found in noted if found]
    got = [(records[s - 1].action, records[s - 1].step, records[s - 1].data.get("for")) for s in seqs]
    assert got == [("created", None, None), ("checked", None, "promotion"),
                   ("succeed", "manual_promotion", None), ("succeed", "trigger_complete_deployment", None),
                   ("succeed", "trigger_gprd", None), ("finish", None, None)]
    assert of_records(slack.counts()) == dict.fromkeys((f"{VERSION}:{r.seq}" for r in records), 1)

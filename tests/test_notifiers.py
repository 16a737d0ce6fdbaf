"""The notifier adapters over real HTTP: Slack's incoming webhook and a Standard Webhooks consumer
(stood in for by tests/notify_receivers.py), and GitLab issue notes (the GitLab stand-in).

What is checked: each kind of notice reaches Slack in the shape slack_sdk sends and Slack takes;
answers become the right NotifierError (429 with its Retry-After, 5xx and dropped connections
transient, 4xx permanent); webhooks are signed so that ``standardwebhooks`` verifies them, keep
their id on a repeat, and a tampered body is refused; factories refuse bad settings before
anything is sent, naming the variable and never showing a secret; notes land on the issue once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import notify_receivers
import pytest
import standardwebhooks
from deploystate_backends.gitlab_standin import RELEASE_TOOLS, VirtualClock, World
from deploystate_backends.notify import gitlab_issue, slack, webhook
from deploystate_backends.notify.render import describe, markdown_for
from deploystate_backends.notify.slack_blocks import blocks_for, plain_text
from notify_receivers import SLACK_PATH, WEBHOOK_SECRET, Fault, Receiver, read_log, slack_problems
from standin_fixtures import STANDIN_TOKEN, make_client

from deploystate.notices import notice_for
from deploystate.ports import Notice, NotifierError
from deploystate.sqlite_store import SQLiteStore

# The receivers' fixtures, used by name below.
receivers = notify_receivers.receivers
slack_receiver = notify_receivers.slack_receiver
webhook_receiver = notify_receivers.webhook_receiver

V = "13.10.202103011220"
T0 = 1614601200.0  # 2021-03-01 12:20 UTC
RUNBOOK = "https://runbooks.example.com/deploy-failed"
MENTION = "<!subteam^S0123ABC>"
PIPELINE = "https://gitlab.example.com/gitlab-com/gl-infra/deployer/-/pipelines/4242"


def note(action: str, step: str | None = None, seq: int = 1, severity: str = "info", message: str = "",
         **data: object) -> Notice:
    return Notice(V, T0 + seq * 60, severity, message or f"{action} {step or ''}".strip(), action, step,
                  data, seq)


CHECKS = [
    {"name": "active_incidents", "verdict": "passed", "detail": "no S1/S2 incident open", "evidence": []},
    {"name": "deployment_health", "verdict": "failed", "detail": "gprd-cny error ratio 3.1% > 1%",
     "evidence": ["https://dashboards.example.com/d/deploy?var-env=gprd-cny"]},
    {"name": "change_requests", "verdict": "error", "detail": "GitLab answered 500", "evidence": []},
]

# One notice of every kind the Slack notifier tells, with the words its plain text must carry.
KINDS = {
    "rollout started": (note("created", None, 1, version=V, plan="real: trigger_gprd (gprd) on master",
                             spec={"name": "seed"}), [f"Rollout {V} started", "real: trigger_gprd"]),
    "rollback started": (note("created", None, 1, version=V, rollback=True, plan="real: trigger_gprd"),
                         [f"Rollback to {V} started"]),
    "deployment started": (note("start", "trigger_gstg", 8,
                                message="trigger_gstg: starting attempt 1 (gstg at master, REAL)",
                                key=f"{V}/trigger_gstg/1", attempt=1, environments=["gstg"], ref="master",
                                check_mode=False, version=V),
                           ["deploying", "gstg at master, REAL"]),
    "pipeline triggered": (note("triggered", "trigger_gstg", 9, deployment_id="4242", web_url=PIPELINE),
                           ["pipeline 4242", PIPELINE]),
    "deployment finished": (note("succeed", "trigger_gstg", 12, deployment_id="4242", status="success",
                                 duration_s=723.0), ["trigger_gstg: finished in 12m03s"]),
    "failure": (note("fail", "trigger_gprd", 20, "error",
                     f"trigger_gprd: FAILED (deployer pipeline 4243 failed); release managers: retry with "
                     f"'deploystate retry {V} trigger_gprd' or abort. Runbook: {RUNBOOK}",
                     deployment_id="4243", status="failed", reason="deployer pipeline 4243 failed"),
                ["FAILED (deployer pipeline 4243 failed)", f"deploystate retry {V} trigger_gprd", RUNBOOK,
                 "@S0123ABC"]),
    "time-out": (note("fail", "trigger_gprd", 21, "error",
                      "trigger_gprd: FAILED (timed out: deployer pipeline 4243 still running after 120 min); "
                      "release managers: retry ...", timed_out=True, status="running",
                      reason="timed out: deployer pipeline 4243 still running after 120 min"),
                 ["TIMED OUT", "still running after 120 min", "@S0123ABC"]),
    "dry run failed": (note("fail", "trigger_cny", 14, "warning",
                            "trigger_cny: dry run FAILED (pipeline 3) ...", deployment_id="3",
                            status="failed"),
                       ["dry run failed"]),
    "waiting for promotion": (note("start", "manual_promotion", 15), [f"deploystate promote {V} --by YOU"]),
    "bake started": (note("start", "baking_time", 15, **{"from": T0 + 600}), ["baking"]),
    "bake finished": (note("succeed", "baking_time", 16, elapsed_s=3600.0), ["bake finished after 1h00m"]),
    "promoted": (note("succeed", "manual_promotion", 17, by="alice", reason="checks green"),
                 ["promoted by alice: checks green"]),
    "checks passed": (note("checked", "trigger_gprd", 18, results=[CHECKS[0]], **{"for": "promotion"}),
                      ["Checks for the promotion: all 1 passed", "active_incidents"]),
    "checks failing": (note("checked", "trigger_gprd", 18, "error", results=CHECKS,
                            **{"for": "trigger_gprd"}),
                       ["2 of 3 failing", "deployment_health", "failed", "error ratio 3.1% > 1%",
                        "deployment_health evidence", "@S0123ABC"]),
    "override": (note("overridden", "trigger_gprd", 19, "warning", by="bob", reason="incident is unrelated",
                      checks=["deployment_health"], at=T0, until=T0 + 7200),
                 ["overridden by bob until 2021-03-01 14:20:00 UTC", "incident is unrelated",
                  "deployment_health"]),
    "superseded": (note("superseded", "trigger_gprd", 22, "warning", environment="gprd",
                        by_version="13.10.202103011500", how="deployed first"),
                   ["superseded on gprd by 13.10.202103011500 (deployed first)"]),
    "checks overridden": (note("checked", "trigger_gprd", 19, "warning", results=CHECKS, passed=True,
                               **{"for": "override"}),
                          ["Checks for an override: 2 of 3 failing, overridden"]),
    "not deployed, superseded": (note("fail", "trigger_gprd", 22, "warning",
                                      "trigger_gprd: not deployed, 13.10.202103011500 reached gprd first",
                                      superseded=True, reason="13.10.202103011500 reached gprd first"),
                                 ["not deployed (superseded)", "13.10.202103011500 reached gprd first"]),
    "ends superseded": (note("abort", None, 23, "warning", "ends superseded", superseded=True,
                             reason="13.10.202103011500 reached gprd first"),
                        [f"Rollout {V} ends superseded", "reached gprd first"]),
    "abort": (note("abort", None, 23, "error", f"rollout {V} aborted by carol: bad build", by="carol",
                   reason="bad build"), ["aborted by carol", "Reason: bad build"]),
    "done": (note("finish", None, 24, message=f"rollout {V} done"), [f"Rollout {V} done"]),
}


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # The receivers are on loopback: a proxy from the environment must not be asked for them.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def slack_env(receiver: Receiver) -> dict[str, str]:
    return {"SLACK_WEBHOOK_URL": receiver.url}


# --- Slack -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_notice_reaches_slack_in_the_shape_slack_takes(kind, slack_receiver):
    notice, words = KINDS[kind]
    notifier = slack.create({"mention": MENTION, "channel": "#releases"}, slack_env(slack_receiver))
    if kind != "pipeline triggered":
        notifier.notify(KINDS["pipeline triggered"][0])  # the link a finished deployment shows
    notifier.notify(notice)

    payload = slack_receiver.accepted[-1]
    assert slack_receiver.refused() == []
    assert payload["channel"] == "#releases" and payload["text"]
    text = plain_text(payload)
    for word in words:
        assert word in text, f"{word!r} not in:\n{text}"
    assert f"{V} · record {notice.seq}" in text  # the footer, which receivers count by
    assert ("@S0123ABC" in text) == (kind in ("failure", "time-out", "checks failing"))
    assert slack_receiver.counts()[f"{V}:{notice.seq}"] == 1


def test_a_finished_deployment_links_the_pipeline_its_trigger_announced(slack_receiver):
    notifier = slack.create({}, slack_env(slack_receiver))
    notifier.notify(KINDS["pipeline triggered"][0])
    notifier.notify(KINDS["deployment finished"][0])
    finished = slack_receiver.accepted[-1]
    assert f"<{PIPELINE}|pipeline 4242>" in json.dumps(finished)
    # Without that memory (another process), the message still goes, without the link.
    alone = slack.create({}, slack_env(slack_receiver))
    alone.notify(KINDS["deployment finished"][0])
    assert PIPELINE not in json.dumps(slack_receiver.accepted[-1])


def test_every_record_of_a_simulated_rollout_reaches_slack(tmp_path, slack_receiver):
    store = tmp_path / "journal.sqlite"
    command = [sys.executable, "-m", "deploystate", "simulate", V, "--store", str(store),
               "--fail", "gprd-cny"]
    subprocess.run(command, cwd=tmp_path, capture_output=True, check=False, timeout=120)
    reader = SQLiteStore(str(store))
    try:
        records = reader.read(V)
    finally:
        reader.close()
    assert len(records) > 10
    notifier = slack.create({"mention": MENTION}, slack_env(slack_receiver))
    for record in records:
        notifier.notify(notice_for(record, RUNBOOK))

    assert slack_receiver.refused() == []
    assert slack_receiver.counts() == {f"{V}:{r.seq}": 1 for r in records}
    texts = [plain_text(p) for p in slack_receiver.accepted]
    assert "Rollout 13.10.202103011220 started" in texts[0]
    failed = [t for t in texts if "FAILED" in t]
    assert failed and all(RUNBOOK in t and "@S0123ABC" in t for t in failed)


def test_slack_429_gives_retry_after_5xx_is_transient_and_404_permanent(slack_receiver):
    notifier = slack.create({}, slack_env(slack_receiver))
    notice = KINDS["done"][0]
    slack_receiver.script(Fault(429, retry_after=7), Fault(503), Fault(0), Fault(410))
    errors = []
    for _ in range(4):
        with pytest.raises(NotifierError) as caught:
            notifier.notify(notice)
        errors.append(caught.value)
    limited, unavailable, dropped, archived = errors
    assert (limited.retry_after, limited.permanent) == (7.0, False)
    assert (unavailable.retry_after, unavailable.permanent) == (None, False)
    assert not dropped.permanent and "did not answer" in str(dropped)
    assert archived.permanent and "channel_is_archived" in str(archived)
    notifier.notify(notice)  # the plan is used up: 200
    assert slack_receiver.counts() == {f"{V}:24": 1}
    assert slack_receiver.attempts() == {f"{V}:24": 5}

    revoked = slack_receiver.url.replace(SLACK_PATH, "/services/T/B/revoked")
    gone = slack.create({}, {"SLACK_WEBHOOK_URL": revoked})
    with pytest.raises(NotifierError) as caught:
        gone.notify(notice)
    assert caught.value.permanent and "no_service" in str(caught.value)
    for error in [*errors, caught.value]:
        assert "/services/" not in str(error) and "127.0.0.1" not in str(error)


def test_a_slack_webhook_nobody_listens_on_is_transient_and_its_url_unsaid(receivers):
    closed = receivers("slack")
    url = closed.url
    closed.stop()
    with pytest.raises(NotifierError) as caught:
        slack.create({"timeout_s": 2}, {"SLACK_WEBHOOK_URL": url}).notify(KINDS["done"][0])
    assert not caught.value.permanent
    assert url not in str(caught.value) and SLACK_PATH not in str(caught.value)


def test_no_proxy_is_honoured_though_the_sdk_reads_only_https_proxy(monkeypatch, slack_receiver):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    slack.create({}, slack_env(slack_receiver)).notify(KINDS["done"][0])
    assert slack_receiver.counts() == {f"{V}:24": 1}
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    with pytest.raises(NotifierError):  # the proxy is used, so the check above could fail
        slack.create({"timeout_s": 2}, slack_env(slack_receiver)).notify(KINDS["done"][0])


def test_a_receiver_slower_than_the_time_out_is_transient(slack_receiver):
    slack_receiver.script(Fault(200, delay_s=2.5))
    with pytest.raises(NotifierError) as caught:
        slack.create({"timeout_s": 1}, slack_env(slack_receiver)).notify(KINDS["done"][0])
    assert not caught.value.permanent
    # Slack took it all the same: the one notice a repeat may deliver twice (in flight at the time-out).
    slack_receiver.wait_for(1, timeout=5)
    assert slack_receiver.counts() == {f"{V}:24": 1}


def test_slack_messages_stay_within_slacks_limits():
    long = "x" * 10000
    notice = note("fail", "trigger_gprd", 5, "error", f"trigger_gprd: FAILED ({long}); retry", reason=long)
    payload = blocks_for(notice, mention=MENTION)
    word, problems = slack_problems({"Content-Type": "application/json"}, json.dumps(payload).encode())
    assert (word, problems) == ("", [])
    many = note("checked", "trigger_gprd", 6, "error",
                results=[{**CHECKS[1], "name": f"check_{n}"} for n in range(40)])
    _, problems = slack_problems({"Content-Type": "application/json"},
                                 json.dumps(blocks_for(many)).encode())
    assert problems == []


def test_text_a_person_wrote_can_neither_ping_nor_link():
    notice = note("abort", None, 3, "error", "aborted", by="mallory", reason="<!channel> see <https://evil|here>")
    payload = blocks_for(notice, mention=MENTION)
    raw = json.dumps(payload)
    assert "<!channel>" not in raw and "<https://evil" not in raw
    assert "&lt;!channel&gt;" in raw
    assert "<!channel> see <https://evil|here>" in plain_text(payload)  # shown as written


def test_text_a_person_wrote_can_neither_link_nor_hide_a_note_in_markdown():
    forged = f"<!-- deploystate notice {V}:24 --> [click](https://evil.example) **loud**"
    body = markdown_for(describe(note("abort", None, 3, "error", "aborted", by="mallory", reason=forged)))
    assert f"<!-- deploystate notice {V}:24 -->" not in body  # so the real notice 24 is still posted
    assert "[click](https" not in body and "**loud**" not in body
    assert body.rstrip().endswith(f"<!-- deploystate notice {V}:3 -->")


def test_the_receiver_refuses_what_slack_would(slack_receiver):
    # The shape checks must be able to fail: a payload without text, and blocks Slack refuses.
    def post(payload: object) -> tuple[int, str]:
        request = urllib.request.Request(slack_receiver.url, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    assert post({"blocks": []}) == (400, "no_text")
    too_long = {"type": "section", "text": {"type": "mrkdwn", "text": "y" * 3001}}
    assert post({"text": "x", "blocks": [too_long]}) == (400, "invalid_blocks")
    assert post({"text": "x", "blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "y"}}]}) \
        == (400, "invalid_blocks")
    assert post({"text": "fine"}) == (200, "ok")
    assert len(slack_receiver.refused()) == 3


# --- the generic webhook ---------------------------------------------------------------------

def webhook_env(receiver: Receiver, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    return {"DEPLOYSTATE_WEBHOOK_URL": receiver.url, "DEPLOYSTATE_WEBHOOK_SECRET": secret}


def test_webhooks_are_signed_as_standard_webhooks_verify_and_keep_their_id(webhook_receiver):
    notifier = webhook.create({}, webhook_env(webhook_receiver))
    notice = KINDS["checks failing"][0]
    notifier.notify(notice)
    notifier.notify(notice)  # a repeat (e.g. after a kill): the same id, for the consumer to drop

    assert webhook_receiver.refused() == []
    first, second = webhook_receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"{V}:18"
    assert first.headers["webhook-signature"].startswith("v1,")
    # Verified again here, independently of the receiver, by the published implementation.
    body = standardwebhooks.Webhook(WEBHOOK_SECRET).verify(first.body, first.headers)
    assert body == {"type": "deploystate.checked", "rollout": V, "seq": 18, "at": notice.at,
                    "severity": "error", "action": "checked", "step": "trigger_gprd",
                    "message": notice.message, "data": json.loads(json.dumps(dict(notice.data)))}
    assert webhook_receiver.counts() == {f"{V}:18": 2}


def test_a_tampered_body_or_another_secret_is_refused(webhook_receiver):
    notifier = webhook.create({}, webhook_env(webhook_receiver))
    request = notifier.request(KINDS["done"][0])
    assert isinstance(request.data, bytes)
    tampered = urllib.request.Request(request.full_url, data=request.data.replace(b'"finish"', b'"abort"'),
                                      headers=dict(request.header_items()), method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(tampered, timeout=5)
    assert caught.value.code == 400

    other = webhook.create({}, webhook_env(webhook_receiver, "whsec_" + "QUJD" * 8))
    with pytest.raises(NotifierError) as refused:
        other.notify(KINDS["done"][0])
    assert refused.value.permanent
    assert [d.status for d in webhook_receiver.requests] == [400, 400]
    assert all("signature" in d.problems[0] for d in webhook_receiver.refused())


def test_webhook_faults_become_retry_after_transient_and_permanent(webhook_receiver):
    notifier = webhook.create({"timeout_s": 5}, webhook_env(webhook_receiver))
    webhook_receiver.script(Fault(500, times=2), Fault(429, retry_after=3), Fault(404))
    outcomes = []
    for _ in range(4):
        with pytest.raises(NotifierError) as caught:
            notifier.notify(KINDS["done"][0])
        outcomes.append((caught.value.retry_after, caught.value.permanent))
    assert outcomes == [(None, False), (None, False), (3.0, False), (None, True)]
    notifier.notify(KINDS["done"][0])
    assert webhook_receiver.counts() == {f"{V}:24": 1}


def test_a_webhook_redirect_is_not_followed(receivers):
    import http.server
    import threading

    target = receivers("webhook", secret=WEBHOOK_SECRET)

    class Moved(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(308)
            self.send_header("Location", target.url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Moved)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"DEPLOYSTATE_WEBHOOK_URL": f"http://127.0.0.1:{server.server_address[1]}/old",
               "DEPLOYSTATE_WEBHOOK_SECRET": WEBHOOK_SECRET}
        with pytest.raises(NotifierError) as caught:
            webhook.create({}, env).notify(KINDS["done"][0])
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.permanent and "redirect" in str(caught.value)
    assert target.requests == []


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not*base64!", "whsec_c2hvcnQ=",
                                    "whsec_"])
def test_a_malformed_secret_is_refused_naming_its_variable_not_its_value(secret):
    env = {"DEPLOYSTATE_WEBHOOK_URL": "https://hooks.example.com/x", "HOOK_SECRET": secret}
    with pytest.raises(Exception) as caught:
        webhook.create({"secret_env": "HOOK_SECRET"}, env)
    message = str(caught.value)
    assert "HOOK_SECRET" in message
    if secret != "whsec_":
        assert secret not in message and secret.removeprefix("whsec_") not in message


# --- settings, for all three -------------------------------------------------------------------

FULL_ENV = {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T1/B1/s3cr3tpath",
            "DEPLOYSTATE_WEBHOOK_URL": "https://hooks.example.com/deploystate?token=s3cr3tquery",
            "DEPLOYSTATE_WEBHOOK_SECRET": WEBHOOK_SECRET, "GITLAB_API_TOKEN": "glpat-s3cr3ttoken"}
ISSUE = {"project": "gitlab-org/release/tasks", "issue_iid": 1234, "url": "https://gitlab.example.com"}
FACTORIES = {"slack": (slack.create, {}, ["SLACK_WEBHOOK_URL"]),
             "webhook": (webhook.create, {}, ["DEPLOYSTATE_WEBHOOK_URL", "DEPLOYSTATE_WEBHOOK_SECRET"]),
             "gitlab_issue": (gitlab_issue.create, ISSUE, ["GITLAB_API_TOKEN"])}


def test_the_entry_points_are_the_factories():
    found = {e.name: e.load() for e in entry_points(group="deploystate.notifiers")}
    assert found == {name: factory for name, (factory, _, _) in FACTORIES.items()}
    for name, (factory, settings, _) in FACTORIES.items():
        assert factory(settings, FULL_ENV).name == name


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_an_unset_or_empty_variable_is_refused_naming_it(name, how):
    factory, settings, variables = FACTORIES[name]
    for variable in variables:
        env = dict(FULL_ENV)
        if how == "unset":
            del env[variable]
        else:
            env[variable] = "  "
        with pytest.raises(Exception) as caught:
            factory(settings, env)
        message = str(caught.value)
        assert variable in message and ("is not set" if how == "unset" else "is empty") in message
        assert "s3cr3t" not in message


@pytest.mark.parametrize("name", list(FACTORIES))
def test_unknown_keys_are_refused_naming_the_key_and_the_known_ones(name):
    factory, settings, _ = FACTORIES[name]
    with pytest.raises(Exception) as caught:
        factory({**settings, "webhok_url": "x"}, FULL_ENV)
    assert "webhok_url" in str(caught.value) and "timeout_s" in str(caught.value)


def test_settings_that_cannot_work_are_refused():
    from deploystate.errors import DeploystateError

    bad = [(slack.create, {"mention": "@release-managers"}), (slack.create, {"timeout_s": 0}),
           (slack.create, {"webhook_url_env": "lower-case"}),
           (gitlab_issue.create, {**ISSUE, "issue_iid": "12"}),
           (gitlab_issue.create, {**ISSUE, "project": "no spaces allowed"}),
           (gitlab_issue.create, {"project": "a/b"}), (webhook.create, {"timeout_s": float("nan")})]
    for factory, settings in bad:
        with pytest.raises(DeploystateError):
            factory(settings, FULL_ENV)
    with pytest.raises(DeploystateError) as caught:
        slack.create({}, {"SLACK_WEBHOOK_URL": "hooks.slack.com/services/T1/B1/s3cr3tpath"})
    assert "SLACK_WEBHOOK_URL" in str(caught.value) and "s3cr3t" not in str(caught.value)


def test_secrets_are_not_in_reprs():
    for name, (factory, settings, _) in FACTORIES.items():
        assert "s3cr3t" not in repr(factory(settings, FULL_ENV)), name


# --- GitLab issue notes --------------------------------------------------------------------------

@pytest.fixture
def release_issue(standin_factory):
    world = World(clock=VirtualClock())
    issue = world.add_issue(RELEASE_TOOLS, f"Release {V}")
    standin = standin_factory(world)
    settings = {"project": RELEASE_TOOLS.path, "issue_iid": issue.iid, "url": standin.url, "timeout_s": 5}
    return standin, issue, gitlab_issue.create(settings, {"GITLAB_API_TOKEN": STANDIN_TOKEN})


MILESTONES = ["rollout started", "checks failing", "override", "promoted", "failure", "done"]


def test_milestones_become_notes_on_the_release_issue_once(release_issue):
    standin, issue, notifier = release_issue
    for kind in MILESTONES:
        notifier.notify(KINDS[kind][0])
    notifier.notify(KINDS["promoted"][0])  # a repeat after a kill: found, not posted twice

    listed = make_client(standin).http_list(f"/projects/{RELEASE_TOOLS.id}/issues/{issue.iid}/notes",
                                            sort="asc", get_all=True)
    assert len(listed) == len(MILESTONES) == len(standin.world.notes(issue))
    assert [n["body"] for n in listed] == [markdown_for(describe(KINDS[k][0])) for k in MILESTONES]
    assert listed[0]["body"].startswith(f":rocket: **Rollout {V} started**")
    checks = listed[1]["body"]
    assert "| Check | Verdict | Detail |" in checks and "| deployment\\_health | :x: failed |" in checks
    assert f"<!-- deploystate notice {V}:18 -->" in checks
    assert {n["noteable_iid"] for n in listed} == {issue.iid}


def test_a_note_whose_answer_was_lost_is_not_posted_again(release_issue):
    standin, issue, notifier = release_issue
    standin.faults.next(1, "lost_response", route="issue_notes", method="POST")
    with pytest.raises(NotifierError) as caught:
        notifier.notify(KINDS["done"][0])
    assert not caught.value.permanent
    notifier.notify(KINDS["done"][0])
    assert len(standin.world.notes(issue)) == 1


def test_gitlab_answers_become_retry_after_transient_and_permanent(release_issue, standin_factory):
    standin, issue, notifier = release_issue
    standin.faults.next(1, "rate_limit", route="issue_notes", method="POST", retry_after=9)
    standin.faults.next(1, "error", route="issue_notes", method="POST", status=503)
    errors = []
    for _ in range(2):
        with pytest.raises(NotifierError) as caught:
            notifier.notify(KINDS["done"][0])
        errors.append(caught.value)
    assert [(e.retry_after, e.permanent) for e in errors] == [(9.0, False), (None, False)]

    missing = gitlab_issue.create({"project": RELEASE_TOOLS.path, "issue_iid": 999, "url": standin.url},
                                  {"GITLAB_API_TOKEN": STANDIN_TOKEN})
    wrong_token = gitlab_issue.create({"project": RELEASE_TOOLS.path, "issue_iid": issue.iid,
                                       "url": standin.url}, {"GITLAB_API_TOKEN": "glpat-s3cr3t-but-wrong"})
    for broken in (missing, wrong_token):
        with pytest.raises(NotifierError) as caught:
            broken.notify(KINDS["done"][0])
        assert caught.value.permanent and "s3cr3t" not in str(caught.value)
    notifier.notify(KINDS["done"][0])
    assert len(standin.world.notes(issue)) == 1


# --- the receivers themselves ------------------------------------------------------------------

def test_the_receivers_log_is_readable_from_another_process(tmp_path, receivers):
    log = tmp_path / "slack.json"
    receiver = receivers("slack", log_path=log)
    receiver.script(Fault(500))
    notifier = slack.create({}, {"SLACK_WEBHOOK_URL": receiver.url})
    with pytest.raises(NotifierError):
        notifier.notify(KINDS["done"][0])
    notifier.notify(KINDS["done"][0])
    code = (f"import json; d = json.load(open({str(log)!r})); "
            "print(d['counts'], [r['status'] for r in d['requests']])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == f"{{'{V}:24': 1}} [500, 200]"
    assert read_log(Path(log))["accepted"] == 1

"""Delivery from the journal (deploystate.delivery), in-process: real stores, real threads, notifier doubles.

Each test drives a whole rollout with the fake deployer and checks what each notifier got: every
record's notice, in journal order, exactly once; positions kept in the store; a failing notifier
retried in order and announced on the others; the runner never waiting for any of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploystate.config import ConfigError, RunnerConfig
from deploystate.delivery import Delivery, StderrNotifier, backlog, lock_name, owed_rollouts
from deploystate.doubles import FaultyNotifier, ManualClock, RecordingNotifier, fake_backends
from deploystate.journal import MemoryStore
from deploystate.notices import FanOut
from deploystate.notify_config import (
    DELIVERY,
    EVERYTHING,
    DeliverySettings,
    NoticeFilter,
    is_milestone,
    parse_notices,
    read_notify,
)
from deploystate.ports import Notice, NotifierError, Store
from deploystate.runner import Runner
from deploystate.spec import default_spec
from deploystate.sqlite_store import SQLiteStore

VERSION = "13.10.202103011220"
QUICK = DeliverySettings(drain_s=10.0, retry_min_s=0.01, retry_max_s=0.05, reannounce_s=0.2, poll_s=0.05)


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    opened: list[Store] = []
    memory = MemoryStore()

    def make() -> Store:
        store: Store = memory if request.param == "memory" else SQLiteStore(tmp_path / "journal.sqlite")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def roll(store: Store, notifier: object, version: str = VERSION) -> None:
    runner = Runner(store, fake_backends(clock=ManualClock()), config=RunnerConfig(auto_promote="rm"),
                    notifier=notifier)  # type: ignore[arg-type]
    runner.create(version, default_spec())
    runner.run(version)


def ids(notices: list[Notice]) -> list[tuple[str, int | None]]:
    return [(n.rollout_id, n.seq) for n in notices if n.action != DELIVERY]


def test_every_record_reaches_every_notifier_once_in_order(open_store: Callable[[], Store]) -> None:
    store = open_store()
    first, second = RecordingNotifier(), RecordingNotifier()
    with Delivery(store, {"first": (first, EVERYTHING), "second": (second, EVERYTHING)},
                  settings=QUICK) as delivery:
        roll(store, delivery)
    records = store.read(VERSION)
    expected = [(VERSION, r.seq) for r in records]
    assert ids(first.notices) == expected and ids(second.notices) == expected
    assert store.delivered(VERSION) == {"first": len(records), "second": len(records)}
    # The notices are the journal's own: the runner's message for each record.
    assert first.notices[-1].message == f"rollout {VERSION} done"


def test_a_failing_notifier_is_retried_in_order_announced_elsewhere_and_never_holds_the_rollout(
        open_store: Callable[[], Store], capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store()
    faults: list[BaseException | None] = [NotifierError("500 internal_error")] * 4
    faults += [NotifierError("429 rate limited", retry_after=0.2)]
    flaky = FaultyNotifier(faults)
    other = RecordingNotifier()
    release = threading.Event()

    class Held:
        """Blocks every notice until the test releases it: the runner must not wait for it."""

        def __init__(self) -> None:
            self.notices: list[Notice] = []

        def notify(self, notice: Notice) -> None:
            release.wait(30)
            self.notices.append(notice)

    held = Held()
    with Delivery(store, {"slack": (flaky, EVERYTHING), "webhook": (other, EVERYTHING),
                          "held": (held, EVERYTHING)}, settings=QUICK) as delivery:
        roll(store, delivery)
        # The whole rollout ran while one notifier could not take even its first notice.
        assert store.read(VERSION)[-1].action == "finish" and held.notices == []
        release.set()
    expected = [(VERSION, r.seq) for r in store.read(VERSION)]
    assert ids(flaky.notices) == expected  # everything, in order, none skipped
    assert ids(held.notices) == expected
    attempted = [(n.rollout_id, n.seq) for n in flaky.attempts]
    assert attempted[:6] == [(VERSION, 1)] * 6  # the first notice, five refusals and then accepted
    assert len(flaky.attempts) == len(expected) + len(faults)
    told = [n.message for n in other.notices if n.action == DELIVERY]
    assert any(m.startswith("slack has not accepted") and "500 internal_error" in m and "retrying" in m
               for m in told), told
    assert any(m.startswith("slack accepts notices again") for m in told), told
    assert not [n for n in flaky.notices if n.action == DELIVERY and "slack" in n.message.split()[0]]
    assert "slack has not accepted" in capsys.readouterr().err


def test_a_refusal_put_right_by_the_next_try_is_no_news(open_store: Callable[[], Store],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store()
    limited = FaultyNotifier([None, NotifierError("429 rate limited", retry_after=0.05)])
    other = RecordingNotifier()
    with Delivery(store, {"slack": (limited, EVERYTHING), "webhook": (other, EVERYTHING)},
                  settings=QUICK) as delivery:
        roll(store, delivery)
    assert ids(limited.notices) == [(VERSION, r.seq) for r in store.read(VERSION)]
    assert [n for n in other.notices if n.action == DELIVERY] == []
    assert capsys.readouterr().err == ""


def test_a_process_stopped_mid_way_resumes_where_each_notifier_was(open_store: Callable[[], Store]) -> None:
    store = open_store()
    refused = NotifierError("404 no_service", permanent=True)
    partial = FaultyNotifier([None] * 5, then=refused)  # takes 5 notices, then refuses for good
    whole = RecordingNotifier()
    with Delivery(store, {"slack": (partial, EVERYTHING), "webhook": (whole, EVERYTHING)},
                  settings=QUICK) as delivery:
        roll(store, delivery)
        delivery.drain(10)
        left = delivery.leftovers()
    records = store.read(VERSION)
    assert store.delivered(VERSION) == {"slack": 5, "webhook": len(records)}
    assert left and left[0].startswith(f"slack: {len(records) - 5} notices since") and "refuses" in left[0]

    # The next command: slack answers again and gets exactly what it had not.
    later = RecordingNotifier()
    with Delivery(store, {"slack": (later, EVERYTHING), "webhook": (whole, EVERYTHING)}, settings=QUICK):
        pass
    assert ids(partial.notices) + ids(later.notices) == [(VERSION, r.seq) for r in records]
    assert len(ids(whole.notices)) == len(records)  # webhook had everything: nothing again
    assert store.delivered(VERSION) == {"slack": len(records), "webhook": len(records)}


def test_notices_a_notifier_does_not_take_move_its_position_on(open_store: Callable[[], Store]) -> None:
    store = open_store()
    issue = RecordingNotifier()
    with Delivery(store, {"issue": (issue, parse_notices("milestones", "test"))}, settings=QUICK) as delivery:
        roll(store, delivery)
    records = store.read(VERSION)
    assert store.delivered(VERSION) == {"issue": len(records)}
    got = [(n.action, n.step) for n in issue.notices]
    assert got[0] == ("created", None) and got[-1] == ("finish", None)
    assert ("succeed", "manual_promotion") in got
    # Production's deployments: the protected one and the all-environments one that reaches it too.
    assert ("succeed", "trigger_gprd") in got and ("succeed", "trigger_complete_deployment") in got
    assert ("succeed", "trigger_gstg") not in got and not [a for a, _ in got if a in ("start", "triggered")]


def test_the_milestones_of_checks_records() -> None:
    spec = default_spec()

    def checked(**data: object) -> Notice:
        return Notice(VERSION, 0.0, "info", "checks", "checked", None, data)

    assert is_milestone(checked(**{"for": "promotion", "passed": True}), spec)
    assert is_milestone(checked(**{"for": "trigger_gprd", "passed": False}), spec)  # production held
    assert not is_milestone(checked(**{"for": "trigger_gprd", "passed": True}), spec)
    assert not is_milestone(checked(**{"for": "trigger_gstg", "passed": False}), spec)  # not production


def test_two_deliverers_on_one_journal_never_send_a_notice_twice(tmp_path: Path) -> None:
    """Two processes' deliveries (here: two stores on one file) take turns through the journal's lock."""
    path = tmp_path / "journal.sqlite"
    with SQLiteStore(path) as runner_store, SQLiteStore(path) as other_store:
        roll(runner_store, FanOut([]))
        first, second = FaultyNotifier(delay_s=0.002), FaultyNotifier(delay_s=0.002)
        one = Delivery(runner_store, {"slack": (first, EVERYTHING)}, settings=QUICK).start([VERSION])
        two = Delivery(other_store, {"slack": (second, EVERYTHING)}, settings=QUICK).start([VERSION])
        one.close()
        two.close()
        sent = sorted(ids(first.notices) + ids(second.notices))
        assert sent == [(VERSION, r.seq) for r in runner_store.read(VERSION)]


def test_which_rollouts_are_owed(open_store: Callable[[], Store]) -> None:
    store = open_store()
    roll(store, FanOut([]), VERSION)  # ended before any notifier was configured
    other = "13.10.202103011300"
    runner = Runner(store, fake_backends(clock=ManualClock()), notifier=FanOut([]))
    runner.create(other, default_spec())  # still active (waits for its first run)
    assert owed_rollouts(store, ["slack"]) == [other]
    assert owed_rollouts(store, ["slack"], [VERSION]) == [VERSION, other]  # a command naming it
    store.set_delivered(VERSION, "slack", 3)
    assert set(owed_rollouts(store, ["slack"])) == {VERSION, other}  # it started, so it finishes
    left = backlog(store, [VERSION], "slack", EVERYTHING)
    assert left.count == len(store.read(VERSION)) - 3 and left.since == store.read(VERSION)[3].at


def test_the_hold_name_is_a_valid_rollout_id_of_its_own() -> None:
    store = MemoryStore()
    with store.hold(lock_name("slack", VERSION)), store.hold(VERSION):
        pass


def test_a_runner_without_a_notifier_says_every_notice_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    store = MemoryStore()
    runner = Runner(store, fake_backends(clock=ManualClock()), config=RunnerConfig(auto_promote="rm"))
    runner.create(VERSION, default_spec())
    runner.run(VERSION)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(store.read(VERSION))
    assert lines[-1] == f"deploystate: {VERSION}: rollout {VERSION} done"


def test_stderr_notifier_escapes_what_people_typed(capsys: pytest.CaptureFixture[str]) -> None:
    StderrNotifier().notify(Notice(VERSION, 0.0, "error", "aborted by x: why\n[+00:00] forged", "abort"))
    assert capsys.readouterr().err == f"deploystate: {VERSION}: ERROR: aborted by x: why\\n[+00:00] forged\n"


def test_the_notify_tables_are_checked() -> None:
    plan = read_notify({"drain_seconds": 3, "slack": {"channel": "#x"},
                        "webhook": {"notices": ["fail", "abort", "delivery"]}})
    assert plan.delivery.drain_s == 3
    assert plan.notifiers["slack"].settings == {"channel": "#x"}
    assert plan.notifiers["slack"].filter is EVERYTHING
    assert plan.notifiers["webhook"].filter == NoticeFilter("fail, abort, delivery",
                                                            actions=frozenset({"fail", "abort", "delivery"}))
    with pytest.raises(ConfigError, match=r"no notifier named 'pager' is installed; installed: .*slack"):
        read_notify({"pager": {}})
    issue = read_notify({"gitlab_issue": {"project": "a/b", "issue_iid": 1}}).notifiers["gitlab_issue"]
    assert issue.filter.milestones and not issue.notices_given  # its module's default_notices
    with pytest.raises(ConfigError, match=r"unknown action\(s\) 'promote'; known: start"):
        read_notify({"slack": {"notices": ["promote"]}})
    with pytest.raises(ConfigError, match="must be \"all\", \"milestones\" or a list"):
        read_notify({"slack": {"notices": "some"}})
    with pytest.raises(ConfigError, match="drain_seconds must be a number of seconds between 0 and 600"):
        read_notify({"drain_seconds": float("nan")})
    with pytest.raises(ConfigError, match="unknown key 'drain'"):
        read_notify({"drain": 3})

"""The Store contract (deploystate.ports.Store), one suite run against every store: the memory
store, a SQLite file and a PostgreSQL database (a real server the tests start: tests/pg_fixtures.py).

Each test gets a ``Stores`` that opens the store under test; ``reopen()`` gives the same journal
again as a new process would see it (for the memory store: the same object, which has no
file to reopen).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploystate.journal import (
    Entry,
    JournalConflict,
    JournalError,
    MemoryStore,
    Summary,
    UnknownRollout,
)
from deploystate.ports import Store
from deploystate.sqlite_store import SQLiteStore

RID = "13.10.202103011220"
OTHER = "13.10.202103021340"


class Stores:
    def __init__(self, open_store: Callable[[], Store]) -> None:
        self._open = open_store
        self.opened: list[Store] = []
        self.store = self.reopen()

    def reopen(self) -> Store:
        store = self._open()
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "memory":
        memory = MemoryStore()
        made = Stores(lambda: memory)
    elif request.param == "postgres":
        from deploystate_backends.postgres import PostgresStore

        url = request.getfixturevalue("pg_url")  # a new, empty journal in the tests' own server
        made = Stores(lambda: PostgresStore(url))
    else:
        made = Stores(lambda: SQLiteStore(tmp_path / "journal.sqlite"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def store(stores: Stores) -> Store:
    return stores.store


def entry(action: str = "start", step: str | None = "tag", **data: object) -> Entry:
    return Entry(action, 1000.0, "tester", step, data)


def created() -> Entry:
    return entry("created", None, version=RID)


def test_appends_name_the_record_they_follow(store: Store) -> None:
    assert [r.seq for r in store.append(RID, 0, [created()])] == [1]
    made = store.append(RID, 1, [entry(key="k/1"), entry("succeed")])
    assert [(r.rollout_id, r.seq, r.action) for r in made] == [(RID, 2, "start"), (RID, 3, "succeed")]
    assert made[0].data == {"key": "k/1"}
    assert [r.seq for r in store.append(RID, 3, [entry("start", "trigger_gstg")])] == [4]
    records = store.read(RID)
    assert [(r.seq, r.action, r.step) for r in records] == [
        (1, "created", None), (2, "start", "tag"), (3, "succeed", "tag"), (4, "start", "trigger_gstg")]
    assert records[0].data == {"version": RID}


@pytest.mark.parametrize("expected", [0, 1, 3])
def test_a_conflicting_append_writes_nothing(store: Store, expected: int) -> None:
    store.append(RID, 0, [created()])
    store.append(RID, 1, [entry()], summary={"status": "running", "seq": 2})
    with pytest.raises(JournalConflict):
        store.append(RID, expected, [entry("fail"), entry("retry")], summary={"status": "failed"})
    assert [r.action for r in store.read(RID)] == ["created", "start"]
    assert store.last_seq(RID) == 2
    assert store.summaries() == {RID: (2, Summary(2, {"status": "running", "seq": 2}))}


def test_conflict_messages_say_what_happened(store: Store) -> None:
    store.append(RID, 0, [created()])
    store.append(RID, 1, [entry()])
    with pytest.raises(JournalConflict, match="already exists"):
        store.append(RID, 0, [created()])
    with pytest.raises(JournalConflict, match="expected record 1, found 2"):
        store.append(RID, 1, [entry("fail")])


def test_a_new_rollout_must_expect_nothing(store: Store) -> None:
    with pytest.raises(JournalConflict, match="expected record 3, found 0"):
        store.append(RID, 3, [created()])
    assert store.rollouts() == []
    assert store.last_seq(RID) == 0
    assert store.summaries() == {}


def test_read_after_gives_only_newer_records(store: Store) -> None:
    store.append(RID, 0, [created(), entry(), entry("succeed")])
    assert [r.seq for r in store.read(RID, after=1)] == [2, 3]
    assert store.read(RID, after=3) == []
    assert store.read(RID, after=10) == []
    store.append(RID, 3, [entry("start", "wait_cng")])
    assert [(r.seq, r.step) for r in store.read(RID, after=3)] == [(4, "wait_cng")]


def test_unknown_rollouts(store: Store) -> None:
    with pytest.raises(UnknownRollout, match="the journal is empty"):
        store.read(RID)
    store.append(OTHER, 0, [created()])
    for after in (0, 1, 5):
        with pytest.raises(UnknownRollout, match=f"no rollout {RID}.*known rollouts: {OTHER}"):
            store.read(RID, after=after)
    assert store.last_seq(RID) == 0
    assert RID not in store.summaries()


def test_rollouts_and_read_all(store: Store) -> None:
    store.append(RID, 0, [created(), entry()])
    store.append(OTHER, 0, [created()])
    assert sorted(store.rollouts()) == [RID, OTHER]
    everything = store.read_all()
    assert sorted(everything) == [RID, OTHER]
    assert everything[RID] == store.read(RID) and everything[OTHER] == store.read(OTHER)


def test_last_seq_follows_appends(store: Store) -> None:
    assert store.last_seq(RID) == 0
    store.append(RID, 0, [created()])
    assert store.last_seq(RID) == 1
    store.append(RID, 1, [entry(), entry("succeed"), entry("start", "wait_cng")])
    assert store.last_seq(RID) == 4
    assert store.last_seq(OTHER) == 0


def test_summaries_are_kept_with_their_appends(store: Store) -> None:
    store.append(RID, 0, [created()], summary={"status": "created", "steps": {"tag": "pending"}})
    assert store.summaries() == {RID: (1, Summary(1, {"status": "created", "steps": {"tag": "pending"}}))}
    store.append(RID, 1, [entry(), entry("succeed")], summary={"status": "running", "done": ["tag"]})
    store.append(OTHER, 0, [created()], summary={"status": "created"})
    assert store.summaries() == {
        RID: (3, Summary(3, {"status": "running", "done": ["tag"]})),
        OTHER: (1, Summary(1, {"status": "created"})),
    }


def test_an_append_without_summary_makes_it_stale(store: Store) -> None:
    store.append(RID, 0, [created()])
    assert store.summaries() == {RID: (1, None)}  # never had one
    store.append(RID, 1, [entry()], summary={"status": "running"})
    store.append(RID, 2, [entry("succeed")])
    last, summary = store.summaries()[RID]
    assert last == 3
    assert summary == Summary(2, {"status": "running"})  # the latest one, describing record 2
    assert summary.seq != last  # stale: readers rebuild this rollout
    store.append(RID, 3, [entry("start", "wait_cng")], summary={"status": "waiting"})
    assert store.summaries()[RID] == (4, Summary(4, {"status": "waiting"}))


def test_summaries_must_be_plain_json_and_are_checked_before_writing(store: Store) -> None:
    store.append(RID, 0, [created()], summary={"status": "created"})
    with pytest.raises(JournalError, match="plain JSON"):
        store.append(RID, 1, [entry()], summary={"when": object()})
    with pytest.raises(JournalError, match="plain JSON"):
        store.append(RID, 1, [entry()], summary={"ratio": float("nan")})
    assert store.last_seq(RID) == 1
    assert store.summaries() == {RID: (1, Summary(1, {"status": "created"}))}


def test_a_summary_is_a_copy(store: Store) -> None:
    given: dict[str, object] = {"status": "running", "steps": ["tag"]}
    store.append(RID, 0, [created()], summary=given)
    given["status"] = "changed by the caller"
    read = store.summaries()[RID][1]
    assert read is not None and read.data == {"status": "running", "steps": ["tag"]}


def test_nothing_appended_to_nothing_creates_no_rollout(store: Store) -> None:
    assert store.append(RID, 0, [], summary={"status": "created"}) == []
    assert store.rollouts() == [] and store.summaries() == {} and store.last_seq(RID) == 0


def test_reopening_keeps_everything(stores: Stores) -> None:
    first = stores.store
    first.append(RID, 0, [created(), entry(key=f"{RID}/tag/1")], summary={"status": "running"})
    first.append(RID, 2, [entry("succeed")])
    first.append(OTHER, 0, [created()], summary={"status": "created", "n": 1.5})
    before = (first.read_all(), first.summaries(), sorted(first.rollouts()))
    first.close()
    again = stores.reopen()
    assert (again.read_all(), again.summaries(), sorted(again.rollouts())) == before
    assert again.last_seq(RID) == 3 and again.last_seq(OTHER) == 1
    assert again.summaries()[RID] == (3, Summary(2, {"status": "running"}))
    with pytest.raises(JournalConflict):
        again.append(RID, 2, [entry("fail")])
    again.append(RID, 3, [entry("start", "wait_cng")], summary={"status": "waiting"})
    assert again.summaries()[RID] == (4, Summary(4, {"status": "waiting"}))


def test_a_second_handle_sees_appends_of_the_first(stores: Stores) -> None:
    """Two handles on one journal (for SQLite: two connections, as two processes would have)."""
    one, two = stores.store, stores.reopen()
    one.append(RID, 0, [created()], summary={"status": "created"})
    assert two.last_seq(RID) == 1
    two.append(RID, 1, [entry()], summary={"status": "running"})
    with pytest.raises(JournalConflict, match="expected record 1, found 2"):
        one.append(RID, 1, [entry("abort", None)], summary={"status": "aborted"})
    assert one.summaries() == {RID: (2, Summary(2, {"status": "running"}))}
    assert [r.action for r in one.read(RID, after=1)] == ["start"]


@pytest.mark.parametrize("bad", [f"{RID}\n", f"{RID}\r\n", "\n", "", "../etc/passwd", ".hidden", "-rf",
                                 "a b", "a/b", "é", "a" * 129])
def test_every_store_refuses_the_same_bad_rollout_ids(store: Store, bad: str) -> None:
    # A version with a trailing newline was once a second rollout beside the real one.
    store.append(RID, 0, [created()])
    with pytest.raises(JournalError, match=rf"rollout id {re.escape(repr(bad))} is not valid"):
        store.append(bad, 0, [created()])
    with pytest.raises(JournalError, match="is not valid"), store.hold(bad):
        pass
    assert store.rollouts() == [RID]


@pytest.mark.parametrize("good", ["a", "r1", RID, "13.10.202103011220+ee", "A_b-c.d", "a" * 128])
def test_every_store_takes_the_same_good_rollout_ids(store: Store, good: str) -> None:
    assert [r.seq for r in store.append(good, 0, [created()])] == [1]
    with store.hold(good):
        pass
    assert store.rollouts() == [good]


# -- environments: one journal per environment ------------------------------------------------------

ENV = "gprd"


def claim(by: str = RID, action: str = "claim") -> Entry:
    return Entry(action, 2000.0, "runner", None, {"rollout": by})


def test_environment_appends_name_the_record_they_follow(store: Store) -> None:
    made = store.env_append(ENV, 0, [claim()])
    assert [(r.rollout_id, r.seq, r.action) for r in made] == [(ENV, 1, "claim")]
    made = store.env_append(ENV, 1, [claim(action="succeeded"), claim(action="release")])
    assert [(r.rollout_id, r.seq, r.action) for r in made] == [(ENV, 2, "succeeded"), (ENV, 3, "release")]
    records = store.env_read(ENV)
    assert [(r.rollout_id, r.seq, r.action, r.actor, r.at) for r in records] == [
        (ENV, 1, "claim", "runner", 2000.0), (ENV, 2, "succeeded", "runner", 2000.0),
        (ENV, 3, "release", "runner", 2000.0)]
    assert records[0].data == {"rollout": RID} and records[0].step is None
    assert [r.seq for r in store.env_read(ENV, after=1)] == [2, 3]
    assert store.env_read(ENV, after=3) == [] and store.env_read(ENV, after=9) == []


@pytest.mark.parametrize("expected", [0, 1, 3])
def test_a_conflicting_environment_append_writes_nothing(store: Store, expected: int) -> None:
    store.env_append(ENV, 0, [claim()])
    store.env_append(ENV, 1, [claim(action="release")])
    with pytest.raises(JournalConflict, match=rf"^environment {ENV} changed while this command was deciding "
                                              rf"\(expected record {expected}, found 2\); nothing was "
                                              "written.*try again$"):
        store.env_append(ENV, expected, [claim(OTHER), claim(OTHER, "succeeded")])
    assert [(r.seq, r.action, r.data) for r in store.env_read(ENV)] == [
        (1, "claim", {"rollout": RID}), (2, "release", {"rollout": RID})]
    assert store.environments() == [ENV]


def test_a_new_environment_must_expect_nothing(store: Store) -> None:
    with pytest.raises(JournalConflict, match="expected record 2, found 0"):
        store.env_append(ENV, 2, [claim()])
    assert store.env_read(ENV) == [] and store.environments() == []


def test_environments_are_those_with_records_sorted(store: Store) -> None:
    assert store.environments() == []
    assert store.env_read("gstg") == []  # never written: nothing, not an error
    assert store.env_append("gstg", 0, []) == []  # nothing appended makes no environment
    for name in ("gstg", "gprd-cny", "gprd", "db.main"):
        store.env_append(name, 0, [claim()])
    store.env_append("gprd", 1, [claim(action="release")])
    assert store.environments() == ["db.main", "gprd", "gprd-cny", "gstg"]
    assert [r.seq for r in store.env_read("gstg")] == [1]


def test_environment_journals_are_apart_from_rollouts(store: Store) -> None:
    """An environment named like a rollout shares nothing with it: numbers, listings, reads."""
    store.append(RID, 0, [created(), entry()])
    store.env_append(RID, 0, [claim()])
    assert store.last_seq(RID) == 2 and [r.seq for r in store.read(RID)] == [1, 2]
    assert [r.seq for r in store.env_read(RID)] == [1]
    assert store.rollouts() == [RID] and list(store.read_all()) == [RID]
    assert store.environments() == [RID]
    with pytest.raises(UnknownRollout):
        store.read(ENV)
    store.env_append(ENV, 0, [claim()])
    assert store.rollouts() == [RID] and store.summaries() == {RID: (2, None)}


def test_environment_records_survive_reopening(stores: Stores) -> None:
    first = stores.store
    first.env_append(ENV, 0, [claim(), claim(action="succeeded")])
    first.env_append("gstg", 0, [claim(OTHER)])
    before = (first.environments(), first.env_read(ENV), first.env_read("gstg"))
    first.close()
    again = stores.reopen()
    assert (again.environments(), again.env_read(ENV), again.env_read("gstg")) == before
    with pytest.raises(JournalConflict):
        again.env_append(ENV, 1, [claim(action="release")])
    assert [r.seq for r in again.env_append(ENV, 2, [claim(action="release")])] == [3]


def test_a_second_handle_sees_environment_appends_of_the_first(stores: Stores) -> None:
    one, two = stores.store, stores.reopen()
    one.env_append(ENV, 0, [claim(RID)])
    with pytest.raises(JournalConflict, match="expected record 0, found 1"):
        two.env_append(ENV, 0, [claim(OTHER)])
    assert [r.data["rollout"] for r in two.env_read(ENV)] == [RID]
    two.env_append(ENV, 1, [claim(RID, "release")])
    assert [r.action for r in one.env_read(ENV, after=1)] == ["release"]


BAD_NAMES = [f"{ENV}\n", "\n", "", "../etc/passwd", ".hidden", "-rf", "a b", "a/b", "é", "a" * 129]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_every_store_refuses_the_same_bad_environment_names(store: Store, bad: str) -> None:
    # Refused on reads too: "gprd\n" must not read as an environment that nobody has claimed.
    store.env_append(ENV, 0, [claim()])
    said = rf"^environment name {re.escape(repr(bad))} is not valid; use 1 to 128 letters"
    with pytest.raises(JournalError, match=said):
        store.env_append(bad, 0, [claim()])
    with pytest.raises(JournalError, match=said):
        store.env_read(bad)
    assert store.environments() == [ENV]


@pytest.mark.parametrize("good", ["a", "gprd", "gprd-cny", "db.main_1+x", "a" * 128])
def test_every_store_takes_the_same_good_environment_names(store: Store, good: str) -> None:
    assert [r.seq for r in store.env_append(good, 0, [claim()])] == [1]
    assert [r.rollout_id for r in store.env_read(good)] == [good]


# -- delivery positions -----------------------------------------------------------------------------

def test_delivery_positions_move_forward_never_back(store: Store) -> None:
    store.append(RID, 0, [created(), entry(), entry("succeed"), entry("start", "wait_cng")])
    assert store.delivered(RID) == {}
    store.set_delivered(RID, "slack", 2)
    store.set_delivered(RID, "webhook", 1)
    assert store.delivered(RID) == {"slack": 2, "webhook": 1}
    store.set_delivered(RID, "slack", 1)  # a late or repeated delivery: kept where it was
    store.set_delivered(RID, "slack", 0)
    assert store.delivered(RID) == {"slack": 2, "webhook": 1}
    store.set_delivered(RID, "slack", 4)
    store.set_delivered(RID, "slack", 4)
    assert store.delivered(RID) == {"slack": 4, "webhook": 1}


def test_delivery_positions_are_per_rollout(store: Store) -> None:
    store.append(RID, 0, [created(), entry()])
    store.append(OTHER, 0, [created()])
    store.set_delivered(RID, "slack", 2)
    assert store.delivered(OTHER) == {}
    store.set_delivered(OTHER, "slack", 1)
    assert store.delivered(RID) == {"slack": 2} and store.delivered(OTHER) == {"slack": 1}
    assert store.delivered("never-made") == {}


def test_setting_position_0_keeps_nothing(store: Store) -> None:
    store.append(RID, 0, [created()])
    store.set_delivered(RID, "slack", 0)
    assert store.delivered(RID) == {}


def test_delivery_positions_survive_reopening(stores: Stores) -> None:
    first = stores.store
    first.append(RID, 0, [created(), entry(), entry("succeed")])
    first.set_delivered(RID, "slack", 3)
    first.set_delivered(RID, "webhook", 2)
    first.close()
    again = stores.reopen()
    assert again.delivered(RID) == {"slack": 3, "webhook": 2}
    again.set_delivered(RID, "slack", 1)
    assert again.delivered(RID) == {"slack": 3, "webhook": 2}


def test_a_second_handle_cannot_move_a_position_back(stores: Stores) -> None:
    one, two = stores.store, stores.reopen()
    one.append(RID, 0, [created(), entry(), entry("succeed")])
    two.set_delivered(RID, "slack", 3)
    one.set_delivered(RID, "slack", 2)  # one's own idea of the position is older
    assert one.delivered(RID) == two.delivered(RID) == {"slack": 3}


@pytest.mark.parametrize(("rollout_id", "notifier", "seq", "said"), [
    (OTHER, "slack", 1, f"no rollout {OTHER} in the journal"),
    (RID, "slack", 3, f"cannot mark record 3 of rollout {RID} delivered to slack: its last record is 2; "
                      "nothing was written"),
    (RID, "slack", -1, "a delivery position must be a record's sequence number"),
    (RID, "slack", True, "a delivery position must be a record's sequence number"),
    (RID, "slack", 1.0, "a delivery position must be a record's sequence number"),
    (RID, "", 1, "notifier name '' is not valid"),
    (f"{RID}\n", "slack", 1, "is not valid"),
])
def test_a_position_that_names_no_record_is_refused(store: Store, rollout_id: str, notifier: str,
                                                     seq: int, said: str) -> None:
    store.append(RID, 0, [created(), entry()])
    store.set_delivered(RID, "webhook", 1)
    with pytest.raises(JournalError, match=re.escape(said)):
        store.set_delivered(rollout_id, notifier, seq)
    assert store.delivered(RID) == {"webhook": 1} and store.delivered(OTHER) == {}

"""Delivering notices from the journal: durable positions, one thread per notifier, never lost.

Every notice comes from a journal record (:func:`deploystate.notices.notice_for`).  Each
notifier's position in each rollout (the last record it accepted, or that it does not take) is
kept in the store (``Store.delivered`` / ``Store.set_delivered``) and moved on only once the
notifier accepted the notice.  So a process killed at any point leaves every notifier at its
last accepted notice, and the next command delivers from there: nothing is lost, and at most one
notice per notifier is delivered twice, the one that was in flight at the kill (sent, and perhaps
accepted, but its position not yet written).

A notifier works in its own thread: woken when the runner appends, and every ``poll_s`` to see
appends by other processes (an operator's promote).  One that fails is retried in order (it
never skips ahead) with an exponential, capped backoff, or after the ``retry_after`` its
receiver asked for (Slack's 429 ``Retry-After``); the trouble is announced on the other notifiers
and on stderr and the log, and the runner never waits for any of it.  Two processes never
deliver one rollout to one notifier at once: each batch is sent holding a lock
(``Store.hold`` on a name of its own), with the position read again under it.

Which rollouts a notifier owes: the ones a command names (it delivers all of their story), every
active rollout, and every rollout the notifier has a position in (it started, so it finishes).
An old rollout that ended before a notifier was configured is not sent to it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TextIO

import attrs

from deploystate.journal import Record, RolloutBusy
from deploystate.notices import LOG, notice_for
from deploystate.notify_config import DELIVERY, DeliverySettings, NoticeFilter
from deploystate.ports import Notice, Notifier, NotifierError, Store
from deploystate.spec import Spec
from deploystate.terminal import printable

__all__ = ["Backlog", "Delivery", "RolloutContext", "StderrNotifier", "backlog", "owed_rollouts"]

# A Retry-After longer than this is waited for no longer (a receiver's typo must not stall for days).
RETRY_AFTER_CAP_S = 3600.0
# How long close() waits for a notice still in flight after the drain (its HTTP time-out may be longer:
# the thread is a daemon, and the notice is the one that may be repeated).
JOIN_S = 1.0
_ERROR_CHARS = 200
# A notifier's trouble is announced once this many tries in a row failed, or it has lasted this long.
ANNOUNCE_AFTER_FAILURES = 3
ANNOUNCE_AFTER_S = 30.0
_SAYING = threading.Lock()


@attrs.frozen
class RolloutContext:
    """What turning a rollout's records into notices needs beside them: its spec (milestones), its
    dry runs (a failed one is a warning) and whether its backend deploys (a simulation is not REAL)."""

    spec: Spec
    dry_runs: frozenset[str]
    deploys: bool


def context_of(first: Record) -> RolloutContext:
    """A rollout's context from its ``created`` record (what the runner knows from its view)."""
    from deploystate.rollout import rebuild

    view = rebuild([first])
    return RolloutContext(view.spec, view.machine.optional, view.deploys)


@attrs.frozen
class Backlog:
    """What a notifier has not accepted: how many notices, since when (the first one's record time),
    of how many rollouts."""

    count: int = 0
    since: float | None = None
    rollouts: tuple[str, ...] = ()

    def __add__(self, other: Backlog) -> Backlog:
        since = [s for s in (self.since, other.since) if s is not None]
        return Backlog(self.count + other.count, min(since) if since else None,
                       self.rollouts + other.rollouts)


def when(at: float | None, now: float | None = None) -> str:
    """``14:02 UTC`` for a time today, ``2021-03-01 12:20 UTC`` for another day."""
    if at is None:
        return "?"
    day = time.strftime("%Y-%m-%d", time.gmtime(at))
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))
    return time.strftime("%H:%M UTC" if day == today else "%Y-%m-%d %H:%M UTC", time.gmtime(at))


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def owed_rollouts(store: Store, names: Iterable[str], named: Iterable[str] = ()) -> list[str]:
    """The rollouts the notifiers ``names`` owe (see the module's docstring), ``named`` first."""
    order = list(dict.fromkeys(named))
    wanted = set(names)
    for rollout_id, (last, summary) in store.summaries().items():
        if rollout_id in order:
            continue
        active = summary is None or summary.seq != last or summary.data.get("status") == "active"
        if active or wanted & set(store.delivered(rollout_id)):
            order.append(rollout_id)
    return order


def backlog(store: Store, rollout_ids: Iterable[str], name: str, accepts: NoticeFilter,
            contexts: dict[str, RolloutContext] | None = None, runbook: str | None = None) -> Backlog:
    """What notifier ``name`` (taking what ``accepts`` accepts) has not accepted of ``rollout_ids``."""
    contexts = {} if contexts is None else contexts
    total = Backlog()
    for rollout_id in rollout_ids:
        position = store.delivered(rollout_id).get(name, 0)
        if store.last_seq(rollout_id) <= position:
            continue
        context = contexts.get(rollout_id)
        if context is None:  # the first record says how to read the others
            records = store.read(rollout_id)
            context = contexts[rollout_id] = context_of(records[0])
            records = records[position:]  # records are numbered 1, 2, ...
        else:
            records = store.read(rollout_id, after=position)
        waiting = [r for r in records if accepts.accepts(_notice(r, context, runbook), context.spec)]
        if waiting:
            total = total + Backlog(len(waiting), waiting[0].at, (rollout_id,))
    return total


def _notice(record: Record, context: RolloutContext, runbook: str | None) -> Notice:
    return notice_for(record, runbook=runbook, dry_run=record.step in context.dry_runs,
                      deploys=context.deploys)


def lock_name(notifier: str, rollout_id: str) -> str:
    """The ``Store.hold`` name that says "delivering ``rollout_id`` to ``notifier``" (a valid rollout id,
    unlike any auto-deploy version)."""
    digest = hashlib.blake2b(rollout_id.encode(), digest_size=12).hexdigest()
    return f"delivery+{notifier[:64]}+{digest}"


def _said(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return printable(text if len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS - 3] + "...")


class StderrNotifier:
    """The library's default: one human line per notice on stderr (``sys.stderr`` when it is written,
    so a redirected stderr is followed), e.g. ``deploystate: 13.10.1 trigger_x: succeeded``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def notify(self, notice: Notice) -> None:
        mark = {"warning": "warning: ", "error": "ERROR: "}.get(notice.severity, "")
        with contextlib.suppress(OSError, ValueError):  # a closed or full stderr must not stop a rollout
            print(printable(f"deploystate: {notice.rollout_id}: {mark}{notice.message}"),
                  file=self.stream or sys.stderr, flush=True)


@attrs.define
class _Trouble:
    """A notifier failing since ``started`` (wall clock), on the notice of record ``since_at``."""

    started: float
    since_at: float
    rollout_id: str
    error: str
    failures: int = 0
    announced: float | None = None


class _Worker:
    """One notifier's thread and what it knows."""

    def __init__(self, delivery: Delivery, name: str, notifier: Notifier, accepts: NoticeFilter) -> None:
        self.delivery = delivery
        self.name = name
        self.notifier = notifier
        self.accepts = accepts
        self.wake = threading.Event()
        self.side: collections.deque[Notice] = collections.deque()  # delivery's own notices, best effort
        self.positions: dict[str, int] = {}
        self.trouble: _Trouble | None = None
        self.refused: str | None = None  # a permanent refusal: nothing more is tried in this process
        self.elsewhere: set[str] = set()  # rollouts another process is delivering to this notifier
        self.clean_at = -1  # the change count at the start of its last pass that found nothing to do
        self.thread = threading.Thread(target=self.loop, name=f"deploystate-notify {name}", daemon=True)

    # -- the thread --------------------------------------------------------------------------
    def loop(self) -> None:
        delivery = self.delivery
        while not delivery.stopping.is_set():
            self.wake.clear()
            changes = delivery.changes
            try:
                busy = self.one_pass()
            except Exception as error:  # the journal itself failed (closed, disk...): wait and retry
                if delivery.stopping.is_set():
                    return
                delivery.say("warning", f"{self.name}: cannot read what to deliver ({_said(error)}); trying "
                                        "again", notifier=self.name)
                busy = True
                delivery.stopping.wait(min(delivery.settings.retry_max_s, 5.0))
            if self.refused is not None:
                self.finished(changes)
                return
            if not busy:
                self.finished(changes)
                self.wake.wait(delivery.settings.poll_s)

    def finished(self, changes: int) -> None:
        with self.delivery.condition:
            self.clean_at = max(self.clean_at, changes)
            self.delivery.condition.notify_all()

    def one_pass(self) -> bool:
        """Deliver what is pending in every rollout owed; True if something was sent or is left."""
        worked = self.send_side()
        for rollout_id in list(self.delivery.rollouts):
            if self.delivery.stopping.is_set() or self.refused is not None:
                return True
            last = self.delivery.store.last_seq(rollout_id)
            if last <= self.positions.get(rollout_id, 0):  # nothing new (0: no record yet)
                continue
            worked = self.deliver(rollout_id) or worked
        return worked

    def deliver(self, rollout_id: str) -> bool:
        delivery = self.delivery
        store = delivery.store
        try:
            hold = store.hold(lock_name(self.name, rollout_id))
            hold.__enter__()
        except RolloutBusy:
            # Another process delivers this rollout to this notifier: it has the position; look again later.
            self.elsewhere.add(rollout_id)
            return False
        try:
            self.elsewhere.discard(rollout_id)
            position = store.delivered(rollout_id).get(self.name, 0)
            records = store.read(rollout_id, after=position)
            context = delivery.context(rollout_id)
            advanced = position
            try:
                for record in records:
                    notice = _notice(record, context, delivery.runbook)
                    if self.accepts.accepts(notice, context.spec):
                        if not self.send(notice, rollout_id):
                            return True  # stopping, or refused for good: the position stays before it
                        store.set_delivered(rollout_id, self.name, record.seq)
                    advanced = record.seq  # a notice this notifier does not take moves it on too
                    self.send_side()
            finally:
                if advanced > position:
                    store.set_delivered(rollout_id, self.name, advanced)
                self.positions[rollout_id] = advanced
            return bool(records)
        finally:
            hold.__exit__(None, None, None)

    def send(self, notice: Notice, rollout_id: str) -> bool:
        """Send ``notice`` until it is accepted (True); False when delivery stops or it is refused."""
        delivery = self.delivery
        settings = delivery.settings
        attempt = 0
        while not delivery.stopping.is_set():
            try:
                self.notifier.notify(notice)
            except NotifierError as error:
                retry_after, permanent = error.retry_after, error.permanent
                said = _said(error)
            except Exception as error:  # a notifier's bug or an outage: retried like any refusal
                retry_after, permanent, said = None, False, f"{type(error).__name__}: {_said(error)}"
            else:
                self.recovered()
                return True
            if self.trouble is None:
                self.trouble = _Trouble(time.time(), notice.at, rollout_id, said)
            self.trouble.failures += 1
            self.trouble.error = said
            if permanent:
                self.refused = said
                self.announce(permanent=True)
                return False
            if retry_after is not None and retry_after >= 0:
                wait = min(float(retry_after), RETRY_AFTER_CAP_S)
            else:
                wait = min(settings.retry_max_s, settings.retry_min_s * 2.0 ** min(attempt, 60))
            self.announce(wait=wait)
            attempt += 1
            if delivery.stopping.wait(wait):
                return False
        return False

    def send_side(self) -> bool:
        """Delivery's own notices (another notifier's trouble): one try each, never in the way."""
        sent = False
        while self.side and self.refused is None and self.trouble is None:
            notice = self.side.popleft()
            try:
                self.notifier.notify(notice)
                sent = True
            except Exception as error:
                LOG.warning(json.dumps({"action": DELIVERY, "notifier": self.name, "severity": "warning",
                                        "message": f"{self.name} did not take delivery's notice either "
                                                   f"({_said(error)}): {notice.message}"}, sort_keys=True))
        return sent

    # -- saying so ---------------------------------------------------------------------------
    def announce(self, *, wait: float | None = None, permanent: bool = False) -> None:
        trouble = self.trouble
        assert trouble is not None
        now = time.time()
        if trouble.announced is None:
            # One refusal put right by the next try (a routine 429) is no news for the other channels.
            due = (trouble.failures >= ANNOUNCE_AFTER_FAILURES or now - trouble.started >= ANNOUNCE_AFTER_S
                   or (wait is not None and wait >= ANNOUNCE_AFTER_S))  # the next try is far off
        else:
            due = now - trouble.announced >= self.delivery.settings.reannounce_s
        if not (due or permanent):
            return
        trouble.announced = now
        left = self.delivery.backlog_of(self)
        count = max(left.count, 1)
        since = when(left.since if left.since is not None else trouble.since_at)
        if permanent:
            text = (f"{self.name} refuses notices ({trouble.error}); {plural(count, 'notice')} since {since} "
                    "not delivered: once its settings are fixed, the next deploystate command on this "
                    "journal delivers them")
        else:
            text = (f"{self.name} has not accepted {plural(count, 'notice')} since {since} "
                    f"({trouble.error}); retrying" + (f" in {wait:.3g}s" if wait is not None else ""))
        self.delivery.trouble(self, "error" if permanent else "warning", text, trouble.rollout_id,
                              {"notifier": self.name, "undelivered": count, "since": left.since,
                               "error": trouble.error, "permanent": permanent})

    def recovered(self) -> None:
        trouble = self.trouble
        if trouble is None:
            return
        self.trouble = None
        if trouble.announced is None:
            return
        text = (f"{self.name} accepts notices again, after {plural(trouble.failures, 'failed attempt')} "
                f"since {when(trouble.started)} ({trouble.error}); delivering what it missed, in order")
        self.delivery.trouble(self, "info", text, trouble.rollout_id,
                              {"notifier": self.name, "failures": trouble.failures, "recovered": True})


class Delivery:
    """Delivers every owed rollout's notices to ``notifiers`` (name -> (notifier, filter)).

    Use it as a context manager (or :meth:`start` and :meth:`close`); give it to the runner as its
    notifier (or inside a ``FanOut``): :meth:`notify` only wakes the threads, which read the journal.
    ``in_memory``: the store is lost with the process, so what is left is said to be lost.
    """

    def __init__(self, store: Store, notifiers: Mapping[str, tuple[Notifier, NoticeFilter]],
                 runbook: str | None = None, *, settings: DeliverySettings | None = None,
                 stream: TextIO | None = None, in_memory: bool = False) -> None:
        self.store = store
        self.runbook = runbook
        self.settings = settings or DeliverySettings()
        self.stream = stream
        self.in_memory = in_memory
        self.rollouts: list[str] = []
        self.changes = 0
        self.condition = threading.Condition()
        self.stopping = threading.Event()
        self._contexts: dict[str, RolloutContext] = {}
        self._context_lock = threading.Lock()
        self.workers = {name: _Worker(self, name, notifier, accepts)
                        for name, (notifier, accepts) in notifiers.items()}
        self._started = False
        self._closed = False

    # -- life ---------------------------------------------------------------------------------
    def start(self, rollouts: Iterable[str] = ()) -> Delivery:
        """Start delivering: the rollouts named, and every other one owed (see the module's docstring)."""
        if not self._started:
            self._started = True
            for rollout_id in owed_rollouts(self.store, self.workers, rollouts):
                self.track(rollout_id)
            for worker in self.workers.values():
                worker.thread.start()
        return self

    def __enter__(self) -> Delivery:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        # Interrupted (Ctrl-C): no waiting, but still say what is left.
        self.close(0.0 if isinstance(error, KeyboardInterrupt) else None)

    def track(self, rollout_id: str) -> None:
        with self.condition:
            if rollout_id not in self.rollouts:
                self.rollouts.append(rollout_id)
            self.changes += 1
        for worker in self.workers.values():
            worker.wake.set()

    def notify(self, notice: Notice) -> None:
        """A record was appended (the runner's notice of it): wake the notifiers.  Never blocks."""
        self.track(notice.rollout_id)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every notifier has delivered what is owed (or refused
        for good); True if all did."""
        deadline = time.monotonic() + timeout
        with self.condition:
            self.changes += 1
            target = self.changes
        for worker in self.workers.values():
            worker.wake.set()
        with self.condition:
            while True:
                waiting = [w for w in self.workers.values() if w.thread.is_alive() and w.refused is None
                           and (w.clean_at < target or (w.side and w.trouble is None))]
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    return not waiting
                self.condition.wait(min(left, 0.5))

    def close(self, drain_s: float | None = None) -> list[str]:
        """Drain for up to ``drain_s`` (default: the setting), stop, close the notifiers, and say what is
        left undelivered (also returned, one line per notifier)."""
        if self._closed:
            return []
        self._closed = True
        if self._started:
            self.drain(self.settings.drain_s if drain_s is None else drain_s)
        self.stopping.set()
        for worker in self.workers.values():
            worker.wake.set()
        for worker in self.workers.values():
            if worker.thread.is_alive():
                worker.thread.join(JOIN_S)
        lines = self.leftovers() if self._started else []
        for line in lines:
            self.say("warning", line)
        for worker in self.workers.values():
            close = getattr(worker.notifier, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
        return lines

    # -- what is left --------------------------------------------------------------------------
    def context(self, rollout_id: str) -> RolloutContext:
        with self._context_lock:
            found = self._contexts.get(rollout_id)
        if found is None:
            found = context_of(self.store.read(rollout_id)[0])
            with self._context_lock:
                self._contexts[rollout_id] = found
        return found

    def backlog_of(self, worker: _Worker) -> Backlog:
        try:
            return backlog(self.store, list(self.rollouts), worker.name, worker.accepts, dict(self._contexts),
                           self.runbook)
        except Exception:  # the journal failing here is said elsewhere; the count is then unknown
            return Backlog()

    def backlogs(self) -> dict[str, Backlog]:
        return {name: self.backlog_of(worker) for name, worker in self.workers.items()}

    def leftovers(self) -> list[str]:
        lines = []
        for name, worker in self.workers.items():
            left = self.backlog_of(worker)
            if not left.count:
                continue
            why = []
            if worker.refused is not None:
                why.append(f"it refuses them: {worker.refused}")
            elif worker.trouble is not None:
                why.append(f"last answer: {worker.trouble.error}")
            if set(left.rollouts) <= worker.elsewhere:
                why.append("another deploystate process is delivering them")
            said = f" ({'; '.join(why)})" if why else ""
            head = f"{name}: {plural(left.count, 'notice')} since {when(left.since)} not delivered{said}"
            if self.in_memory:
                lines.append(f"{head}; this journal is in memory, so they are lost with it (use --store PATH "
                             "to keep a journal whose next command delivers them)")
            else:
                lines.append(f"{head}; the next deploystate command on this journal (run, start, simulate, "
                             "promote, retry, skip-bake, abort) delivers them")
        return lines

    # -- saying ---------------------------------------------------------------------------------
    def trouble(self, source: _Worker, severity: str, text: str, rollout_id: str,
                data: Mapping[str, object]) -> None:
        """Announce ``source``'s trouble on every OTHER notifier that takes delivery's notices, on
        stderr and on the log."""
        notice = Notice(rollout_id, time.time(), severity, text, DELIVERY, None, dict(data))
        for worker in self.workers.values():
            if worker is not source and worker.accepts.accepts(notice):
                worker.side.append(notice)
                worker.wake.set()
        with self.condition:
            self.condition.notify_all()
        self.say(severity, text, notifier=source.name)

    def say(self, severity: str, text: str, *, notifier: str | None = None) -> None:
        """``text`` on stderr, and as a JSON line on the log when it has a handler (the command line's
        structured log): without one, logging's last resort would print it on stderr a second time."""
        if LOG.hasHandlers():
            level = {"info": 20, "warning": 30}.get(severity, 40)
            LOG.log(level, json.dumps({"action": DELIVERY, "notifier": notifier, "severity": severity,
                                       "at": time.time(), "message": text}, sort_keys=True))
        mark = "" if severity == "info" else f"{severity}: "
        line = printable(f"deploystate: {mark}{text}") + "\n"
        with _SAYING, contextlib.suppress(OSError, ValueError):  # one whole line at a time, from any thread
            stream = self.stream or sys.stderr
            stream.write(line)
            stream.flush()


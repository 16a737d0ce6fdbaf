"""Every port the core talks to: small protocols that adapters in ``backends/`` implement.

Like httpx's transports: each protocol is a handful of methods with its contract in its
docstring, a real implementation (a deployer's API, SQLite), an embedded default (the simulated backend,
the memory store) and in-memory doubles for tests (:mod:`deploystate.doubles`).  The core in
``deploystate/`` imports nothing else from the outside world.

``close()`` releases what an implementation holds open (connections, listeners, files); the
command line calls it when a command ends, and embedders should too (``Backends`` and stores are
context managers).
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import attrs

from deploystate.errors import DeploystateError
from deploystate.journal import Entry, Record, Summary


class Outcome(enum.StrEnum):
    """What a status from outside means to a rollout."""

    WAITING = "waiting"  # not finished yet (created, pending, running, ...)
    BLOCKED = "blocked"  # not finished, and waiting on a person or a time (a manual or scheduled job)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed, canceled, skipped
    MISSING = "missing"  # does not exist (yet)
    UNKNOWN = "unknown"  # a status we do not know: treated as waiting, and announced


class BackendError(DeploystateError):
    """An outside system failed.  ``transient`` errors are retried later; others need a human.

    After a transient error on ``trigger`` nobody knows whether the deployment started: the
    runner looks the idempotency key up before it triggers again.
    """

    def __init__(self, message: str, *, transient: bool, gone: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.gone = gone  # what was asked about does not exist (any more)


def _environments(value: object) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (str(value),)


@attrs.frozen
class TriggerRequest:
    """Deploy ``version`` to ``environments`` at deployer ref ``ref``.

    ``key`` is the idempotency key: the deployer must be able to find a deployment by it, so
    that a runner resuming after a crash can learn whether its trigger really happened.
    """

    key: str = attrs.field(validator=attrs.validators.min_len(1))
    version: str = attrs.field(validator=attrs.validators.min_len(1))
    environments: tuple[str, ...] = attrs.field(converter=_environments,
                                                validator=attrs.validators.min_len(1))
    ref: str = attrs.field(validator=attrs.validators.min_len(1))
    check_mode: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    user: str = "deploystate"
    # A deliberate redeploy of an older version (``deploystate rollback``): deployers that know
    # one say so to their pipeline (e.g. a ``DEPLOY_ROLLBACK=true`` variable).
    rollback: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))


@attrs.frozen
class Deployment:
    """A deployer's record of one triggered deployment (e.g. a downstream pipeline)."""

    id: str
    key: str
    status: str  # the deployer's own word, e.g. "running"
    outcome: Outcome
    web_url: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


@runtime_checkable
class Deployer(Protocol):
    """Starts deployments and reports on them.  The deployment's own status is the truth."""

    def trigger(self, request: TriggerRequest) -> Deployment:
        """Start a deployment.  Must not be retried blindly: on doubt, ``find(key)`` first."""
        ...

    def status(self, deployment_id: str) -> Deployment:
        """The deployment's own current status (the truth, not a mirror of it)."""
        ...

    def find(self, key: str) -> Deployment | None:
        """The deployment triggered with idempotency ``key``, or None if there is none."""
        ...

    def cancel(self, deployment_id: str) -> Deployment:
        """Ask the deployer to stop a running deployment; returns its status after asking."""
        ...


@attrs.frozen
class PackageBuild:
    """The newest build of one package for a version, as the package builder reports it."""

    package: str
    tag: str
    status: str
    outcome: Outcome
    web_url: str | None = None


@runtime_checkable
class PackageWatcher(Protocol):
    def status(self, package: str, version: str) -> PackageBuild:
        """The newest build of ``package`` for ``version``; MISSING if there is none yet."""
        ...


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (virtual clocks start wherever they like)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a clock may end the wait early, e.g. when a webhook arrives)."""
        ...


@runtime_checkable
class Wakeable(Protocol):
    """Optional, on a clock: ``wake()`` ends a ``sleep`` early (a real clock; a webhook or a
    person's write to the journal should not wait for the next poll)."""

    def wake(self) -> None:
        ...


@attrs.frozen
class Notice:
    """One thing worth telling people: every journal record becomes one."""

    rollout_id: str
    at: float
    severity: str  # "info", "warning" or "error"
    message: str
    action: str
    step: str | None = None
    data: Mapping[str, object] = attrs.field(factory=dict)
    seq: int | None = None  # the record's sequence number in its rollout (a notice's stable id with it)


@runtime_checkable
class Notifier(Protocol):
    def notify(self, notice: Notice) -> None:
        """Tell people.  May raise :class:`NotifierError` (or anything): delivery retries it later,
        announces the trouble, and never lets it hold up a deployment."""
        ...


class NotifierError(DeploystateError):
    """A notifier could not deliver a notice.  ``retry_after`` (seconds): the receiver said when to
    try again (e.g. Slack's 429 with ``Retry-After``); ``permanent``: trying again cannot help
    (a revoked webhook), though delivery still keeps the position and says so."""

    def __init__(self, message: str, *, retry_after: float | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


class Verdict(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"  # the check could not tell: counted as a failure (fail closed), said as such
    SKIPPED = "skipped"  # not run: a rollback, and the check is not marked to run for rollbacks


@attrs.frozen
class CheckContext:
    """What a production check is asked about: deploying ``version`` of ``rollout_id`` to
    ``environment`` (``rollback``: a deliberate redeploy of an older version), at ``now``."""

    rollout_id: str
    version: str
    environment: str
    now: float
    rollback: bool = False


def _strings(values: Iterable[object]) -> tuple[str, ...]:
    return tuple(str(value) for value in values)


@attrs.frozen
class CheckResult:
    """One check's answer: a verdict, a one-line detail, and the evidence (links, failing series)."""

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    verdict: Verdict = attrs.field(converter=Verdict)
    detail: str = attrs.field(validator=attrs.validators.instance_of(str))
    evidence: tuple[str, ...] = attrs.field(default=(), converter=_strings)

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASSED

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict.value, "detail": self.detail,
                "evidence": list(self.evidence)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        return cls(str(data.get("name")), str(data.get("verdict")), str(data.get("detail", "")),
                   _strings(data.get("evidence", ()) or ()))


@runtime_checkable
class Check(Protocol):
    """A production check (entry point group ``deploystate.checks``, or offered by a backend).

    ``run`` must not raise for an outside failure: it returns ``Verdict.ERROR`` with what went
    wrong (a closed port, a 500, an unreadable answer); the gate treats that as a failure.
    ``rollback``: whether the check runs for rollbacks too (otherwise it is recorded as not run,
    "this is a rollback").
    """

    @property
    def name(self) -> str: ...

    @property
    def rollback(self) -> bool: ...

    def run(self, context: CheckContext) -> CheckResult:
        ...


@runtime_checkable
class Hints(Protocol):
    """Optional, on a deployer: it knows when its next change happens (simulations do).

    The runner then wakes exactly then instead of polling; real backends need not implement it.
    """

    def next_change_at(self) -> float | None:
        ...


class TriggerLike(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def environments(self) -> tuple[str, ...]: ...


@runtime_checkable
class TriggerLog(Protocol):
    """Optional, on a deployer: every trigger it ever received (simulations keep one).

    Summaries then compare the journal's count of triggers with the deployer's own.
    """

    def triggers(self) -> Sequence[TriggerLike]:
        ...


class Store(Protocol):
    """Where records live.  Implementations: ``MemoryStore``, ``SQLiteStore``.

    Records are appended, never rewritten.  Appends name the sequence number they expect to
    follow, so of two writers deciding on the same state only one writes.
    """

    def append(self, rollout_id: str, expected_seq: int, entries: Sequence[Entry],
               summary: Mapping[str, Any] | None = None) -> list[Record]:
        """Append after record ``expected_seq`` (0: the rollout must not exist yet).

        Raises ``JournalConflict`` if the rollout's last record is not ``expected_seq``.  Once this
        returns, the records are durable.  ``summary`` (the rollout after these records) is kept
        in the same transaction; without one, the rollout's summary is marked stale.
        """
        ...

    def read(self, rollout_id: str, after: int = 0) -> list[Record]:
        """A rollout's records after sequence number ``after``, in order.

        ``UnknownRollout`` if the rollout has no records at all.
        """
        ...

    def read_all(self) -> dict[str, list[Record]]:
        """Every rollout's records (one pass)."""
        ...

    def rollouts(self) -> list[str]:
        """Every rollout id in the store."""
        ...

    def last_seq(self, rollout_id: str) -> int:
        """The rollout's last sequence number, 0 if it does not exist.  Cheap (no record is read)."""
        ...

    def summaries(self) -> dict[str, tuple[int, Summary | None]]:
        """Every rollout: its last sequence number and its latest summary (None if none).

        A summary whose ``seq`` is not the last one is stale: the reader rebuilds that rollout.
        """
        ...

    def hold(self, rollout_id: str) -> contextlib.AbstractContextManager[None]:
        """Exclusive right to run ``rollout_id`` (released on exit, or when the process dies).

        ``RolloutBusy`` if another holder has it.
        """
        ...

    # -- environments: one journal per environment, shared by every rollout in the store --------
    # Locks, claims (one deployment per environment at a time) and what succeeded there are
    # records of the environment's own journal (``Record.rollout_id`` is the environment's name),
    # appended with the sequence number expected, exactly like a rollout's: of two runners
    # claiming one environment, one wins and the other reads again.

    def env_append(self, environment: str, expected_seq: int, entries: Sequence[Entry],
                   summary: Mapping[str, Any] | None = None) -> list[Record]:
        """Append to ``environment``'s journal after record ``expected_seq`` (0: it has none yet).

        ``JournalConflict`` if its last record is not ``expected_seq``; durable once it returns.
        ``summary`` (the environment after these records, opaque JSON the core makes) is kept in
        the same transaction, so readers start from it rather than from record 1.
        """
        ...

    def env_summary(self, environment: str) -> Summary | None:
        """The latest summary kept for ``environment`` (``seq``: the record it describes), or None."""
        ...

    def env_read(self, environment: str, after: int = 0) -> list[Record]:
        """``environment``'s records after ``after``, in order; ``[]`` for one never written."""
        ...

    def environments(self) -> list[str]:
        """Every environment with records, sorted."""
        ...

    # -- delivery: how far each notifier has been told a rollout's records -------------------------

    def delivered(self, rollout_id: str) -> dict[str, int]:
        """Each notifier's position in ``rollout_id``: the last record it accepted (absent: none)."""
        ...

    def set_delivered(self, rollout_id: str, notifier: str, seq: int) -> None:
        """Durably move ``notifier``'s position in ``rollout_id`` to ``seq``; never backwards
        (a lower ``seq`` than the kept one changes nothing)."""
        ...

    def close(self) -> None:
        ...


def natural_key(version: str) -> tuple[Any, ...]:
    """The default order of versions: their runs of digits compared as numbers, the rest as text
    (``13.10.202103011600`` after ``13.10.202103011500``, ``1.10`` after ``1.9``)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.findall(r"\d+|\D+", version))


def accept_any_version(version: str) -> str:
    """The default version check: the store's own rules on ids are enough."""
    return version


def _nothing_to_close() -> None:
    return None


@attrs.frozen
class Backends:
    """What a backend factory (entry point group ``deploystate.backends``) returns.

    Beside the three ports it says how its rollouts are named and linked:

    - ``check_version(text)`` returns the version or raises a ``DeploystateError`` saying what a
      version must look like for this backend (e.g. an auto-deploy tag);
    - ``prepare(version)`` is called once when a rollout is created (a simulated world moves its
      clock to when the version was tagged);
    - ``identity`` names what its deployments really reach (a deployer project, a simulated
      world): a rollout records it when created, and no other backend may drive that rollout;
    - ``runbook`` is a link given in failure notices;
    - ``closer`` releases what the backend holds open; call :meth:`close` (or use ``with``).
    """

    deployer: Deployer
    packages: PackageWatcher
    clock: Clock
    description: str = ""
    check_version: Callable[[str], str] = accept_any_version
    prepare: Callable[[str], None] = attrs.field(default=lambda version: None)
    runbook: str | None = None
    closer: Callable[[], None] = _nothing_to_close
    identity: str = ""
    deploys: bool = True  # False: nothing is ever deployed (a simulation); plans say so
    # Production checks the backend offers, by name (a simulated backend simulates them all);
    # the gate takes these before the ``deploystate.checks`` entry points of the same name.
    checks: Mapping[str, Check] = attrs.field(factory=dict)
    # Orders versions: "never an older version over a newer one" compares these keys.
    version_key: Callable[[str], tuple[Any, ...]] = natural_key

    @property
    def belongs_to(self) -> str:
        """What a rollout driven by these backends belongs to (``identity``, else ``description``)."""
        return self.identity or self.description

    def close(self) -> None:
        self.closer()

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

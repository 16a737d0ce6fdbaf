"""The one vocabulary of record actions.

A record's action is either an event of the machine (it changes a step's phase or ends the
rollout) or a fact around the events (it changes nothing the machine knows):

- ``created``: the version, the spec the rollout runs with, and the settings chosen.  Record 1.
- ``triggered``: the deployer accepted the trigger of a step's current attempt.
- ``canceled``: a person's command (retry, abort) had the deployer cancel a step's deployment.
- ``observed``: something seen outside that is worth keeping (an unknown status, a trigger in
  doubt, a backend error that will be retried).
- ``checked``: the production checks' results (``data["results"]``: one
  :meth:`~deploystate.ports.CheckResult.as_dict` each), at a promotion or before a protected
  deployment, whether they passed or not; ``data["for"]`` says which ("promotion", a step name).
- ``overridden``: a person overrode failing checks: ``by``, ``reason``, ``checks`` (the names
  failing then), ``at`` and ``until`` (epoch seconds).
- ``superseded``: a newer version reached an environment first, so this rollout will not deploy
  there (``environment``, ``by_version``, ``how``); the rollout ends as superseded.

An environment's own journal (shared by every rollout of a store) has facts of its own:
``locked`` / ``unlocked`` (``by``, ``reason``), ``claimed`` / ``released`` (``rollout``,
``step``, ``key``, ``version``, ``rollback``; a release also has ``outcome``), ``queued``
(a rollout waits for the environment).
"""

from __future__ import annotations

import enum


class Action(enum.StrEnum):
    # events of the machine
    START = "start"
    SUCCEED = "succeed"
    FAIL = "fail"
    RESUME = "resume"
    RETRY = "retry"
    SKIP = "skip"
    FINISH = "finish"
    ABORT = "abort"
    # facts
    CREATED = "created"
    TRIGGERED = "triggered"
    CANCELED = "canceled"
    OBSERVED = "observed"
    CHECKED = "checked"
    OVERRIDDEN = "overridden"
    SUPERSEDED = "superseded"
    # facts of an environment's journal
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    CLAIMED = "claimed"
    RELEASED = "released"
    QUEUED = "queued"

    @property
    def is_event(self) -> bool:
        return self in EVENTS


EVENTS = frozenset({Action.START, Action.SUCCEED, Action.FAIL, Action.RESUME, Action.RETRY, Action.SKIP,
                    Action.FINISH, Action.ABORT})
FACTS = frozenset(set(Action) - EVENTS)
ROLLOUT_EVENTS = frozenset({Action.FINISH, Action.ABORT})
ENVIRONMENT_FACTS = frozenset({Action.LOCKED, Action.UNLOCKED, Action.CLAIMED, Action.RELEASED,
                               Action.QUEUED})

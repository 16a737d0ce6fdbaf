"""The ``[notify]`` tables of ``deploystate.toml``: which notifiers, which notices go to each, and how
delivery retries and drains.

::

    [notify]                      # delivery's own settings (all optional)
    drain_seconds = 10            # how long a command waits at its end for notices still in flight
    retry_min_seconds = 1         # the first retry's wait; each next one doubles...
    retry_max_seconds = 60        # ...up to this (a receiver's Retry-After is obeyed instead)
    reannounce_seconds = 300      # how often a notifier still failing is announced again

    [notify.NAME]                 # NAME: an installed ``deploystate.notifiers`` entry point
    notices = "all"               # or "milestones", or a list of record actions
    ...                           # the rest is the notifier's own settings

Each ``NAME`` is an entry point of the ``deploystate.notifiers`` group whose factory
``create(settings, env) -> Notifier`` checks its settings and the environment variables they name
(an unset or empty one is a :class:`~deploystate.errors.DeploystateError` naming it).  ``notices``
is taken out before the factory sees the table; without it a notifier gets what its factory's
``default_notices`` (or its notifier's) says, else every notice.

Reading the tables (:func:`read_notify`) needs no environment and creates nothing, so ``status``
can use it; :func:`create_notifiers` is what commands that deliver call when they start.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

import attrs

from deploystate.actions import Action
from deploystate.config import ConfigError
from deploystate.errors import DeploystateError
from deploystate.ports import Notice, Notifier
from deploystate.spec import Spec, StepKind

GROUP = "deploystate.notifiers"
ALL = "all"
MILESTONES = "milestones"
# Notices about delivery itself ("slack has not accepted 3 notices since 14:02"): they come from no
# record, and go to the notifiers that take every notice or list this word.
DELIVERY = "delivery"
NotifierFactory = Callable[[Mapping[str, Any], Mapping[str, str]], Notifier]

# [notify] key -> (DeliverySettings field, lowest, highest), in seconds.
_SETTINGS: dict[str, tuple[str, float, float]] = {
    "drain_seconds": ("drain_s", 0.0, 600.0),
    "retry_min_seconds": ("retry_min_s", 0.01, 600.0),
    "retry_max_seconds": ("retry_max_s", 0.01, 3600.0),
    "reannounce_seconds": ("reannounce_s", 0.1, 86400.0),
}
# Actions that are milestones whatever their step.
_ALWAYS_MILESTONES = frozenset({Action.CREATED, Action.OVERRIDDEN, Action.ABORT, Action.SUPERSEDED,
                                Action.FINISH})


@attrs.frozen
class DeliverySettings:
    """How delivery waits: every default is here."""

    drain_s: float = 10.0
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    reannounce_s: float = 300.0
    # How often an idle notifier asks the journal whether another process appended (an operator's
    # promote while this process runs the rollout): a cheap read of one number per rollout.
    poll_s: float = 1.0


@attrs.frozen
class NoticeFilter:
    """Which notices a notifier gets: every one (``actions`` None), the milestones, or named actions."""

    spelled: str  # as the settings say it, for messages
    actions: frozenset[str] | None = None
    milestones: bool = False

    def accepts(self, notice: Notice, spec: Spec | None = None) -> bool:
        """Whether ``notice`` goes to the notifier; ``spec``: its rollout's (milestones need it)."""
        if self.milestones:
            return is_milestone(notice, spec)
        return self.actions is None or notice.action in self.actions


def is_milestone(notice: Notice, spec: Spec | None) -> bool:
    """What a release manager follows: created; the promotion's checks and its success; overrides;
    checks failing right before production; production's deployments succeeding or failing; abort,
    superseded, done."""
    action = notice.action
    if action in _ALWAYS_MILESTONES:
        return True
    steps = {s.name: s for s in spec.steps} if spec is not None else {}
    if action == Action.CHECKED:
        # A checks record names what it was run for: "promotion", or the deployment it gates.
        gated = steps.get(str(notice.data.get("for")))
        return notice.data.get("for") == "promotion" or (
            gated is not None and gated.protected and notice.data.get("passed") is False)
    step = steps.get(notice.step or "")
    if step is None:
        return False
    # Production is what protected steps deploy; a step deploying it too (an all-environments
    # deployment, the real path under some plans) finishes or fails production as well.
    production = {env for s in steps.values() if s.protected for env in s.targets}
    deploys_production = step.protected or bool(production & set(step.targets))
    if action == Action.SUCCEED:
        return step.kind is StepKind.PROMOTION or deploys_production
    if action == Action.FAIL:
        return deploys_production
    return False


EVERYTHING = NoticeFilter(ALL)


@attrs.frozen
class NotifierPlan:
    """One ``[notify.NAME]`` table: the factory's settings (without ``notices``) and the filter."""

    name: str
    settings: Mapping[str, Any]
    filter: NoticeFilter
    notices_given: bool = False  # the table says ``notices`` (else the notifier's default applies)


@attrs.frozen
class NotifyPlan:
    """Every configured notifier, by name, and delivery's settings.  Creates nothing."""

    notifiers: Mapping[str, NotifierPlan] = attrs.field(factory=dict)
    delivery: DeliverySettings = attrs.field(factory=DeliverySettings)

    @property
    def names(self) -> list[str]:
        return list(self.notifiers)


def installed() -> list[str]:
    """Every installed notifier's name."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


@functools.cache  # scanning installed packages costs ms; commands ask more than once
def factory(name: str) -> NotifierFactory:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        known = ", ".join(installed()) or "none (is deploystate installed?)"
        raise ConfigError(f"[notify.{name}]: no notifier named {name!r} is installed; installed: {known}")
    try:
        loaded = found[0].load()
    except ImportError as error:
        raise ConfigError(f"[notify.{name}]: notifier {name!r} cannot be loaded ({error}); install its "
                          f"extra, e.g. pip install 'deploystate[{name}]'") from None
    if not callable(loaded):
        raise ConfigError(f"[notify.{name}]: notifier {name!r} entry point is not callable")
    return loaded  # type: ignore[no-any-return]


def read_notify(table: Mapping[str, Any], source: str = "deploystate.toml") -> NotifyPlan:
    """``Config.notify_settings`` checked: every ``[notify.NAME]`` installed, ``notices`` known,
    delivery's numbers in range.  Needs no environment variable and creates no notifier."""
    notifiers: dict[str, NotifierPlan] = {}
    given: dict[str, float] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            notifiers[key] = _notifier_plan(key, value, source)
            continue
        if key not in _SETTINGS:
            raise ConfigError(f"{source}: [notify] has unknown key {key!r}; known: {', '.join(_SETTINGS)}, "
                              f"or a [notify.NAME] table for one of the notifiers {', '.join(installed())}")
        field, low, high = _SETTINGS[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not low <= value <= high:
            raise ConfigError(f"{source}: [notify] {key} must be a number of seconds between {low:g} and "
                              f"{high:g}, got {value!r}")
        given[field] = float(value)
    settings = DeliverySettings(**given)
    if settings.retry_min_s > settings.retry_max_s:
        raise ConfigError(f"{source}: [notify] retry_min_seconds ({settings.retry_min_s:g}) is more than "
                          f"retry_max_seconds ({settings.retry_max_s:g}); the first wait cannot be the "
                          "longer")
    return NotifyPlan(notifiers, settings)


def _notifier_plan(name: str, table: Mapping[str, Any], source: str) -> NotifierPlan:
    create = factory(name)  # an unknown name is refused here, naming the installed ones
    settings = {k: v for k, v in table.items() if k != "notices"}
    spelled = table.get("notices")
    if spelled is None:
        spelled = _default_notices(create)
    return NotifierPlan(name, settings, parse_notices(spelled, f"{source}: [notify.{name}] notices"),
                        notices_given="notices" in table)


def _default_notices(create: object, notifier: object = None) -> object:
    """What a notifier gets unless ``notices`` says: its own ``default_notices`` (on the notifier, its
    factory or the factory's module, e.g. "milestones" for an issue tracker), else every notice."""
    for owner in (notifier, create, importlib.import_module(getattr(create, "__module__", None) or __name__)):
        found = getattr(owner, "default_notices", None) if owner is not None else None
        if found is None and owner is not None:
            found = getattr(owner, "DEFAULT_NOTICES", None)
        if found is not None:
            return found
    return ALL


def known_actions() -> list[str]:
    return [*(str(a) for a in Action), DELIVERY]


def parse_notices(value: object, where: str) -> NoticeFilter:
    """``"all"``, ``"milestones"`` or a list of action names (see :mod:`deploystate.actions`)."""
    if value == ALL:
        return EVERYTHING
    if value == MILESTONES:
        return NoticeFilter(MILESTONES, milestones=True)
    if isinstance(value, str) or not isinstance(value, Sequence) \
            or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be \"all\", \"milestones\" or a list of actions, got {value!r}")
    if not value:
        raise ConfigError(f"{where} is an empty list, so the notifier would get nothing; list actions, or "
                          "remove its [notify.NAME] table")
    unknown = sorted(set(value) - set(known_actions()))
    if unknown:
        raise ConfigError(f"{where}: unknown action(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(known_actions())} (or \"all\", \"milestones\")")
    return NoticeFilter(", ".join(value), actions=frozenset(value))


class Notifiers:
    """Notifiers created from a plan (each with its filter), closed together."""

    def __init__(self, plan: NotifyPlan, made: Mapping[str, tuple[Notifier, NoticeFilter]],
                 refused: Mapping[str, str]) -> None:
        self.plan = plan
        self.made = dict(made)
        self.refused = dict(refused)  # name -> why it could not be created

    def __bool__(self) -> bool:
        return bool(self.made)

    def __iter__(self) -> Iterator[str]:
        return iter(self.made)

    def close(self) -> None:
        for notifier, _ in self.made.values():
            close = getattr(notifier, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # closing a client at the end is no error
                    close()


def create_notifiers(plan: NotifyPlan, env: Mapping[str, str], *, strict: bool = True,
                     only: str | None = None) -> Notifiers:
    """Each planned notifier made by its factory with ``env``.

    ``strict``: the first refusal (an unset variable...) is raised, after closing those already made;
    otherwise refusals are kept in :attr:`Notifiers.refused` and the others are made.
    """
    made: dict[str, tuple[Notifier, NoticeFilter]] = {}
    refused: dict[str, str] = {}
    for name, entry in plan.notifiers.items():
        if only is not None and name != only:
            continue
        try:
            notifier = factory(name)(dict(entry.settings), env)
        except DeploystateError as error:
            if strict:
                Notifiers(plan, made, {}).close()
                raise DeploystateError(f"notifier {name} ([notify.{name}]): {error}") from None
            refused[name] = str(error)
            continue
        if not callable(getattr(notifier, "notify", None)):
            raise ConfigError(f"notifier {name!r} factory returned {type(notifier).__name__}, which has no "
                              "notify(notice)")
        spelled = entry.filter
        if not entry.notices_given:
            # The notifier may know better than its factory what it is for.
            default = getattr(notifier, "default_notices", None)
            if default is not None:
                spelled = parse_notices(default, f"notifier {name}'s default_notices")
        made[name] = (notifier, spelled)
    return Notifiers(plan, made, refused)


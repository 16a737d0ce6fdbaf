"""The pipeline's shape as data: steps, what each one needs, and the rules a shape must obey.

A spec is made of frozen :class:`Step` values; a bad value fails where it is made, with a
message that names the step and says what to fix.  Specs load from Python, from a mapping
(as parsed from TOML) or from a TOML file.  The built-in specs live as TOML beside this
module so that the default is data, exactly like a user's own.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from deploystate.errors import SpecError

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
ENVIRONMENT_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
PACKAGE_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
DEFAULT_BAKE_SECONDS = 30 * 60
# A bake longer than a week is a typo (or 2**63, which would never end); a spec of more steps than
# this is no pipeline a person reads, and every rollout of it replays them all.
MAX_BAKE_SECONDS = 7 * 24 * 3600
MAX_STEPS = 500


class StepKind(enum.StrEnum):
    TAG = "tag"
    PACKAGE_WAIT = "package_wait"
    DEPLOYMENT = "deployment"
    LEGACY_DEPLOYMENT = "legacy_deployment"
    BAKE = "bake"
    PROMOTION = "promotion"


GATE_KINDS = frozenset({StepKind.BAKE, StepKind.PROMOTION})


def _fail(step: str, problem: str, fix: str) -> SpecError:
    return SpecError(f"step {step!r}: {problem}; {fix}")


def _check_name(instance: Step, _attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise SpecError(
            f"step name {value!r} is not valid; use 1-64 characters of lower-case letters, "
            "digits and '_', starting with a letter"
        )


def _check_needs(instance: Step, _attribute: attrs.Attribute[tuple[str, ...]], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(n, str) for n in value):
        raise _fail(instance.name, f"needs must be a list of step names, got {value!r}",
                    'write needs = ["other_step", ...]')
    if len(set(value)) != len(value):
        raise _fail(instance.name, f"needs lists a step twice: {list(value)}", "list each step once")
    if instance.name in value:
        raise _fail(instance.name, "needs itself", "remove it from its own needs")


def _to_kind(value: object) -> object:
    # A kind written by its name ("bake", from Python or TOML) is that kind.  Anything else is left
    # for the validator, which names the step and lists the kinds (rather than a bare ValueError,
    # or a TypeError for an unhashable value such as a TOML list).
    if isinstance(value, str) and not isinstance(value, StepKind):
        try:
            return StepKind(value)
        except ValueError:
            return value
    return value


def _tuple_of_str(value: object) -> object:
    # Lists from TOML become tuples; anything else is left for the validator to refuse,
    # so a string is never silently split into characters.
    if isinstance(value, list):
        return tuple(value)
    return value


@attrs.frozen
class Step:
    """One step of a rollout: a package wait, a deployment, a gate, the legacy deployment."""

    name: str = attrs.field(validator=_check_name)
    kind: StepKind = attrs.field(converter=_to_kind)
    needs: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str, validator=_check_needs)
    environment: str | None = None
    environments: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    package: str | None = None
    protected: bool = False
    duration_s: int | None = None

    @kind.validator
    def _check_kind(self, _attribute: attrs.Attribute[StepKind], value: object) -> None:
        if not isinstance(value, StepKind):
            kinds = ", ".join(k.value for k in StepKind)
            raise _fail(self.name, f"unknown kind {value!r}", f"use one of: {kinds}")

    def __attrs_post_init__(self) -> None:
        kind = self.kind
        self._check_types()
        if kind is StepKind.DEPLOYMENT:
            if self.environment is None:
                raise _fail(self.name, "a deployment needs an environment",
                            'set environment = "staging" (for example)')
        elif self.environment is not None:
            raise _fail(self.name, f"environment is only for deployments, not {kind.value}",
                        "remove environment")
        if kind is StepKind.LEGACY_DEPLOYMENT:
            if not self.environments:
                raise _fail(self.name, "a legacy deployment needs its environments",
                            'set environments = ["staging", "canary", "production"]')
        elif self.environments:
            raise _fail(self.name, "environments is only for legacy_deployment",
                        "remove environments, or use environment for one deployment")
        if kind is StepKind.PACKAGE_WAIT:
            # Which packages exist is the backend's business; the spec only checks the name's shape.
            if self.package is None:
                raise _fail(self.name, "a package wait needs its package",
                            'set package = "image" (a package name your backend builds)')
            if not PACKAGE_RE.fullmatch(self.package):
                raise _fail(self.name, f"package {self.package!r} is not a valid package name",
                            "use 1-64 lower-case letters, digits, '-' and '_', starting with a letter "
                            "(like web-image)")
        elif self.package is not None:
            raise _fail(self.name, "package is only for package_wait", "remove package")
        if self.protected and kind is not StepKind.DEPLOYMENT:
            raise _fail(self.name, "only a deployment can be protected", "remove protected")
        if kind is StepKind.BAKE:
            if self.duration_s is None:
                object.__setattr__(self, "duration_s", DEFAULT_BAKE_SECONDS)
            elif not 0 <= self.duration_s <= MAX_BAKE_SECONDS:
                raise _fail(self.name, f"duration_s must be between 0 and {MAX_BAKE_SECONDS} seconds "
                            f"(7 days), got {self.duration_s}", "give the bake time in seconds")
        elif self.duration_s is not None:
            raise _fail(self.name, "duration_s is only for a bake", "remove duration_s")

    def _check_types(self) -> None:
        for field, expected, value in (
            ("environment", str, self.environment),
            ("package", str, self.package),
            ("protected", bool, self.protected),
            ("duration_s", int, self.duration_s),
        ):
            if value is None and field != "protected":
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise _fail(self.name, f"{field} must be {expected.__name__}, got {value!r}",
                            f"fix the type of {field}")
        if self.environment is not None and not ENVIRONMENT_RE.fullmatch(self.environment):
            raise _fail(self.name, f"environment {self.environment!r} is not a valid name",
                        "use lower-case letters, digits and '-' (like production-canary)")
        if not isinstance(self.environments, tuple) or not all(
            isinstance(e, str) and ENVIRONMENT_RE.fullmatch(e) for e in self.environments
        ):
            raise _fail(self.name, f"environments must be a list of environment names, got "
                        f"{self.environments!r}", 'write environments = ["staging", "production"]')
        if len(set(self.environments)) != len(self.environments):
            raise _fail(self.name, f"environments lists an environment twice: {list(self.environments)}",
                        "list each environment once")

    @property
    def targets(self) -> tuple[str, ...]:
        """The environments this step deploys to (empty for waits and gates)."""
        if self.environment is not None:
            return (self.environment,)
        return self.environments


def _check_text(instance: Spec, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise SpecError(f"spec {attribute.name} must be a string, got {value!r}; "
                        f"give the spec's {attribute.name} as text")


def _check_steps(instance: Spec, _attribute: attrs.Attribute[tuple[Step, ...]], value: object) -> None:
    if not isinstance(value, tuple):
        raise SpecError(f"spec {instance.name!r}: steps must be a list of Step values, got {value!r}")
    for index, item in enumerate(value):
        if not isinstance(item, Step):
            raise SpecError(f"spec {instance.name!r}: steps[{index}] is not a Step but "
                            f"{type(item).__name__} {item!r}; build it with Step(name=..., kind=...)")
    if not value:
        raise SpecError(f"spec {instance.name!r} has no steps; add at least one step")
    if len(value) > MAX_STEPS:
        raise SpecError(f"spec {instance.name!r} has {len(value)} steps; a spec may have at most {MAX_STEPS}")


@attrs.frozen
class Spec:
    """A validated pipeline shape.  Steps are kept in a dependency-respecting order."""

    name: str = attrs.field(validator=_check_text)
    steps: tuple[Step, ...] = attrs.field(converter=_tuple_of_str, validator=_check_steps)
    description: str = attrs.field(default="", validator=_check_text)

    def __attrs_post_init__(self) -> None:
        by_name: dict[str, Step] = {}
        for step in self.steps:
            if step.name in by_name:
                raise _fail(step.name, "the name is used twice", "give each step its own name")
            by_name[step.name] = step
        for step in self.steps:
            for need in step.needs:
                if need not in by_name:
                    others = [name for name in by_name if name != step.name]
                    fix = f"use one of: {', '.join(others)}" if others else "remove it (no other steps)"
                    raise _fail(step.name, f"needs unknown step {need!r}", fix)
        object.__setattr__(self, "steps", _topological(self.steps, by_name))
        deployed: dict[str, str] = {}
        for step in self.steps:
            if step.kind is StepKind.DEPLOYMENT:
                assert step.environment is not None
                if step.environment in deployed:
                    raise _fail(step.name, f"environment {step.environment!r} is already deployed "
                                f"by step {deployed[step.environment]!r}",
                                "deploy each environment from one step")
                deployed[step.environment] = step.name
        for step in self.steps:
            if step.protected and not any(
                by_name[a].kind is StepKind.PROMOTION for a in self.ancestors(step.name)
            ):
                raise _fail(step.name, "is protected but does not need a promotion gate",
                            "add a promotion step to its needs (directly or through another step)")

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise SpecError(f"spec {self.name!r} has no step {name!r}; steps: "
                        f"{', '.join(s.name for s in self.steps)}")

    def ancestors(self, name: str) -> frozenset[str]:
        """Every step that must succeed before ``name`` may start."""
        found: set[str] = set()
        todo = list(self.step(name).needs)
        while todo:
            need = todo.pop()
            if need not in found:
                found.add(need)
                todo.extend(self.step(need).needs)
        return frozenset(found)

    def dependents(self, name: str) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps if name in s.needs)

    def for_environment(self, environment: str) -> Step:
        for step in self.steps:
            if step.kind is StepKind.DEPLOYMENT and step.environment == environment:
                return step
        envs = ", ".join(s.environment for s in self.steps if s.environment)
        raise SpecError(f"no deployment step for environment {environment!r}; "
                        f"environments in spec {self.name!r}: {envs}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "<mapping>") -> Spec:
        return _from_mapping(data, source)


def _topological(steps: tuple[Step, ...], by_name: Mapping[str, Step]) -> tuple[Step, ...]:
    """Depth first, needs before the steps that need them, in the order given otherwise.

    With an explicit stack rather than recursion, so a long chain listed last step first
    cannot exhaust Python's stack.
    """
    ordered: list[Step] = []
    placed: set[str] = set()
    for root in steps:
        if root.name in placed:
            continue
        # The current path: each step with the index of the next need to look at.
        path: list[tuple[Step, int]] = [(root, 0)]
        on_path = {root.name}
        while path:
            step, index = path[-1]
            if index == len(step.needs):
                path.pop()
                on_path.discard(step.name)
                placed.add(step.name)
                ordered.append(step)
                continue
            path[-1] = (step, index + 1)
            need = step.needs[index]
            if need in placed:
                continue
            if need in on_path:
                names = [s.name for s, _ in path]
                cycle = " -> ".join([*names[names.index(need):], need])
                raise _fail(need, f"its needs form a cycle ({cycle})", "remove one of these needs")
            path.append((by_name[need], 0))
            on_path.add(need)
    return tuple(ordered)


_STEP_KEYS = {f.name for f in attrs.fields(Step)}


def _from_mapping(data: Mapping[str, Any], source: str) -> Spec:
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: a spec must be a table with 'name' and [[steps]]")
    unknown = set(data) - {"name", "description", "steps"}
    if unknown:
        raise SpecError(f"{source}: unknown key(s) {sorted(unknown)}; a spec has name, "
                        "description and [[steps]]")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise SpecError(f"{source}: name must be a string, got {name!r}; write name = \"...\" in quotes")
    raw_steps = data.get("steps")
    if raw_steps is not None and not isinstance(raw_steps, list):
        raise SpecError(f"{source}: steps must be an array of tables, got {raw_steps!r}; "
                        "write each step as a [[steps]] table")
    if not raw_steps:
        raise SpecError(f"{source}: spec {name!r} has no steps; add [[steps]] tables")
    steps = []
    for index, raw in enumerate(raw_steps):
        if not isinstance(raw, Mapping):
            raise SpecError(f"{source}: steps[{index}] must be a table, got {raw!r}; "
                            "write each step as a [[steps]] table")
        label = raw.get("name", f"steps[{index}]")
        extra = set(raw) - _STEP_KEYS
        if extra:
            raise SpecError(f"{source}: step {label!r}: unknown key(s) {sorted(extra)}; "
                            f"known keys: {', '.join(sorted(_STEP_KEYS))}")
        if "name" not in raw or "kind" not in raw:
            raise SpecError(f"{source}: step {label!r} needs both name and kind; add the missing one "
                            f"(kinds: {', '.join(k.value for k in StepKind)})")
        try:
            steps.append(Step(**raw))
        except SpecError as error:
            raise SpecError(f"{source}: {error}") from None
        except TypeError as error:  # attrs' own type complaints
            raise SpecError(f"{source}: step {label!r}: {error}") from None
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{source}: description must be a string, got {description!r}; "
                        "write description = \"...\" in quotes")
    try:
        return Spec(name=name, steps=tuple(steps), description=description)
    except SpecError as error:
        raise SpecError(f"{source}: {error}") from None


def load_spec(path: str | Path) -> Spec:
    """Load a spec from a TOML file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"cannot read spec file {file}: {error.strerror}; check the path") from None
    except UnicodeDecodeError as error:
        raise SpecError(f"{file}: not UTF-8 text (byte {error.start}); save the spec as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{file}: not valid TOML ({error}); fix the syntax") from None
    return _from_mapping(data, str(file))


BUILTIN_SPECS = ("seed", "reordered")


def builtin_spec(name: str = "seed") -> Spec:
    """One of the specs shipped with deploystate: ``seed`` (the default) or ``reordered``."""
    if name not in BUILTIN_SPECS:
        raise SpecError(f"no built-in spec {name!r}; choose one of: {', '.join(BUILTIN_SPECS)}")
    text = resources.files("deploystate.specs").joinpath(f"{name}.toml").read_text("utf-8")
    return _from_mapping(tomllib.loads(text), f"{name}.toml")


def default_spec() -> Spec:
    """The seed's diagram: tag, builds, staging beside legacy, canary, bake+promotion, production."""
    return builtin_spec("seed")


def resolve_spec(ref: str | Path | None) -> Spec:
    """A spec from a built-in name, a TOML path, or the default when ``ref`` is None."""
    if ref is None:
        return default_spec()
    if str(ref) in BUILTIN_SPECS:
        return builtin_spec(str(ref))
    return load_spec(ref)


def iter_edges(spec: Spec) -> Iterable[tuple[str, str]]:
    for step in spec.steps:
        for need in step.needs:
            yield need, step.name


def spec_to_mapping(spec: Spec) -> dict[str, Any]:
    """The spec as plain data (the TOML layout), so a journal can keep the shape a rollout ran with."""
    steps = []
    for step in spec.steps:
        raw: dict[str, Any] = {"name": step.name, "kind": step.kind.value}
        if step.needs:
            raw["needs"] = list(step.needs)
        if step.environment is not None:
            raw["environment"] = step.environment
        if step.environments:
            raw["environments"] = list(step.environments)
        if step.package is not None:
            raw["package"] = step.package
        if step.protected:
            raw["protected"] = True
        if step.duration_s is not None:
            raw["duration_s"] = step.duration_s
        steps.append(raw)
    return {"name": spec.name, "description": spec.description, "steps": steps}


def rollback_spec(environment: str) -> Spec:
    """The spec of a rollback: one deployment of an older version to ``environment``."""
    step = Step(name="rollback", kind=StepKind.DEPLOYMENT, environment=environment)
    return Spec(name=f"rollback-{environment}", steps=(step,),
                description=f"a deliberate redeploy of an older version to {environment}")

"""The seed's rollout strategy: which deployment path is real and which runs in check mode.

During the migration both paths run for every package: the legacy all-environments deployment
and the individual per-environment deployments.  ``INDIVIDUAL_DEPLOYMENTS`` says which one is
real; the real one goes to ``TRIGGER_REF`` (``master``), the other to the shadow ref
(``next-gen``) in check mode.  The choice is written into each rollout's journal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from deploystate.errors import DeploystateError
from deploystate.spec import GATE_KINDS, Spec, Step, StepKind

_REF_VALIDATOR = attrs.validators.matches_re(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


@attrs.frozen
class Strategy:
    individual_deployments: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    trigger_ref: str = attrs.field(default="master", validator=_REF_VALIDATOR)
    shadow_ref: str = attrs.field(default="next-gen", validator=_REF_VALIDATOR)
    # Simulations and rehearsals: every deployment, real path included, runs in check mode.
    check_mode_everywhere: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    # A failed dry run (a step of the path that is not real) fails the whole rollout, as a real
    # failure does; by default it is a warning and only blocks the dry runs after it.
    strict_shadow: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def is_real(self, step: Step) -> bool:
        legacy = step.kind is StepKind.LEGACY_DEPLOYMENT
        return legacy != self.individual_deployments

    def ref_for(self, step: Step) -> str:
        return self.trigger_ref if self.is_real(step) else self.shadow_ref

    def check_mode_for(self, step: Step) -> bool:
        return self.check_mode_everywhere or not self.is_real(step)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def real_steps(self, spec: Spec) -> tuple[str, ...]:
        return tuple(s.name for s in spec.steps if s.targets and self.is_real(s))

    def dry_run_steps(self, spec: Spec) -> tuple[str, ...]:
        return tuple(s.name for s in spec.steps if s.targets and not self.is_real(s))

    def deploying(self, spec: Spec) -> tuple[str, ...]:
        """The steps that really deploy (none when everything runs in check mode)."""
        return () if self.check_mode_everywhere else self.real_steps(spec)

    def dry_runs(self, spec: Spec) -> tuple[str, ...]:
        """The deployment steps that run in check mode."""
        deploying = self.deploying(spec)
        return tuple(s.name for s in spec.steps if s.targets and s.name not in deploying)

    def optional_steps(self, spec: Spec) -> frozenset[str]:
        """Steps whose failure does not fail the rollout: the dry runs, and what only leads to them.

        Every step the real deployments need (directly or not) must succeed; the others may
        fail, or never start because something before them failed.  Empty with ``strict_shadow``,
        or when the spec has no real path under this plan.
        """
        real = self.real_steps(spec)
        if self.strict_shadow or not real:
            return frozenset()
        needs = {s.name: s.needs for s in spec.steps}
        required: set[str] = set()
        todo = list(real)
        while todo:
            name = todo.pop()
            if name not in required:
                required.add(name)
                todo.extend(needs[name])
        return frozenset(needs) - required

    def check(self, spec: Spec) -> None:
        """Refuse a plan under which nothing of ``spec`` would really deploy, unless asked for."""
        if self.check_mode_everywhere or self.real_steps(spec) or not self.dry_run_steps(spec):
            return
        if self.individual_deployments:
            raise DeploystateError(
                f"spec {spec.name!r} has no per-environment deployment step, so with individual_deployments "
                "= true nothing would really deploy: its legacy deployment would be a dry run. Set "
                "individual_deployments = false (INDIVIDUAL_DEPLOYMENTS=false), or check_mode_everywhere = "
                "true to rehearse on purpose")
        raise DeploystateError(
            f"spec {spec.name!r} has no legacy_deployment step, so with individual_deployments = false "
            "nothing would really deploy: every deployment would be a dry run. Set individual_deployments "
            "= true (INDIVIDUAL_DEPLOYMENTS=true) to make its deployments real, or check_mode_everywhere = "
            "true to rehearse on purpose")

    def describe(self, spec: Spec | None = None, *, deploys: bool = True) -> str:
        """The plan in a line: which steps really deploy, which are dry runs, which gates protect
        production.  ``deploys`` False: the backend only simulates (the real path, simulated)."""
        if spec is None:
            path = "individual deployments" if self.individual_deployments else "legacy deployment"
            shadow = "legacy deployment" if self.individual_deployments else "individual deployments"
            text = f"{path} real on {self.trigger_ref}; {shadow} in check mode on {self.shadow_ref}"
            return text + (" (everything in check mode)" if self.check_mode_everywhere else "")
        steps = {s.name: s for s in spec.steps}
        real = self.real_steps(spec)

        def named(names: tuple[str, ...]) -> str:
            return ", ".join(f"{n} ({','.join(steps[n].targets)})" for n in names) or "none"

        if self.check_mode_everywhere:
            head = f"everything in check mode, nothing is deployed: {named(real + self.dry_run_steps(spec))}"
        else:
            what = "real path, simulated" if not deploys else "real"
            head = (f"{what}: {named(real)} on {self.trigger_ref}; dry runs (check mode on "
                    f"{self.shadow_ref}): {named(self.dry_run_steps(spec))}")
        return f"{head}. {self._gates(spec, real)}"

    def _gates(self, spec: Spec, real: tuple[str, ...]) -> str:
        steps = {s.name: s for s in spec.steps}
        protected = [s for s in spec.steps if s.protected]
        if not protected:
            return "No deployment is protected by a gate"
        parts = []
        for step in protected:
            gates = _and([g for g in _ancestors(spec, step.name) if steps[g].kind in GATE_KINDS]) or "no gate"
            if step.name in real or self.check_mode_everywhere or not real:
                parts.append(f"deploystate's {gates} gate {step.name} ({','.join(step.targets)})")
                continue
            by = [n for n in real if set(steps[n].targets) & set(step.targets)]
            if by:
                parts.append(f"{','.join(step.targets)} is really deployed by {_and(by)}, whose bake and "
                             "promotion live in the deployer's own pipeline; deploystate's "
                             f"{gates} gate only the dry run {step.name}")
            else:
                parts.append(f"deploystate's {gates} gate only the dry run {step.name}")
        return "; ".join(parts)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Strategy:
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as error:
            raise DeploystateError(f"bad rollout strategy settings: {error}") from None


def _ancestors(spec: Spec, name: str) -> list[str]:
    """Every step ``name`` needs, directly or not, in spec order."""
    needs = {s.name: s.needs for s in spec.steps}
    found: set[str] = set()
    todo = list(needs[name])
    while todo:
        step = todo.pop()
        if step not in found:
            found.add(step)
            todo.extend(needs[step])
    return [s.name for s in spec.steps if s.name in found]


def _and(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def mode_of(check_mode: bool, *, deploys: bool = True) -> str:
    """How a deployment is said to run: in check mode, for real, or (a simulation) the real path."""
    if check_mode:
        return "check mode"
    return "REAL" if deploys else "the real path, simulated"

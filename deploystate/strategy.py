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
from deploystate.spec import Step, StepKind

_REF_VALIDATOR = attrs.validators.matches_re(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


@attrs.frozen
class Strategy:
    individual_deployments: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    trigger_ref: str = attrs.field(default="master", validator=_REF_VALIDATOR)
    shadow_ref: str = attrs.field(default="next-gen", validator=_REF_VALIDATOR)
    # Simulations and rehearsals: every deployment, real path included, runs in check mode.
    check_mode_everywhere: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def is_real(self, step: Step) -> bool:
        legacy = step.kind is StepKind.LEGACY_DEPLOYMENT
        return legacy != self.individual_deployments

    def ref_for(self, step: Step) -> str:
        return self.trigger_ref if self.is_real(step) else self.shadow_ref

    def check_mode_for(self, step: Step) -> bool:
        return self.check_mode_everywhere or not self.is_real(step)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def describe(self) -> str:
        real = "individual deployments" if self.individual_deployments else "legacy deployment"
        shadow = "legacy deployment" if self.individual_deployments else "individual deployments"
        text = f"{real} real on {self.trigger_ref}; {shadow} in check mode on {self.shadow_ref}"
        return text + (" (everything in check mode)" if self.check_mode_everywhere else "")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Strategy:
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as error:
            raise DeploystateError(f"bad rollout strategy settings: {error}") from None

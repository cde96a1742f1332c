"""Organizations' second-factor policy, and the freshness sensitive actions need (pure).

An organization's policy keys (``hangar orgs policy set``):

``require_mfa``
    ``"webauthn"``: every member needs a security key or passkey;
    ``"any"``: a security key, or a TOTP app where ``allow_totp``;
    ``"off"`` (the default): no second factor is required, and no step-up.
``accept_idp_mfa``
    A sign-in whose identity provider reported a second factor (its ``amr``
    or ``acr`` claims) counts as one, for that session.
``allow_totp``
    Whether TOTP satisfies the policy at all (default true).
``step_up_minutes``
    How fresh the second factor behind a sensitive action must be (default
    15, between 1 and 720).
``automation_tokens``
    Organization and app tokens (made by a person for automation: they
    carry no second factor) may take sensitive actions without a step-up.
    Default false; each such action is audited as ``auth.step-up-waived``.

``require_fresh_factor`` raises ``StepUpRequired`` unless the principal's
last second factor is fresher than the minutes given: callers rely on it
raising, never on a returned flag.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from hangar.auth.tokens import Principal
from hangar.errors import PermissionDenied, ValidationError

__all__ = [
    "POLICY_KEYS",
    "MfaPolicy",
    "MfaRequired",
    "StepUpRequired",
    "require_fresh_factor",
]

REQUIRE_MFA = ("webauthn", "any", "off")
STEP_UP_MINUTES_MAX = 720
POLICY_KEYS = (
    "require_mfa",
    "accept_idp_mfa",
    "allow_totp",
    "step_up_minutes",
    "automation_tokens",
)


class StepUpRequired(PermissionDenied):
    """A sensitive action without a second factor fresh enough."""

    code = "step-up-required"


class MfaRequired(PermissionDenied):
    """The organization requires a second factor this member has not enrolled."""

    code = "mfa-required"


@dataclass(frozen=True)
class MfaPolicy:
    require_mfa: str = "off"
    accept_idp_mfa: bool = False
    allow_totp: bool = True
    step_up_minutes: int = 15
    automation_tokens: bool = False

    @property
    def enforced(self) -> bool:
        return self.require_mfa != "off"

    def satisfied_by(self, kinds: set[str]) -> bool:
        """Whether enrolled factors of these kinds (``webauthn``, ``totp``) satisfy the policy."""
        if self.require_mfa == "off":
            return True
        if "webauthn" in kinds:
            return True
        return self.require_mfa == "any" and self.allow_totp and "totp" in kinds

    def methods(self) -> list[str]:
        """The assertion methods that count under this policy (recovery codes always do)."""
        if self.require_mfa == "webauthn" or not self.allow_totp:
            return ["webauthn", "recovery"]
        return ["webauthn", "totp", "recovery"]

    def with_changes(self, changes: dict[str, Any]) -> MfaPolicy:
        """A copy with ``changes`` applied; ValidationError naming any key or value refused."""
        unknown = sorted(set(changes) - set(POLICY_KEYS))
        if unknown:
            raise ValidationError(
                f"unknown policy key {unknown[0]!r}",
                hint=f"the second-factor keys are {', '.join(POLICY_KEYS)}",
            )
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "require_mfa":
                if value not in REQUIRE_MFA:
                    raise ValidationError(
                        f"require_mfa must be one of {', '.join(REQUIRE_MFA)}; got {value!r}"
                    )
            elif key == "step_up_minutes":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int)
                    or not 1 <= value <= STEP_UP_MINUTES_MAX
                ):
                    raise ValidationError(
                        f"step_up_minutes must be a whole number from 1 to "
                        f"{STEP_UP_MINUTES_MAX}; got {value!r}"
                    )
            elif not isinstance(value, bool):
                raise ValidationError(f"{key} must be true or false; got {value!r}")
            values[key] = value
        return replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "require_mfa": self.require_mfa,
            "accept_idp_mfa": self.accept_idp_mfa,
            "allow_totp": self.allow_totp,
            "step_up_minutes": self.step_up_minutes,
            "automation_tokens": self.automation_tokens,
        }


def require_fresh_factor(
    principal: Principal, minutes: int, *, now: dt.datetime | None = None
) -> None:
    """Return if the principal's second factor was verified less than ``minutes`` ago.

    ``principal.mfa_verified_at`` is the newest second-factor assertion
    behind the caller's credential (a session's sign-in or a later `hangar
    auth step-up`); None when there was none, as for an API token never
    stepped up. Raises ``StepUpRequired`` otherwise.
    """
    now = now or dt.datetime.now(dt.UTC)
    verified_at = principal.mfa_verified_at
    hint = "run `hangar auth step-up` (a security key, a TOTP code or a recovery code)"
    if verified_at is None:
        raise StepUpRequired(
            "this action needs a fresh second factor, and this credential has none", hint=hint
        )
    age = now - verified_at
    if age > dt.timedelta(minutes=minutes) or age < -dt.timedelta(minutes=1):
        raise StepUpRequired(
            f"this action needs a second factor from the last {minutes} minutes; "
            f"yours is {max(int(age.total_seconds() // 60), 0)} minutes old",
            hint=hint,
        )

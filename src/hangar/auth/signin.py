"""The sign-in pipeline: from a person verified by their IdP to an issued session.

After the identity provider's callback has verified a person (ID token,
state, nonce, PKCE), a *pending sign-in* (a row of ``pending_signins``,
bound to the browser by a ``__Host-`` cookie, short-lived) holds what is
known of them. Before a session is issued:

1. every **check** runs (``CHECKS``): each may refuse the sign-in by raising
   ``SigninRefused`` (a disabled user, an e-mail domain an organization does
   not allow, ...). Checks see a ``SigninContext`` and change nothing.
2. every **step** whose ``applies`` says so is put on the pending sign-in's
   list (``STEPS``, in order). A step is a web page the browser is sent to
   (``page``); when the person has done what it asks, the page calls
   ``complete_step`` with what it proved (``amr`` values, and whether it was
   a second factor), which takes it off the list.
3. when the list is empty, the session is issued to whoever started the
   sign-in: the browser (a cookie), the CLI's loopback redirect (a one-time
   code it exchanges with its PKCE verifier), or a device code's approval.

Hangar itself registers no interactive step; a second factor registers one
with ``register_step``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session

from hangar.auth.policy import IdentityPolicy
from hangar.errors import AuthError, HangarError
from hangar.store.tables import PendingSignin

__all__ = [
    "CHECKS",
    "PENDING_LIFETIME",
    "STEPS",
    "SigninContext",
    "SigninRefused",
    "SigninStep",
    "StepResult",
    "complete_step",
    "pending_steps",
    "register_check",
    "register_step",
    "run_checks",
]

# From the start of a sign-in to its session: long enough to type a password
# and touch a security key, short enough that a stolen cookie is soon useless.
PENDING_LIFETIME = dt.timedelta(minutes=10)


class SigninRefused(AuthError):
    """A check refused the sign-in; the message says why, the audit trail records it."""


@dataclass(frozen=True)
class SigninContext:
    """What the checks and steps know of a person signing in."""

    user_id: str
    email: str
    idp: str
    # The ID token's claims that matter: "amr", "acr", the groups claim's values.
    claims: dict[str, object]
    groups: list[str]
    # The person's organizations (id -> role value) after just-in-time membership.
    memberships: dict[str, str]
    policies: dict[str, IdentityPolicy]
    purpose: str  # "web", "cli" or "device"
    disabled: bool = False
    is_operator: bool = False


Check = Callable[[SigninContext], None]


class SigninStep(Protocol):
    """An interactive step between the IdP's callback and the session."""

    name: str
    # The web page (path under the API) the browser is sent to for this step.
    page: str

    def applies(self, ctx: SigninContext) -> bool:
        """Whether this person, signing in so, must do this step."""
        ...


@dataclass(frozen=True)
class StepResult:
    """What a step proved: RFC 8176 ``amr`` values, and whether it was a second factor."""

    amr: list[str] = field(default_factory=list)
    second_factor: bool = False


def _refuse_disabled(ctx: SigninContext) -> None:
    if ctx.disabled:
        raise SigninRefused(
            f"{ctx.email} is disabled on this installation",
            hint="an installation operator can enable them: `hangar users enable`",
        )


CHECKS: list[Check] = [_refuse_disabled]
STEPS: list[SigninStep] = []


def register_check(check: Check) -> None:
    if check not in CHECKS:
        CHECKS.append(check)


def register_step(step: SigninStep) -> None:
    if all(s.name != step.name for s in STEPS):
        STEPS.append(step)


def run_checks(ctx: SigninContext) -> list[str]:
    """Run every check (raising the first refusal); the names of the steps that apply."""
    for check in CHECKS:
        check(ctx)
    return [s.name for s in STEPS if s.applies(ctx)]


def step_named(name: str) -> SigninStep:
    for step in STEPS:
        if step.name == name:
            return step
    raise HangarError(f"no sign-in step is called {name!r}")


def pending_steps(row: PendingSignin) -> list[str]:
    """The steps the pending sign-in still needs, in order."""
    data = json.loads(row.steps or "[]")
    return [str(s) for s in data] if isinstance(data, list) else []


def proven(row: PendingSignin) -> StepResult:
    """What the steps done so far proved (kept in the pending sign-in's claims)."""
    claims = json.loads(row.claims or "{}")
    done = claims.get("_proven", {}) if isinstance(claims, dict) else {}
    return StepResult(
        amr=[str(a) for a in done.get("amr", [])], second_factor=bool(done.get("second_factor"))
    )


def complete_step(
    session: Session, row: PendingSignin, name: str, result: StepResult, now: dt.datetime
) -> None:
    """Take step ``name`` off ``row``'s list, recording what it proved.

    AuthError if the pending sign-in has expired or ``name`` is not the step
    it is waiting for (steps run in order; none can be skipped).
    """
    if row.done_at is not None or now >= row.expires_at:
        raise AuthError("this sign-in has expired", hint="sign in again")
    steps = pending_steps(row)
    if not steps or steps[0] != name:
        raise AuthError("this sign-in is not waiting for that step", hint="sign in again")
    claims = json.loads(row.claims or "{}")
    done = claims.setdefault("_proven", {"amr": [], "second_factor": False})
    done["amr"] = sorted(set(done.get("amr", [])) | set(result.amr))
    done["second_factor"] = bool(done.get("second_factor")) or result.second_factor
    if result.second_factor:
        done["second_factor_at"] = now.isoformat()
    row.claims = json.dumps(claims)
    row.steps = json.dumps(steps[1:])
    session.flush()

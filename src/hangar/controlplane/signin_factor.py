"""The second-factor step of a sign-in: between the identity provider and the session.

Registered with the sign-in pipeline (``auth/signin.py``) as the step
``second-factor``; every sign-in passes its page, which decides:

* the person has factors of their own: they must use one. The methods
  offered are those every organization of theirs that requires a second
  factor accepts (a security key always; TOTP unless one of them requires
  WebAuthn or forbids TOTP; a recovery code always). The session then
  carries ``mfa_verified_at`` (a step-up as fresh as the sign-in) and the
  RFC 8176 ``amr`` of the method (``hwk`` a security key, ``otp`` TOTP,
  ``kba`` a recovery code, each with ``mfa``).
* they have none, and the identity provider reported a second factor of
  its own (``amr`` contains ``mfa``, ``hwk``, ``otp``, ``swk``, ``sc`` or
  ``fpt``, or ``acr`` names phishing-resistant MFA) and one of their
  organizations sets ``accept_idp_mfa``: that counts, and the step passes.
* they have none otherwise (or none that their organizations accept): the
  step passes without a second factor. An organization that requires one
  refuses the session at its door with a hint to enrol
  (``mfapolicy.enforce_member``), and the session can enrol one.

Each outcome is audited (``auth.second-factor``), as are failures (as
``factor.verify``, with the same backoff as a step-up).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from hangar.audit.log import AuditContext
from hangar.auth.signin import SigninContext, StepResult, pending_steps, register_step
from hangar.auth.stepup import MfaPolicy
from hangar.auth.tokens import Principal, Scope
from hangar.controlplane import factors, signins, stepups
from hangar.controlplane.state import ControlPlane
from hangar.errors import AuthError
from hangar.store.tables import Membership, OrgMfaPolicy, PendingSignin, User

__all__ = ["STEP", "Need", "SecondFactorStep", "begin", "finish", "need", "verify"]

PAGE = "/web/signin/second-factor"
IDP_MFA_AMR = frozenset({"mfa", "hwk", "otp", "swk", "sc", "fpt"})
IDP_MFA_ACR = ("phr", "phrh", "http://schemas.openid.net/pape/policies/2007/06/multi-factor")
AMR_OF = {"webauthn": ["hwk", "mfa"], "totp": ["otp", "mfa"], "recovery": ["kba", "mfa"]}


class SecondFactorStep:
    name = "second-factor"
    page = PAGE

    def applies(self, ctx: SigninContext) -> bool:
        # The page decides with what the store knows (factors, policies); one
        # that needs nothing passes the browser straight on.
        return True


STEP = SecondFactorStep()
register_step(STEP)


@dataclass(frozen=True)
class Need:
    """What the page must ask of this person: ``methods`` empty means nothing."""

    row_id: str
    user_id: str
    email: str
    methods: list[str]
    idp_mfa: bool


def _row(cp: ControlPlane, cookie: str | None) -> PendingSignin:
    """The browser's pending sign-in, waiting for this step; AuthError if there is none."""
    row = signins.pending_for(cp, cookie)
    if row is None:
        raise AuthError("this sign-in has expired or was never started", hint="sign in again")
    steps = pending_steps(row)
    if not steps or steps[0] != STEP.name:
        raise AuthError("this sign-in is not waiting for a second factor", hint="sign in again")
    return row


def need(cp: ControlPlane, cookie: str | None) -> Need:
    row = _row(cp, cookie)
    with cp.db.read() as session:
        assert row.user_id is not None
        user = session.get(User, row.user_id)
        assert user is not None
        kinds = factors.factor_kinds(session, user.id)
        policies = [
            MfaPolicy(
                require_mfa=p.require_mfa,
                accept_idp_mfa=p.accept_idp_mfa,
                allow_totp=p.allow_totp,
                step_up_minutes=p.step_up_minutes,
                automation_tokens=p.automation_tokens,
            )
            for p in session.execute(
                select(OrgMfaPolicy)
                .join(Membership, Membership.org_id == OrgMfaPolicy.org_id)
                .where(Membership.user_id == user.id)
            ).scalars()
        ]
        claims = json.loads(row.claims or "{}")
    enforcing = [p for p in policies if p.enforced]
    methods: list[str] = []
    if kinds:
        allowed = {"webauthn", "totp", "recovery"}
        for policy in enforcing:
            allowed &= set(policy.methods())
        methods = [m for m in ("webauthn", "totp", "recovery") if m in allowed]
        methods = [m for m in methods if m == "recovery" or m in kinds]
        if methods == ["recovery"]:
            # No factor of theirs counts here (only TOTP, where a key is required):
            # the sign-in goes on without one, so they can enrol one that does.
            methods = []
    amr = {str(a) for a in claims.get("amr") or []}
    acr = str(claims.get("acr") or "")
    idp_mfa = bool(amr & IDP_MFA_AMR or acr in IDP_MFA_ACR) and any(
        p.accept_idp_mfa for p in policies
    )
    return Need(row_id=row.id, user_id=user.id, email=user.email, methods=methods, idp_mfa=idp_mfa)


def _principal(found: Need) -> Principal:
    # The pending sign-in stands in for the token a challenge is bound to.
    return Principal(
        user_id=found.user_id,
        email=found.email,
        is_operator=False,
        token_id=found.row_id[:32],
        scope=Scope(),
    )


def begin(cp: ControlPlane, cookie: str | None) -> tuple[str, dict[str, Any]]:
    found = need(cp, cookie)
    if "webauthn" not in found.methods:
        raise AuthError("a security key is not a way for you to sign in here")
    return stepups.begin_assertion_for(cp, user_id=found.user_id, token_id=found.row_id[:32])


def verify(
    cp: ControlPlane,
    ctx: AuditContext,
    cookie: str | None,
    *,
    method: str,
    code: str | None = None,
    challenge_id: str | None = None,
    credential: object = None,
) -> signins.Outcome:
    """Check the factor, complete the step, and go on (to the session, or the next step)."""
    found = need(cp, cookie)
    ctx = AuditContext(
        actor=found.email,
        token_id=None,
        request_id=ctx.request_id,
        client_addr=ctx.client_addr,
    )
    used = stepups.verify_second_factor(
        cp,
        ctx,
        _principal(found),
        method=method,
        code=code,
        challenge_id=challenge_id,
        credential=credential,
        action="auth.second-factor",
        allowed=tuple(found.methods),
    )
    return _complete(cp, ctx, cookie, StepResult(amr=AMR_OF[used], second_factor=True), how=used)


def finish(cp: ControlPlane, ctx: AuditContext, cookie: str | None) -> signins.Outcome | None:
    """Pass the step when it asks nothing of this person (None when it must ask)."""
    found = need(cp, cookie)
    if found.methods:
        return None
    ctx = AuditContext(
        actor=found.email, token_id=None, request_id=ctx.request_id, client_addr=ctx.client_addr
    )
    if found.idp_mfa:
        return _complete(cp, ctx, cookie, StepResult(second_factor=True), how="idp")
    return _complete(cp, ctx, cookie, StepResult(), how="none enrolled")


def _complete(
    cp: ControlPlane, ctx: AuditContext, cookie: str | None, result: StepResult, *, how: str
) -> signins.Outcome:
    with cp.db.write() as session:
        cp.audit.record(
            session,
            ctx,
            org_id=None,
            action="auth.second-factor",
            target=ctx.actor,
            detail={"method": how, "amr": result.amr, "second_factor": result.second_factor},
        )
    return signins.step_done(
        cp,
        cookie,
        STEP.name,
        result,
        client_addr=ctx.client_addr,
        request_id=ctx.request_id,
    )

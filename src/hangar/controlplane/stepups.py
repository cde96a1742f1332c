"""Verifying a person's second factor: a step-up, or the second factor of a sign-in.

Each verification is checked against the person's backoff first
(``factors.py``), and each failure counted and audited as ``factor.verify``.
A WebAuthn challenge is spent before its answer is checked; a TOTP step is
taken with a conditional update, so two requests cannot both use one code; a
recovery code is spent the same way. A security key whose signature counter
went back is disabled and audited as ``factor.cloned``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, update

from hangar.audit.log import AuditContext
from hangar.auth.factors import (
    ClonedAuthenticator,
    FactorRejected,
    assertion_credential_id,
    assertion_options,
    normalize_recovery_code,
    verify_assertion,
    verify_totp,
)
from hangar.auth.tokens import Principal
from hangar.controlplane.changes import change
from hangar.controlplane.factors import (
    METHODS,
    check_backoff,
    new_challenge,
    record_failure,
    relying_party,
    require_personal,
    reset_failures,
    spend_challenge,
    totp_secret,
)
from hangar.controlplane.state import ControlPlane
from hangar.crypto.digests import hash_secret
from hangar.errors import NotFound, PermissionDenied, ValidationError, audited
from hangar.store.tables import RecoveryCode, StepUp, UserFactor

__all__ = ["begin_assertion", "begin_assertion_for", "step_up", "verify_second_factor"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def begin_assertion(cp: ControlPlane, principal: Principal) -> tuple[str, dict[str, Any]]:
    """An assertion challenge for the caller's own security keys."""
    with cp.db.read() as session:
        require_personal(session, principal)
    return begin_assertion_for(cp, user_id=principal.user_id, token_id=principal.token_id)


def begin_assertion_for(
    cp: ControlPlane, *, user_id: str, token_id: str
) -> tuple[str, dict[str, Any]]:
    """An assertion challenge for ``user_id``'s keys, answerable only with ``token_id``."""
    with cp.db.write() as session:
        allow = [
            c
            for c in session.execute(
                select(UserFactor.credential_id).where(
                    UserFactor.user_id == user_id,
                    UserFactor.kind == "webauthn",
                    UserFactor.disabled_at.is_(None),
                )
            ).scalars()
            if c
        ]
        if not allow:
            raise NotFound(
                "you have no security key enrolled",
                hint="enrol one: `hangar auth factors add-webauthn`",
            )
        challenge_id, challenge = new_challenge(
            session, user_id=user_id, token_id=token_id, purpose="assert"
        )
    return challenge_id, assertion_options(relying_party(cp), challenge=challenge, allow=allow)


def step_up(
    cp: ControlPlane,
    ctx: AuditContext,
    principal: Principal,
    *,
    method: str,
    code: str | None = None,
    challenge_id: str | None = None,
    credential: object = None,
) -> dt.datetime:
    """Verify a second factor and record it as fresh for this token; returns when."""
    with cp.db.read() as session:
        require_personal(session, principal)
    used = verify_second_factor(
        cp,
        ctx,
        principal,
        method=method,
        code=code,
        challenge_id=challenge_id,
        credential=credential,
        action="auth.step-up",
    )
    now = _now()
    with change(
        cp, ctx, org_id=None, action="auth.step-up", target=principal.email, wake=False
    ) as (
        session,
        event,
    ):
        row = session.get(StepUp, principal.token_id)
        if row is None:
            session.add(
                StepUp(
                    token_id=principal.token_id,
                    user_id=principal.user_id,
                    verified_at=now,
                    method=used,
                )
            )
        else:
            row.verified_at, row.method = now, used
        event.detail = {"method": used, "token": principal.token_id}
    return now


def verify_second_factor(
    cp: ControlPlane,
    ctx: AuditContext,
    principal: Principal,
    *,
    method: str,
    code: str | None,
    challenge_id: str | None,
    credential: object,
    action: str,
    allowed: tuple[str, ...] = METHODS,
) -> str:
    """Verify one of the person's factors (``method``), with backoff; returns the method.

    Failures are audited as ``factor.verify`` and counted; the caller records
    the success in its own change.
    """
    if method not in METHODS:
        raise ValidationError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method not in allowed:
        raise PermissionDenied(
            f"{method} does not satisfy this organization's policy",
            hint=f"use one of: {', '.join(allowed)}",
        )
    check_backoff(cp, ctx, principal)
    try:
        if method == "totp":
            _verify_totp(cp, principal, code or "")
        elif method == "recovery":
            _use_recovery_code(cp, ctx, principal, code or "")
        else:
            if not challenge_id:
                raise ValidationError("a security key answer needs its challenge_id")
            _verify_webauthn(cp, ctx, principal, challenge_id, credential)
    except FactorRejected as exc:
        record_failure(cp, ctx, principal, action, exc, method=method)
        raise audited(exc) from None
    with cp.db.write() as session:
        reset_failures(session, principal.user_id)
    return method


def _verify_totp(cp: ControlPlane, principal: Principal, code: str) -> None:
    with cp.db.read() as session:
        rows = list(
            session.execute(
                select(UserFactor).where(
                    UserFactor.user_id == principal.user_id,
                    UserFactor.kind == "totp",
                    UserFactor.confirmed_at.is_not(None),
                    UserFactor.disabled_at.is_(None),
                )
            ).scalars()
        )
    if not rows:
        raise FactorRejected("you have no TOTP factor", hint="`hangar auth factors add-totp`")
    last_error: FactorRejected | None = None
    for row in rows:
        try:
            step = verify_totp(totp_secret(cp, row), code, last_step=row.last_step)
        except FactorRejected as exc:
            last_error = exc
            continue
        with cp.db.write() as session:
            # Accept the step only if no other request accepted it (or a later one) first.
            taken = session.execute(
                update(UserFactor)
                .where(
                    UserFactor.id == row.id,
                    (UserFactor.last_step.is_(None)) | (UserFactor.last_step < step),
                )
                .values(last_step=step, last_used_at=_now())
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return
        raise FactorRejected("this TOTP code was already used")
    assert last_error is not None
    raise last_error


def _use_recovery_code(
    cp: ControlPlane, ctx: AuditContext, principal: Principal, code: str
) -> None:
    digest = hash_secret(normalize_recovery_code(code))
    with cp.db.write() as session:
        spent = session.execute(
            update(RecoveryCode)
            .where(
                RecoveryCode.user_id == principal.user_id,
                RecoveryCode.digest == digest,
                RecoveryCode.used_at.is_(None),
            )
            .values(used_at=_now())
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            raise FactorRejected("the recovery code is not valid (or was already used)")
        left = session.execute(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.user_id == principal.user_id, RecoveryCode.used_at.is_(None))
        ).scalar_one()
        cp.audit.record(
            session,
            ctx,
            org_id=None,
            action="factor.recovery-code-used",
            target=principal.email,
            detail={"left": int(left)},
        )


def _verify_webauthn(
    cp: ControlPlane,
    ctx: AuditContext,
    principal: Principal,
    challenge_id: str,
    credential: object,
) -> None:
    challenge = spend_challenge(
        cp,
        challenge_id=challenge_id,
        user_id=principal.user_id,
        token_id=principal.token_id,
        purpose="assert",
    )
    cred_id = assertion_credential_id(credential)
    with cp.db.read() as session:
        row = session.execute(
            select(UserFactor).where(
                UserFactor.credential_id == cred_id, UserFactor.user_id == principal.user_id
            )
        ).scalar_one_or_none()
    if row is None or row.public_key is None:
        raise FactorRejected("that security key is not enrolled for you")
    if row.disabled_at is not None:
        raise FactorRejected(
            f"that security key was disabled: {row.disabled_reason}",
            hint="enrol a new one",
        )
    try:
        count = verify_assertion(
            relying_party(cp),
            credential,
            challenge=challenge,
            public_key=row.public_key,
            stored_count=row.sign_count,
        )
    except ClonedAuthenticator as exc:
        with cp.db.write() as session:
            fresh = session.get(UserFactor, row.id)
            assert fresh is not None
            fresh.disabled_at = _now()
            fresh.disabled_reason = "signature counter went back (possible clone)"
            cp.audit.record(
                session,
                ctx,
                org_id=None,
                action="factor.cloned",
                target=principal.email,
                outcome="denied",
                detail={"factor": row.id, "stored_count": row.sign_count, "reason": exc.message},
            )
        raise
    with cp.db.write() as session:
        moved = session.execute(
            update(UserFactor)
            .where(UserFactor.id == row.id, UserFactor.sign_count == row.sign_count)
            .values(sign_count=count, last_used_at=_now())
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise FactorRejected("the security key was used at the same moment elsewhere")

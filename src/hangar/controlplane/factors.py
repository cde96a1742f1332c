"""People's second factors: enrol, list and remove them; the rules every use shares.

Verifying one (a step-up, a sign-in's second factor) is ``stepups.py``.

Every change is audited (``factor.add``, ``factor.confirm``, ``factor.remove``,
``factor.recovery-codes``), as is every verification, good or bad
(``auth.step-up``, ``factor.verify``), a credential disabled because its
signature counter went back (``factor.cloned``), and a refusal while backing
off (``factor.rate-limited``). The audit events of a person's own factors go
on the system chain: they belong to the person, not to one organization.

Rules callers may rely on:

* Only a person's own user token or session manages their factors or steps
  up: an organization or app token (automation) cannot, so a leaked CI token
  cannot enrol its holder's key.
* Enrolling another factor, removing one, or making new recovery codes needs
  a step-up fresher than ``step_up_minutes`` once the person has any factor:
  a stolen credential cannot quietly add its holder's key.
* Each WebAuthn challenge is answered once, by the token it was handed to,
  within ``CHALLENGE_SECONDS``; it is spent before the answer is checked.
* After ``LOCK_AFTER`` failed attempts in a row a person's second factors are
  refused for a backoff that doubles with each further failure (up to
  ``BACKOFF_MAX``), even with a correct code; a success resets it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.auth.factors import (
    CHALLENGE_BYTES,
    FactorRejected,
    RelyingParty,
    new_recovery_codes,
    new_totp_secret,
    registration_options,
    totp_uri,
    verify_registration,
    verify_totp,
)
from hangar.auth.stepup import MfaPolicy, require_fresh_factor
from hangar.auth.tokens import Principal, new_id
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane
from hangar.crypto.digests import hash_secret
from hangar.domain.names import normalize_email, validate_display_name
from hangar.errors import (
    AuthError,
    Conflict,
    NotFound,
    PermissionDenied,
    TooManyRequests,
    ValidationError,
    audited,
)
from hangar.store.tables import (
    FactorChallenge,
    FactorFailures,
    Membership,
    OrgMfaPolicy,
    RecoveryCode,
    StepUp,
    Token,
    User,
    UserFactor,
)

__all__ = [
    "CHALLENGE_SECONDS",
    "FactorList",
    "begin_totp",
    "begin_webauthn",
    "check_backoff",
    "confirm_totp",
    "factor_kinds",
    "finish_webauthn",
    "freshness",
    "list_factors",
    "make_recovery_codes",
    "new_challenge",
    "record_failure",
    "relying_party",
    "remove_factor",
    "require_personal",
    "reset_factors",
    "reset_failures",
    "spend_challenge",
    "step_up_time",
    "totp_purpose",
    "totp_secret",
]

CHALLENGE_SECONDS = 300
LOCK_AFTER = 5
BACKOFF_BASE = dt.timedelta(seconds=30)
BACKOFF_MAX = dt.timedelta(minutes=15)
MAX_FACTORS = 20
# Kinds of token that act for automation and carry no person's second factor.
AUTOMATION_KINDS = ("org", "app", "readonly")
METHODS = ("webauthn", "totp", "recovery")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def relying_party(cp: ControlPlane) -> RelyingParty:
    return RelyingParty.from_public_url(cp.settings.effective_public_url)


def totp_purpose(factor_id: str) -> str:
    """The KEK purpose a TOTP secret is wrapped under (bound to its factor)."""
    return f"totp-secret:{factor_id}"


@dataclass(frozen=True)
class FactorList:
    factors: list[UserFactor]
    recovery_codes_left: int


def list_factors(cp: ControlPlane, user_id: str) -> FactorList:
    with cp.db.read() as session:
        rows = list(
            session.execute(
                select(UserFactor)
                .where(UserFactor.user_id == user_id)
                .order_by(UserFactor.created_at, UserFactor.id)
            ).scalars()
        )
        left = session.execute(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
        ).scalar_one()
    return FactorList(rows, int(left))


def factor_kinds(session: Session, user_id: str) -> set[str]:
    """The kinds of usable factor a person has (disabled and unconfirmed ones do not count)."""
    rows = session.execute(
        select(UserFactor.kind)
        .where(
            UserFactor.user_id == user_id,
            UserFactor.disabled_at.is_(None),
            UserFactor.confirmed_at.is_not(None),
        )
        .distinct()
    ).scalars()
    return set(rows)


def _token_kind(session: Session, token_id: str) -> str | None:
    return session.execute(select(Token.kind).where(Token.id == token_id)).scalar_one_or_none()


def require_personal(session: Session, principal: Principal) -> None:
    """Refuse an automation token: a person's factors are managed by that person's own login."""
    if _token_kind(session, principal.token_id) in AUTOMATION_KINDS:
        raise PermissionDenied(
            "second factors are managed and used with your own login, not an organization "
            "or app token",
            hint="run `hangar auth login`",
        )


def step_up_time(session: Session, principal: Principal) -> dt.datetime | None:
    """The newest second factor behind this credential: its sign-in's, or a later step-up's."""
    stepped = session.execute(
        select(StepUp.verified_at).where(StepUp.token_id == principal.token_id)
    ).scalar_one_or_none()
    times = [t for t in (principal.mfa_verified_at, stepped) if t is not None]
    return max(times) if times else None


def freshness(cp: ControlPlane, principal: Principal) -> dt.datetime | None:
    """``step_up_time`` in a read of its own."""
    with cp.db.read() as session:
        return step_up_time(session, principal)


def _personal_minutes(session: Session, user_id: str) -> int:
    """The strictest step-up window of the person's organizations (15 minutes by default)."""
    rows = session.execute(
        select(OrgMfaPolicy.step_up_minutes)
        .join(Membership, Membership.org_id == OrgMfaPolicy.org_id)
        .where(Membership.user_id == user_id)
    ).scalars()
    return int(min([MfaPolicy().step_up_minutes, *rows]))


def _require_step_up_for_change(
    cp: ControlPlane, ctx: AuditContext, session: Session, principal: Principal, what: str
) -> None:
    """Once a person has a factor, changing their factors needs a fresh one."""
    if not factor_kinds(session, principal.user_id):
        return
    fresh = Principal(
        user_id=principal.user_id,
        email=principal.email,
        is_operator=principal.is_operator,
        token_id=principal.token_id,
        scope=principal.scope,
        mfa_verified_at=step_up_time(session, principal),
    )
    try:
        require_fresh_factor(fresh, _personal_minutes(session, principal.user_id))
    except PermissionDenied as exc:
        _record(cp, ctx, action=what, target=principal.email, outcome="denied", reason=exc.message)
        raise audited(exc) from None


def _record(
    cp: ControlPlane,
    ctx: AuditContext,
    *,
    action: str,
    target: str,
    outcome: str,
    reason: str,
    detail: dict[str, Any] | None = None,
) -> None:
    with cp.db.write() as session:
        cp.audit.record(
            session,
            ctx,
            org_id=None,
            action=action,
            target=target,
            outcome=outcome,
            detail={"reason": reason, **(detail or {})},
        )


# --- WebAuthn enrolment -------------------------------------------------------------


def new_challenge(
    session: Session, *, user_id: str, token_id: str, purpose: str
) -> tuple[str, bytes]:
    challenge = secrets.token_bytes(CHALLENGE_BYTES)
    now = _now()
    row = FactorChallenge(
        id=new_id("chl"),
        user_id=user_id,
        purpose=purpose,
        challenge=_b64(challenge),
        token_id=token_id,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=CHALLENGE_SECONDS),
        used_at=None,
    )
    # Spent and expired challenges of this person go as new ones come.
    session.execute(
        delete(FactorChallenge).where(
            FactorChallenge.user_id == user_id,
            (FactorChallenge.expires_at < now) | FactorChallenge.used_at.is_not(None),
        )
    )
    session.add(row)
    return row.id, challenge


def spend_challenge(
    cp: ControlPlane, *, challenge_id: str, user_id: str, token_id: str, purpose: str
) -> bytes:
    """The challenge's bytes, marked spent in a transaction of its own; AuthError if unusable."""
    now = _now()
    with cp.db.write() as session:
        row = session.get(FactorChallenge, challenge_id[:32])
        if (
            row is None
            or row.user_id != user_id
            or row.token_id != token_id
            or row.purpose != purpose
        ):
            raise FactorRejected("the challenge is not known", hint="start again")
        spent = session.execute(
            update(FactorChallenge)
            .where(FactorChallenge.id == row.id, FactorChallenge.used_at.is_(None))
            .values(used_at=now)
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            raise FactorRejected("the challenge was already answered", hint="start again")
        if row.expires_at <= now:
            raise FactorRejected("the challenge expired", hint="start again")
        return _unb64(row.challenge)


def begin_webauthn(cp: ControlPlane, principal: Principal) -> tuple[str, dict[str, Any]]:
    """A registration challenge for the caller: its id and ``publicKey`` options."""
    with cp.db.write() as session:
        require_personal(session, principal)
        existing = list(
            session.execute(
                select(UserFactor.credential_id).where(
                    UserFactor.user_id == principal.user_id, UserFactor.kind == "webauthn"
                )
            ).scalars()
        )
        challenge_id, challenge = new_challenge(
            session, user_id=principal.user_id, token_id=principal.token_id, purpose="register"
        )
    options = registration_options(
        relying_party(cp),
        user_handle=principal.user_id.encode(),
        email=principal.email,
        challenge=challenge,
        exclude=[c for c in existing if c],
    )
    return challenge_id, options


def finish_webauthn(
    cp: ControlPlane,
    ctx: AuditContext,
    principal: Principal,
    *,
    challenge_id: str,
    credential: object,
    name: str,
) -> UserFactor:
    """Verify the browser's answer and store the new credential (public key only)."""
    name = validate_display_name(name or "security key", what="the factor name")
    with cp.db.read() as session:
        require_personal(session, principal)
        _require_step_up_for_change(cp, ctx, session, principal, "factor.add")
        _check_count(session, principal.user_id)
    challenge = spend_challenge(
        cp,
        challenge_id=challenge_id,
        user_id=principal.user_id,
        token_id=principal.token_id,
        purpose="register",
    )
    try:
        new = verify_registration(relying_party(cp), credential, challenge)
    except FactorRejected as exc:
        _record(
            cp, ctx, action="factor.add", target=principal.email, outcome="failure",
            reason=exc.message, detail={"kind": "webauthn"},
        )  # fmt: skip
        raise audited(exc) from None
    now = _now()
    with change(cp, ctx, org_id=None, action="factor.add", target=principal.email, wake=False) as (
        session,
        event,
    ):
        taken = session.execute(
            select(UserFactor.id).where(UserFactor.credential_id == new.credential_id)
        ).scalar_one_or_none()
        if taken is not None:
            raise Conflict("this security key is already enrolled")
        row = UserFactor(
            id=new_id("fac"),
            user_id=principal.user_id,
            kind="webauthn",
            name=name,
            credential_id=new.credential_id,
            public_key=new.public_key,
            sign_count=new.sign_count,
            aaguid=new.aaguid,
            secret_wrapped=None,
            last_step=None,
            confirmed_at=now,
            created_at=now,
            last_used_at=None,
            disabled_at=None,
            disabled_reason=None,
        )
        session.add(row)
        event.detail = {"factor": row.id, "kind": "webauthn", "name": name, "aaguid": new.aaguid}
    return row


def _check_count(session: Session, user_id: str) -> None:
    count = session.execute(
        select(func.count()).select_from(UserFactor).where(UserFactor.user_id == user_id)
    ).scalar_one()
    if count >= MAX_FACTORS:
        raise ValidationError(
            f"you have {count} factors, the most one person may have",
            hint="remove one first: `hangar auth factors remove ID`",
        )


# --- TOTP enrolment -----------------------------------------------------------------


def begin_totp(
    cp: ControlPlane, ctx: AuditContext, principal: Principal, *, name: str
) -> tuple[UserFactor, str, str]:
    """A new, unconfirmed TOTP factor: the row, its secret and its otpauth URI (shown once)."""
    name = validate_display_name(name or "authenticator app", what="the factor name")
    secret = new_totp_secret()
    now = _now()
    with cp.db.read() as session:
        require_personal(session, principal)
        _require_step_up_for_change(cp, ctx, session, principal, "factor.add")
        _check_count(session, principal.user_id)
    factor_id = new_id("fac")
    with change(cp, ctx, org_id=None, action="factor.add", target=principal.email, wake=False) as (
        session,
        event,
    ):
        row = UserFactor(
            id=factor_id,
            user_id=principal.user_id,
            kind="totp",
            name=name,
            credential_id=None,
            public_key=None,
            sign_count=0,
            aaguid=None,
            secret_wrapped=cp.keyring.wrap(secret.encode(), purpose=totp_purpose(factor_id)),
            last_step=None,
            confirmed_at=None,
            created_at=now,
            last_used_at=None,
            disabled_at=None,
            disabled_reason=None,
        )
        session.add(row)
        event.detail = {"factor": factor_id, "kind": "totp", "name": name, "confirmed": False}
    return row, secret, totp_uri(secret, email=principal.email, issuer=relying_party(cp).id)


def confirm_totp(
    cp: ControlPlane, ctx: AuditContext, principal: Principal, *, factor_id: str, code: str
) -> UserFactor:
    """Confirm a TOTP factor with a code from it: only then does it count."""
    with cp.db.read() as session:
        require_personal(session, principal)
        row = session.get(UserFactor, factor_id[:32])
    if row is None or row.user_id != principal.user_id or row.kind != "totp":
        raise NotFound(f"factor {factor_id!r} not found")
    if row.confirmed_at is not None:
        raise Conflict("this TOTP factor is already confirmed")
    check_backoff(cp, ctx, principal)
    try:
        step = verify_totp(totp_secret(cp, row), code, last_step=row.last_step)
    except FactorRejected as exc:
        record_failure(cp, ctx, principal, "factor.confirm", exc, method="totp")
        raise audited(exc) from None
    with change(
        cp, ctx, org_id=None, action="factor.confirm", target=principal.email, wake=False
    ) as (session, event):
        fresh = session.get(UserFactor, row.id)
        assert fresh is not None
        fresh.confirmed_at = fresh.last_used_at = _now()
        fresh.last_step = step
        reset_failures(session, principal.user_id)
        event.detail = {"factor": row.id, "kind": "totp"}
    return fresh


def totp_secret(cp: ControlPlane, row: UserFactor) -> str:
    assert row.secret_wrapped is not None
    return cp.keyring.unwrap(row.secret_wrapped, purpose=totp_purpose(row.id)).decode()


# --- removal, recovery codes --------------------------------------------------------


def remove_factor(
    cp: ControlPlane, ctx: AuditContext, principal: Principal, factor_id: str
) -> None:
    with cp.db.read() as session:
        require_personal(session, principal)
        row = session.get(UserFactor, factor_id[:32])
        if row is None or row.user_id != principal.user_id:
            raise NotFound(f"factor {factor_id!r} not found")
        _require_step_up_for_change(cp, ctx, session, principal, "factor.remove")
    with change(
        cp, ctx, org_id=None, action="factor.remove", target=principal.email, wake=False
    ) as (session, event):
        session.execute(delete(UserFactor).where(UserFactor.id == row.id))
        event.detail = {"factor": row.id, "kind": row.kind, "name": row.name}


def reset_factors(cp: ControlPlane, ctx: AuditContext, email: str) -> dict[str, int]:
    """An operator removes every factor and recovery code of a person who lost them all.

    Their sessions and tokens stay (they carry no fresher second factor than
    before); the person then signs in without a second factor and enrols
    again, as at first. Audited as ``factor.reset`` with what was removed.
    """
    email = normalize_email(email)
    with change(cp, ctx, org_id=None, action="factor.reset", target=email, wake=False) as (
        session,
        event,
    ):
        user = session.execute(select(User).where(User.email == email)).scalar_one_or_none()
        if user is None:
            raise NotFound(f"no user {email}")
        if ctx.actor == email:
            raise Conflict("you cannot reset your own factors", hint="ask another operator")
        factors_gone = session.execute(delete(UserFactor).where(UserFactor.user_id == user.id))
        codes_gone = session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
        session.execute(delete(FactorFailures).where(FactorFailures.user_id == user.id))
        event.detail = {
            "factors": int(factors_gone.rowcount),  # type: ignore[attr-defined]
            "recovery_codes": int(codes_gone.rowcount),  # type: ignore[attr-defined]
        }
    return dict(event.detail)


def make_recovery_codes(cp: ControlPlane, ctx: AuditContext, principal: Principal) -> list[str]:
    """New recovery codes (shown once; stored only as digests); the old ones stop working."""
    with cp.db.read() as session:
        require_personal(session, principal)
        _require_step_up_for_change(cp, ctx, session, principal, "factor.recovery-codes")
    codes = new_recovery_codes()
    now = _now()
    with change(
        cp, ctx, org_id=None, action="factor.recovery-codes", target=principal.email, wake=False
    ) as (session, event):
        session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == principal.user_id))
        for code in codes:
            session.add(
                RecoveryCode(
                    id=new_id("rec"),
                    user_id=principal.user_id,
                    digest=hash_secret(code),
                    created_at=now,
                    used_at=None,
                )
            )
        event.detail = {"count": len(codes)}
    return codes


# --- backoff ------------------------------------------------------------------------


def check_backoff(cp: ControlPlane, ctx: AuditContext, principal: Principal) -> None:
    now = _now()
    with cp.db.read() as session:
        row = session.get(FactorFailures, principal.user_id)
    if row is None or row.locked_until is None or row.locked_until <= now:
        return
    wait = int((row.locked_until - now).total_seconds()) + 1
    exc = TooManyRequests(
        f"too many failed second-factor attempts: try again in {wait} seconds",
        retry_after=wait,
        hint="each further failure doubles the wait",
    )
    _record(
        cp, ctx, action="factor.rate-limited", target=principal.email, outcome="denied",
        reason=exc.message, detail={"failures": row.failures},
    )  # fmt: skip
    raise audited(exc)


def record_failure(
    cp: ControlPlane,
    ctx: AuditContext,
    principal: Principal,
    action: str,
    exc: AuthError,
    *,
    method: str,
) -> None:
    now = _now()
    with cp.db.write() as session:
        row = session.get(FactorFailures, principal.user_id)
        if row is None:
            row = FactorFailures(user_id=principal.user_id, failures=0, last_failure_at=now)
            session.add(row)
        row.failures = (row.failures or 0) + 1
        row.last_failure_at = now
        if row.failures >= LOCK_AFTER:
            backoff = min(BACKOFF_BASE * 2 ** (row.failures - LOCK_AFTER), BACKOFF_MAX)
            row.locked_until = now + backoff
        cp.audit.record(
            session,
            ctx,
            org_id=None,
            action="factor.verify",
            target=principal.email,
            outcome="failure",
            detail={
                "for": action,
                "method": method,
                "reason": exc.message,
                "failures": row.failures,
            },
        )


def reset_failures(session: Session, user_id: str) -> None:
    session.execute(delete(FactorFailures).where(FactorFailures.user_id == user_id))


def _b64(raw: bytes) -> str:
    from webauthn.helpers import bytes_to_base64url

    return bytes_to_base64url(raw)


def _unb64(text: str) -> bytes:
    from webauthn.helpers import base64url_to_bytes

    return base64url_to_bytes(text)


def as_json(row: UserFactor) -> dict[str, Any]:
    """A factor as listed: never its secret or public key."""
    return {
        "id": row.id,
        "kind": row.kind,
        "name": row.name,
        "confirmed": row.confirmed_at is not None,
        "created_at": row.created_at.isoformat(),
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "disabled": row.disabled_reason if row.disabled_at else None,
        "aaguid": row.aaguid,
        "sign_count": row.sign_count if row.kind == "webauthn" else None,
    }

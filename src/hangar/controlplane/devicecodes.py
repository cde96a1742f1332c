"""Device codes (RFC 8628): a headless CLI waits while a signed-in person approves it.

The CLI asks for a code (``start_device``) and polls (``poll_device``); the
person opens ``/web/device``, signs in if they have not, checks the code and
the device's address, and approves or denies (``decide_device``). Approval
makes a session of the device's own (lifetime what is left of the approving
session's, the same organizations), whose token the device collects once.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.auth.sessions import IssuedSession, is_current
from hangar.auth.tokens import Principal
from hangar.controlplane.signins import digest, fail, limit_keys, refuse_when_full, utcnow
from hangar.controlplane.state import ControlPlane
from hangar.errors import AuthError, HangarError
from hangar.store.tables import DeviceCode, Token, User, UserSession

__all__ = [
    "DEVICE_INTERVAL_S",
    "DEVICE_LIFETIME",
    "DevicePending",
    "DeviceStart",
    "decide_device",
    "find_device",
    "normalize_user_code",
    "poll_device",
    "start_device",
]

DEVICE_LIFETIME = dt.timedelta(minutes=10)
DEVICE_INTERVAL_S = 5
# No ambiguous letters, no vowels (no words): 20**8 codes.
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"


@dataclass(frozen=True)
class DeviceStart:
    device_code: str
    user_code: str
    expires_in: int
    interval: int


def start_device(cp: ControlPlane, client_addr: str | None) -> DeviceStart:
    """A device authorization request (RFC 8628 section 3.1)."""
    cp.signin_limiter.check(limit_keys(client_addr))
    device_code = secrets.token_urlsafe(32)
    raw = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
    user_code = f"{raw[:4]}-{raw[4:]}"
    now = utcnow()
    with cp.db.write() as session:
        session.execute(delete(DeviceCode).where(DeviceCode.expires_at < now))
        refuse_when_full(session, DeviceCode, client_addr)
        session.add(
            DeviceCode(
                id=digest(device_code),
                user_code=user_code,
                client_addr=(client_addr or "")[:64] or None,
                created_at=now,
                expires_at=now + DEVICE_LIFETIME,
                interval_s=DEVICE_INTERVAL_S,
                last_polled_at=None,
                approved_session_id=None,
                denied=False,
                collected_at=None,
            )
        )
    return DeviceStart(
        device_code=device_code,
        user_code=user_code,
        expires_in=int(DEVICE_LIFETIME.total_seconds()),
        interval=DEVICE_INTERVAL_S,
    )


def normalize_user_code(text: str) -> str:
    letters = "".join(c for c in text.upper() if c.isalpha())[:8]
    return f"{letters[:4]}-{letters[4:]}"


def find_device(
    cp: ControlPlane, ctx: AuditContext, principal: Principal, user_code: str
) -> DeviceCode | None:
    """The device waiting with ``user_code``, for its approval page.

    A look-up is an attempt like an approval: limited per address and person,
    and a miss is a failure (audited), so codes cannot be searched for on
    this page either.
    """
    cp.signin_limiter.check(limit_keys(ctx.client_addr, principal.email))
    code = normalize_user_code(user_code)
    with cp.db.read() as session:
        row = session.execute(
            select(DeviceCode).where(DeviceCode.user_code == code)
        ).scalar_one_or_none()
    if row is None or utcnow() >= row.expires_at or row.approved_session_id or row.denied:
        fail(
            cp,
            ctx,
            action="auth.device.lookup",
            target=code,
            exc=AuthError("no device is waiting with that code (wrong, used or expired)"),
            email=principal.email,
        )
        return None
    return row


def decide_device(
    cp: ControlPlane, ctx: AuditContext, principal: Principal, user_code: str, *, approve: bool
) -> None:
    """A signed-in person approves (or denies) a device's sign-in: it gets a session of its own."""
    cp.signin_limiter.check(limit_keys(ctx.client_addr, principal.email))
    now = utcnow()
    code = normalize_user_code(user_code)
    failure: HangarError | None = None
    with cp.db.write() as session:
        row = session.execute(
            select(DeviceCode).where(DeviceCode.user_code == code)
        ).scalar_one_or_none()
        if row is None or now >= row.expires_at or row.approved_session_id or row.denied:
            failure = AuthError("no device is waiting with that code (wrong, used or expired)")
        elif principal.session_id is None:
            failure = AuthError("approving a device needs a sign-in session")
        else:
            source = session.get(UserSession, principal.session_id)
            assert source is not None
            if not approve:
                row.denied = True
                cp.audit.record(session, ctx, org_id=None, action="auth.device.deny", target=code)
                return
            ends = source.expires_at
            if principal.scope.expires is not None:
                # Never longer than the approving token (an attenuated copy may end sooner).
                ends = min(ends, dt.datetime.fromtimestamp(principal.scope.expires, dt.UTC))
            issued = cp.sessions.issue(
                session,
                user_id=principal.user_id,
                idp=source.idp,
                lifetime=ends - now,
                idle_timeout=dt.timedelta(seconds=source.idle_timeout_s),
                via="device",
                client_addr=row.client_addr,
                org_ids=sorted(principal.scope.orgs) if principal.scope.orgs is not None else None,
                amr=list(principal.amr),
                mfa_verified_at=principal.mfa_verified_at,
                now=now,
            )
            # The token is minted again when the device collects it; this one is not shown.
            session.execute(update(Token).where(Token.id == issued.token_id).values(revoked_at=now))
            row.approved_session_id = issued.row.id
            cp.audit.record(
                session,
                ctx,
                org_id=None,
                action="auth.device.approve",
                target=code,
                detail={"session": issued.row.id, "device_addr": row.client_addr},
            )
    if failure is not None:
        raise fail(
            cp, ctx, action="auth.device.approve", target=code, exc=failure, email=principal.email
        )


class DevicePending(HangarError):
    """RFC 8628's polling answers: authorization_pending, slow_down, expired_token, ..."""

    status = 400

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


def poll_device(
    cp: ControlPlane, device_code: str, client_addr: str | None, request_id: str | None
) -> IssuedSession:
    """The device's session once approved (once); DevicePending otherwise."""
    now = utcnow()
    pending: DevicePending | None = None
    with cp.db.write() as session:
        row = session.get(DeviceCode, digest(device_code[:128]))
        if row is None:
            cp.signin_limiter.check(limit_keys(client_addr))
            cp.signin_limiter.failed(limit_keys(client_addr))
            raise DevicePending("invalid_grant", "unknown device code")
        if now >= row.expires_at or row.collected_at is not None:
            raise DevicePending("expired_token", "the device code has expired")
        if row.denied:
            raise DevicePending("access_denied", "the sign-in was denied")
        if row.approved_session_id is None:
            # Answered once the transaction commits: raising inside it would
            # roll back the poll's time and the longer interval (RFC 8628 3.5).
            last, row.last_polled_at = row.last_polled_at, now
            if last is not None and (now - last).total_seconds() < row.interval_s:
                row.interval_s = min(row.interval_s + 5, 60)
                pending = DevicePending(
                    "slow_down", f"polling too fast: wait {row.interval_s} s between polls"
                )
            else:
                pending = DevicePending("authorization_pending", "waiting for approval")
        else:
            issued = _collect(session, cp, row, now, client_addr, request_id)
    if pending is not None:
        raise pending
    return issued


def _collect(
    session: Session,
    cp: ControlPlane,
    row: DeviceCode,
    now: dt.datetime,
    client_addr: str | None,
    request_id: str | None,
) -> IssuedSession:
    """The approved device's token, minted once (inside the poll's transaction)."""
    target = session.get(UserSession, row.approved_session_id)
    assert target is not None
    if not is_current(target, now):
        # Ended before the device collected it (signed out, removed, disabled).
        raise DevicePending("expired_token", "the approved sign-in has ended")
    user = session.get(User, target.user_id)
    assert user is not None
    token_row = (
        session.execute(select(Token).where(Token.session_id == target.id)).scalars().first()
    )
    caveats = json.loads(token_row.caveats) if token_row is not None else []
    orgs = next((c.split("=", 1)[1].strip() for c in caveats if c.startswith("org")), None)
    new_row, token = cp.tokens.mint_session(
        session,
        user_id=user.id,
        session_id=target.id,
        expires_at=target.expires_at,
        org_ids=orgs.split(",") if orgs and orgs != "none" else ([] if orgs else None),
    )
    row.collected_at = now
    cp.audit.record(
        session,
        AuditContext(
            actor=user.email,
            token_id=new_row.id,
            request_id=request_id,
            client_addr=client_addr,
        ),
        org_id=None,
        action="auth.signin",
        target=user.email,
        detail={"idp": target.idp, "via": "device", "session": target.id},
    )
    return IssuedSession(row=target, token=token, token_id=new_row.id)

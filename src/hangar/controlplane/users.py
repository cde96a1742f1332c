"""Operators disable and enable users (`hangar users disable|enable`)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.offboard import offboard
from hangar.controlplane.state import ControlPlane
from hangar.domain.names import normalize_email
from hangar.errors import Conflict, NotFound
from hangar.store.tables import User

__all__ = ["disable_user", "enable_user"]


def disable_user(cp: ControlPlane, ctx: AuditContext, email: str) -> dict[str, object]:
    """Disable a user: no sign-in, and every session, token and device of theirs ends now."""
    email = normalize_email(email)
    with change(cp, ctx, org_id=None, action="user.disable", target=email) as (session, event):
        user = session.execute(select(User).where(User.email == email)).scalar_one_or_none()
        if user is None:
            raise NotFound(f"no user {email}")
        if ctx.actor == email:
            raise Conflict("you cannot disable yourself", hint="ask another operator")
        if user.disabled_at is None:
            user.disabled_at = dt.datetime.now(dt.UTC)
        event.detail = offboard(session, user, org_id=None).detail()
    return event.detail


def enable_user(cp: ControlPlane, ctx: AuditContext, email: str) -> None:
    """Let a disabled user sign in again (what was revoked stays revoked)."""
    email = normalize_email(email)
    with change(cp, ctx, org_id=None, action="user.enable", target=email, wake=False) as (
        session,
        _,
    ):
        user = session.execute(select(User).where(User.email == email)).scalar_one_or_none()
        if user is None:
            raise NotFound(f"no user {email}")
        user.disabled_at = None

"""People signing in and out: pending sign-ins, sessions issued and ended (audited)."""

from __future__ import annotations

from hangar.audit.log import AuditContext
from hangar.auth.sessions import SessionService
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane
from hangar.errors import NotFound
from hangar.store.tables import UserSession

__all__ = ["end_session"]


def end_session(cp: ControlPlane, ctx: AuditContext, user_id: str, session_id: str) -> None:
    """End one of ``user_id``'s sessions (sign out, or `hangar auth sessions revoke`)."""
    with change(cp, ctx, org_id=None, action="auth.session.revoke", target=session_id) as (
        session,
        event,
    ):
        row = session.get(UserSession, session_id[:32])
        if row is None or row.user_id != user_id:
            raise NotFound(f"session {session_id!r} not found", hint="hangar auth sessions list")
        event.detail = {"ended": SessionService.revoke(session, row.id)}

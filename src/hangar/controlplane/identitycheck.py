"""Whether identity providers still vouch for the people signed in through them.

Sessions are not renewed by the provider (only a new sign-in makes a new
one), so a person disabled at their provider would otherwise keep Hangar
access until their session ended. Every ``idp_check_seconds`` Hangar uses
the refresh token the provider gave at sign-in, for each person with a
current session: a provider that refuses it (``invalid_grant``: the user was
disabled, deleted or signed out everywhere) has stopped vouching, and the
person is offboarded at once (``offboard``: sessions, tokens, devices) and
recorded as ``user.idp_disabled``. A provider that cannot be reached changes
nothing (logged; tried again at the next round). People whose provider gave
no refresh token are checked only when they sign in again.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import or_, select

from hangar.audit.log import AuditContext
from hangar.auth.oidc import OidcError
from hangar.controlplane import idps
from hangar.controlplane.background import BackgroundLoop
from hangar.controlplane.changes import change
from hangar.controlplane.offboard import offboard
from hangar.controlplane.signins import refresh_purpose
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import IdentityProvider, User, UserIdentity, UserSession

__all__ = ["IdentityChecks", "check_identities"]

log = logging.getLogger("hangar.auth")

BATCH = 100


def check_identities(cp: ControlPlane, now: dt.datetime | None = None) -> int:
    """One round: ask the providers about up to BATCH people due; the number offboarded."""
    now = now or dt.datetime.now(dt.UTC)
    due = now - dt.timedelta(seconds=cp.settings.idp_check_seconds)
    with cp.db.read() as session:
        rows = session.execute(
            select(UserIdentity, IdentityProvider, User)
            .join(IdentityProvider, IdentityProvider.id == UserIdentity.idp_id)
            .join(User, User.id == UserIdentity.user_id)
            .where(
                UserIdentity.refresh_token.is_not(None),
                or_(UserIdentity.checked_at.is_(None), UserIdentity.checked_at < due),
                select(UserSession.id)
                .where(
                    UserSession.user_id == UserIdentity.user_id,
                    UserSession.idp == IdentityProvider.name,
                    UserSession.revoked_at.is_(None),
                    UserSession.expires_at > now,
                )
                .exists(),
            )
            .limit(BATCH)
        ).all()
    offboarded = 0
    for identity, idp_row, user in rows:
        offboarded += _check_one(cp, identity, idp_row, user, now)
    return offboarded


def _check_one(
    cp: ControlPlane,
    identity: UserIdentity,
    idp_row: IdentityProvider,
    user: User,
    now: dt.datetime,
) -> int:
    purpose = refresh_purpose(idp_row.id, identity.subject)
    assert identity.refresh_token is not None
    refresh_token = cp.keyring.unwrap(identity.refresh_token, purpose=purpose).decode()
    try:
        answer = cp.oidc.refresh(idps.provider_config(cp, idp_row), refresh_token)
    except OidcError as exc:
        log.warning("could not ask %s about %s: %s", idp_row.name, user.email, exc.message)
        with cp.db.write() as session:
            row = session.get(UserIdentity, (identity.idp_id, identity.subject))
            if row is not None:
                row.checked_at = now
        return 0
    if answer is not None:
        with cp.db.write() as session:
            row = session.get(UserIdentity, (identity.idp_id, identity.subject))
            if row is not None:
                row.checked_at = now
                if answer.refresh_token:
                    row.refresh_token = cp.keyring.wrap(
                        answer.refresh_token.encode(), purpose=purpose
                    )
        return 0
    ctx = AuditContext(
        actor=f"idp:{idp_row.name}", token_id=None, request_id=None, client_addr=None
    )
    with change(cp, ctx, org_id=None, action="user.idp_disabled", target=user.email) as (
        session,
        event,
    ):
        row = session.get(UserIdentity, (identity.idp_id, identity.subject))
        person = session.get(User, user.id)
        assert person is not None
        if row is not None:
            row.refresh_token = None
            row.checked_at = now
        event.detail = {
            "reason": "the identity provider refused the refresh token",
            **offboard(session, person, org_id=None).detail(),
        }
    log.warning("%s no longer vouches for %s: offboarded", idp_row.name, user.email)
    return 1


class IdentityChecks(BackgroundLoop):
    """Runs ``check_identities`` on its own thread (provider round trips are slow work)."""

    def __init__(self, cp: ControlPlane) -> None:
        super().__init__("hangar-identity-checks", max(15.0, cp.settings.idp_check_seconds / 4))
        self.cp = cp

    def round(self) -> float | None:
        check_identities(self.cp)
        return None

"""Sign-in sessions: what a person holds after signing in, checked on every call.

A session is a row of ``sessions`` and a token (a macaroon of kind
``session`` with the caveat ``session = <id>``) that stands for it. The
token is refused (401) once the session is past its lifetime, idle for
longer than its idle timeout (automatic logoff), or revoked; signing in
again is the only way to a new one: nothing extends a session's lifetime.

``last_seen_at`` moves forward at most once every ``touch_seconds`` (a
tenth of the idle timeout, at most a minute), so a busy session costs one
small write a minute rather than one per call; the idle timeout therefore
holds to within that granularity.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hangar.auth.tokens import Principal, TokenService, new_id
from hangar.store.db import Database
from hangar.store.tables import Token, UserSession

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LIFETIME",
    "MAX_IDLE_TIMEOUT_S",
    "MAX_LIFETIME_S",
    "MIN_IDLE_TIMEOUT_S",
    "MIN_LIFETIME_S",
    "IssuedSession",
    "SessionService",
    "touch_seconds",
]

DEFAULT_LIFETIME = dt.timedelta(hours=12)
DEFAULT_IDLE_TIMEOUT = dt.timedelta(hours=1)
# The bounds an organization's policy may set.
MIN_IDLE_TIMEOUT_S = 300
MAX_IDLE_TIMEOUT_S = 24 * 3600
MIN_LIFETIME_S = 900
MAX_LIFETIME_S = 7 * 24 * 3600


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def touch_seconds(idle_timeout_s: int) -> float:
    """How stale ``last_seen_at`` may get before a call moves it forward."""
    return min(60.0, idle_timeout_s / 10)


@dataclass(frozen=True)
class IssuedSession:
    """A new session: its row, and its token (shown once, to whoever signed in)."""

    row: UserSession
    token: str
    token_id: str


class SessionService:
    """Issues, checks the freshness of, lists and revokes sign-in sessions."""

    def __init__(self, db: Database, tokens: TokenService) -> None:
        self._db = db
        self._tokens = tokens

    def issue(
        self,
        session: Session,
        *,
        user_id: str,
        idp: str,
        lifetime: dt.timedelta,
        idle_timeout: dt.timedelta,
        via: str,
        client_addr: str | None,
        org_ids: list[str] | None = None,
        amr: list[str] | None = None,
        mfa_verified_at: dt.datetime | None = None,
        now: dt.datetime | None = None,
    ) -> IssuedSession:
        """A new session and its token, in the caller's transaction (which audits it)."""
        now = now or _utcnow()
        row = UserSession(
            id=new_id("ses"),
            user_id=user_id,
            idp=idp,
            created_at=now,
            expires_at=now + lifetime,
            last_seen_at=now,
            idle_timeout_s=int(idle_timeout.total_seconds()),
            revoked_at=None,
            mfa_verified_at=mfa_verified_at,
            amr=json.dumps(sorted(set(amr or []))),
            client_addr=(client_addr or "")[:64] or None,
            via=via,
        )
        session.add(row)
        session.flush()
        token_row, token = self._tokens.mint_session(
            session,
            user_id=user_id,
            session_id=row.id,
            expires_at=row.expires_at,
            org_ids=org_ids,
        )
        return IssuedSession(row=row, token=token, token_id=token_row.id)

    def seen(self, principal: Principal, now: dt.datetime | None = None) -> None:
        """Record that ``principal``'s session was used now, if it is due (see module doc).

        Most calls return at once: only when ``last_seen_at`` is older than
        the session's touch step does one UPDATE (guarded, so concurrent
        calls write it once) move it forward.
        """
        if principal.session_id is None or principal.session_seen_at is None:
            return
        now = now or _utcnow()
        step = dt.timedelta(seconds=touch_seconds(principal.session_idle_s or MIN_IDLE_TIMEOUT_S))
        if now - principal.session_seen_at < step:
            return
        with self._db.write() as session:
            session.execute(
                update(UserSession)
                .where(
                    UserSession.id == principal.session_id,
                    UserSession.revoked_at.is_(None),
                    UserSession.last_seen_at < now - step,
                )
                .values(last_seen_at=now)
            )

    def list_for(self, user_id: str, *, include_ended: bool = False) -> list[UserSession]:
        """The user's sessions, newest first (current ones only unless ``include_ended``)."""
        now = _utcnow()
        query = (
            select(UserSession)
            .where(UserSession.user_id == user_id)
            .order_by(UserSession.created_at.desc())
            .limit(200)
        )
        with self._db.read() as session:
            rows = list(session.execute(query).scalars())
        if include_ended:
            return rows
        return [r for r in rows if is_current(r, now)]

    @staticmethod
    def revoke(session: Session, session_id: str, now: dt.datetime | None = None) -> bool:
        """End one session and its tokens in the caller's transaction; False if already ended."""
        now = now or _utcnow()
        row = session.get(UserSession, session_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = now
        session.execute(
            update(Token)
            .where(Token.session_id == session_id, Token.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return True

    @staticmethod
    def revoke_user(session: Session, user_id: str, now: dt.datetime | None = None) -> list[str]:
        """End every current session of ``user_id`` (and their tokens); the ids ended."""
        now = now or _utcnow()
        ids = list(
            session.execute(
                select(UserSession.id).where(
                    UserSession.user_id == user_id, UserSession.revoked_at.is_(None)
                )
            ).scalars()
        )
        if ids:
            session.execute(
                update(UserSession).where(UserSession.id.in_(ids)).values(revoked_at=now)
            )
            session.execute(
                update(Token)
                .where(Token.session_id.in_(ids), Token.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return ids


def is_current(row: UserSession, now: dt.datetime) -> bool:
    """Whether ``row`` would still be accepted now."""
    if row.revoked_at is not None or now >= row.expires_at:
        return False
    return (now - row.last_seen_at).total_seconds() <= row.idle_timeout_s

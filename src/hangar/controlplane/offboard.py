"""Offboarding: when a person leaves, their access leaves with them, at once.

Removing a member, disabling a user (`hangar users disable`), or their
identity provider no longer vouching for them ends, in the same
transaction as the change that caused it:

- their sign-in sessions (all of them: a session is the person's, not an
  organization's) and the sessions' tokens;
- their API tokens: those bound to the organization they left, and their
  user-wide tokens when no organization is left to them (all of them, for
  a disabled user);
- their WireGuard devices on the organization's private network (every
  organization's, for a disabled user): a device's key stops working at its
  gateway's next round, which the change wakes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from hangar.auth.sessions import SessionService
from hangar.store.tables import Membership, Token, User, WireguardPeer

__all__ = ["Offboarded", "offboard"]


@dataclass
class Offboarded:
    sessions: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)

    def detail(self) -> dict[str, object]:
        return {
            "sessions_ended": len(self.sessions),
            "tokens_revoked": self.tokens,
            "devices_removed": self.devices,
        }


def offboard(session: Session, user: User, *, org_id: str | None) -> Offboarded:
    """End ``user``'s access to ``org_id`` (to everything when None), in ``session``.

    Call it inside the change that removes the membership (after the delete
    is flushed) or disables the user, so both commit together.
    """
    now = dt.datetime.now(dt.UTC)
    done = Offboarded(sessions=SessionService.revoke_user(session, user.id, now))
    tokens = select(Token.id).where(
        Token.user_id == user.id, Token.revoked_at.is_(None), Token.session_id.is_(None)
    )
    if org_id is not None:
        remaining = session.execute(
            select(func.count()).select_from(Membership).where(Membership.user_id == user.id)
        ).scalar_one()
        if remaining:
            tokens = tokens.where(Token.org_id == org_id)
    done.tokens = sorted(session.execute(tokens).scalars())
    if done.tokens:
        session.execute(update(Token).where(Token.id.in_(done.tokens)).values(revoked_at=now))
    peers = select(WireguardPeer).where(WireguardPeer.created_by == user.email)
    if org_id is not None:
        peers = peers.where(WireguardPeer.org_id == org_id)
    for peer in session.execute(peers).scalars():
        done.devices.append(peer.name)
        session.delete(peer)
    return done

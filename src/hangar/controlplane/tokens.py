"""API tokens as people list, create and revoke them (minting is ``auth.tokens``'s)."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import select

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane
from hangar.errors import NotFound
from hangar.store.tables import Org, Token

__all__ = ["create_token", "find_token", "list_tokens", "revoke_token"]


def list_tokens(
    cp: ControlPlane,
    *,
    org_id: str | None,
    user_id: str | None,
    after: str | None,
    limit: int,
) -> list[Token]:
    """Tokens of ``org_id`` (None: user tokens), of ``user_id`` only unless None, by id."""
    query = select(Token).order_by(Token.id).limit(limit)
    if after is not None:
        query = query.where(Token.id > after)
    query = query.where(Token.org_id.is_(None) if org_id is None else Token.org_id == org_id)
    # Sessions' tokens are listed as sessions (`hangar auth sessions list`).
    query = query.where(Token.session_id.is_(None))
    if user_id is not None:
        query = query.where(Token.user_id == user_id)
    with cp.db.read() as session:
        return list(session.execute(query).scalars())


def create_token(
    cp: ControlPlane,
    ctx: AuditContext,
    *,
    user_id: str,
    kind: str,
    org: Org | None,
    app: str | None,
    ttl: dt.timedelta | None,
    name: str,
) -> tuple[Token, str]:
    """A new token (its row, and the token itself, which is shown once)."""
    org_id = org.id if org else None
    with change(cp, ctx, org_id=org_id, action="token.create", wake=False) as (session, event):
        row, token = cp.tokens.mint(
            session, user_id=user_id, kind=kind, org_id=org_id, app=app, ttl=ttl, name=name
        )
        event.target = row.id
        event.detail = {"kind": kind, "name": row.name, "caveats": json.loads(row.caveats)}
    return row, token


def find_token(cp: ControlPlane, token_id: str) -> tuple[Token, Org | None]:
    """The token and its organization (None for a user token); NotFound if there is none."""
    with cp.db.read() as session:
        tok = session.get(Token, token_id[:32])
        org = session.get(Org, tok.org_id) if tok is not None and tok.org_id else None
    if tok is None:
        raise NotFound(f"token {token_id!r} not found")
    return tok, org


def revoke_token(cp: ControlPlane, ctx: AuditContext, tok: Token) -> None:
    """Revoke ``tok`` at once (revoking twice keeps the first time)."""
    with change(cp, ctx, org_id=tok.org_id, action="token.revoke", target=tok.id, wake=False) as (
        session,
        _,
    ):
        row = session.get(Token, tok.id)
        assert row is not None
        if row.revoked_at is None:
            row.revoked_at = dt.datetime.now(dt.UTC)

"""One-time links from the CLI to the web pages, and the short tickets they become.

A browser has no API token, and must not be handed one. The CLI (with the
person's own login) asks for a link; the link's code is good once, for
``LINK_SECONDS``; opening it gives the browser a ``__Host-`` cookie (a fresh
secret, unrelated to the code, so the address in the browser's history is
spent). The ticket acts for the token that asked for the link, for the one
page it was made for, and no longer than that token is valid; only digests
of the code and of the cookie are stored. (The pages' forms carry the web
frame's CSRF token, as every form does.)
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update

from hangar.auth.tokens import Principal, Scope, new_id
from hangar.controlplane.factors import AUTOMATION_KINDS
from hangar.controlplane.state import ControlPlane
from hangar.crypto.digests import hash_secret
from hangar.errors import AuthError, PermissionDenied
from hangar.store.tables import FactorChallenge, Token, User

__all__ = ["LINK_SECONDS", "TICKET_SECONDS", "WebTicket", "make_link", "open_link", "ticket"]

LINK_SECONDS = 600
TICKET_SECONDS = 900
PAGES = ("enrol", "step-up")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class WebTicket:
    principal: Principal
    expires_at: dt.datetime


def make_link(cp: ControlPlane, principal: Principal, *, page: str) -> tuple[str, dt.datetime]:
    """A one-time URL to ``page`` acting for ``principal``'s token; and when it expires."""
    assert page in PAGES
    code = secrets.token_urlsafe(32)
    now = _now()
    expires = now + dt.timedelta(seconds=LINK_SECONDS)
    with cp.db.write() as session:
        kind = session.execute(
            select(Token.kind).where(Token.id == principal.token_id)
        ).scalar_one_or_none()
        if kind in AUTOMATION_KINDS:
            raise PermissionDenied(
                "a web page for your factors opens from your own login, not an "
                "organization or app token",
                hint="run `hangar auth login`",
            )
        session.add(
            FactorChallenge(
                id=new_id("lnk"),
                user_id=principal.user_id,
                purpose=f"link:{page}",
                challenge=hash_secret(code),
                token_id=principal.token_id,
                created_at=now,
                expires_at=expires,
                used_at=None,
            )
        )
    return f"{cp.settings.effective_public_url}/web/factors/{page}?code={code}", expires


def open_link(cp: ControlPlane, code: str, *, page: str) -> tuple[str, WebTicket]:
    """Spend a link's code to ``page``: the cookie secret to set, and its ticket."""
    now = _now()
    refused = AuthError(
        "this link is not valid: it was used, it expired, or it was never made",
        hint="run the command again for a new link",
    )
    if not code or len(code) > 100:
        raise refused
    with cp.db.write() as session:
        row = session.execute(
            select(FactorChallenge).where(
                FactorChallenge.purpose == f"link:{page}",
                FactorChallenge.challenge == hash_secret(code),
            )
        ).scalar_one_or_none()
        if row is None or row.expires_at <= now:
            raise refused
        spent = session.execute(
            update(FactorChallenge)
            .where(FactorChallenge.id == row.id, FactorChallenge.used_at.is_(None))
            .values(used_at=now)
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            raise refused
        cookie = secrets.token_urlsafe(32)
        expires = now + dt.timedelta(seconds=TICKET_SECONDS)
        session.add(
            FactorChallenge(
                id=new_id("web"),
                user_id=row.user_id,
                purpose=f"web:{page}",
                challenge=hash_secret(cookie),
                token_id=row.token_id,
                created_at=now,
                expires_at=expires,
                used_at=None,
            )
        )
    return cookie, ticket(cp, cookie, page=page)


def ticket(cp: ControlPlane, cookie: str | None, *, page: str) -> WebTicket:
    """The ticket a page's cookie stands for; AuthError if none, expired, or its token is not.

    A ticket serves the one page its link was made for.
    """
    now = _now()
    refused = AuthError(
        "this page's sign-in expired or is missing",
        hint="run the command again for a new link",
    )
    if not cookie or len(cookie) > 100:
        raise refused
    with cp.db.read() as session:
        row = session.execute(
            select(FactorChallenge, Token, User)
            .join(Token, Token.id == FactorChallenge.token_id)
            .join(User, User.id == FactorChallenge.user_id)
            .where(
                FactorChallenge.purpose == f"web:{page}",
                FactorChallenge.challenge == hash_secret(cookie),
            )
        ).one_or_none()
    if row is None:
        raise refused
    challenge, token, user = row
    if challenge.expires_at <= now or token.revoked_at is not None:
        raise refused
    if token.expires_at is not None and token.expires_at <= now:
        raise refused
    principal = Principal(
        user_id=user.id,
        email=user.email,
        is_operator=bool(user.is_operator),
        token_id=token.id,
        scope=Scope(),
    )
    return WebTicket(principal=principal, expires_at=challenge.expires_at)

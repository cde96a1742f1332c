"""API tokens: create (the token is shown once), list, revoke."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.pagination import Limit, Page, decode_cursor, page_of
from hangar.auth.rbac import Permission, Role
from hangar.controlplane import apps, mfapolicy, orgs, tokens
from hangar.domain.names import DisplayName, PlainText
from hangar.errors import NotFound, PermissionDenied, ValidationError
from hangar.store.tables import Org, Token

router = GuardedRouter(prefix="/v1/tokens", tags=["tokens"])

MAX_TTL = dt.timedelta(days=366)


class TokenOut(BaseModel):
    id: str
    name: str
    kind: str
    org: str | None
    caveats: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="the token itself; it is shown only in this response")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["user", "org", "app", "readonly"]
    org: Annotated[PlainText, Field(min_length=1, max_length=63)] | None = None
    app: Annotated[PlainText, Field(min_length=1, max_length=63)] | None = None
    expiry_seconds: int | None = Field(default=86400, ge=60, le=int(MAX_TTL.total_seconds()))
    name: DisplayName = Field(
        default="", description="shown in listings; control, zero-width and bidi characters refused"
    )


def _refuse_user_tokens(access: Access, shown: str) -> None:
    """A token bound to an organization or apps does not reach its user's own tokens."""
    scope = access.principal.scope
    if scope.orgs is not None or scope.apps is not None:
        raise access.refuse(
            PermissionDenied(
                "this token is limited to an organization or to apps: your user tokens are "
                "outside it",
                hint="pass --org NAME for the organization's tokens, or use a user token",
            ),
            org=None,
            shown=shown,
        )


def _out(tok: Token, org_names: dict[str, str]) -> TokenOut:
    return TokenOut(
        id=tok.id,
        name=tok.name,
        kind=tok.kind,
        org=org_names.get(tok.org_id) if tok.org_id else None,
        caveats=json.loads(tok.caveats),
        created_at=tok.created_at,
        expires_at=tok.expires_at,
        revoked_at=tok.revoked_at,
    )


@router.get("", response_model=Page[TokenOut], summary="List tokens")
def list_tokens(
    access: Annotated[Access, requires(Permission.TOKENS_READ)],
    org: Annotated[str | None, Query(max_length=63)] = None,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[TokenOut]:
    """Your own user tokens, or an organization's tokens (admins see everyone's)."""
    after = decode_cursor(cursor, str)
    names: dict[str, str] = {}
    org_id = None
    user_id: str | None = access.principal.user_id
    if org is None:
        _refuse_user_tokens(access, "user tokens")
    else:
        target = orgs.find_org(access.cp, org)
        access.check(Permission.TOKENS_READ, org=target, shown=f"organization {org!r}")
        names[target.id] = target.name
        org_id = target.id
        if access.principal.roles.get(target.id) is Role.ADMIN:
            user_id = None  # an admin sees every member's
    rows = tokens.list_tokens(
        access.cp, org_id=org_id, user_id=user_id, after=after, limit=limit + 1
    )
    return page_of(rows, limit, lambda t: _out(t, names), lambda t: t.id)


@router.post("", response_model=TokenCreated, status_code=201, summary="Create a token")
def create_token(
    body: TokenCreate, access: Annotated[Access, requires(Permission.TOKENS_CREATE)]
) -> TokenCreated:
    principal = access.principal
    scope = principal.scope
    # A narrowed token must not mint a wider one: attenuate it instead.
    if not scope.unrestricted_in_org:
        raise access.refuse(
            PermissionDenied(
                "this token is limited to some apps or actions and cannot create tokens",
                hint="narrow it offline with `hangar tokens attenuate`",
            ),
            org=None,
            shown=f"a {body.kind} token",
        )
    ttl = dt.timedelta(seconds=body.expiry_seconds) if body.expiry_seconds else None
    if scope.expires is not None:
        # Nor outlive the token that made it.
        remaining = dt.datetime.fromtimestamp(scope.expires, dt.UTC) - dt.datetime.now(dt.UTC)
        ttl = min(ttl, remaining) if ttl is not None else remaining
    org: Org | None = None
    if body.kind == "user":
        if scope.orgs is not None:
            raise access.refuse(
                PermissionDenied("an organization token cannot create a user token"),
                org=None,
                shown="a user token",
            )
    else:
        org = orgs.named_or_only(
            access.cp,
            body.org,
            principal.visible_orgs(),
            ask="say which organization the token is for",
            hint="pass --org NAME",
        )
        access.check(
            Permission.TOKENS_CREATE, org=org, app=body.app, shown=f"organization {org.name!r}"
        )
        if body.kind == "app":
            if body.app is None:
                raise ValidationError("an app token needs an app", hint="pass --app NAME")
            apps.find_app(access.cp, org, body.app)
    # A token acts as its maker: making one is held to the organization's
    # step-up window (a user token: to the strictest of the maker's organizations).
    strict = org if org is not None else mfapolicy.strictest_org(access.cp, principal.user_id)
    if strict is not None:
        mfapolicy.enforce_step_up(
            access.cp, access.ctx, principal, org=strict, action=access.perm.label
        )
    row, token = tokens.create_token(
        access.cp,
        access.ctx,
        user_id=principal.user_id,
        kind=body.kind,
        org=org,
        app=body.app if body.kind == "app" else None,
        ttl=ttl,
        name=body.name,
    )
    out = _out(row, {org.id: org.name} if org else {})
    return TokenCreated(**out.model_dump(), token=token)


@router.delete("/{token_id}", status_code=204, summary="Revoke a token (takes effect at once)")
def revoke_token(
    token_id: str, access: Annotated[Access, requires(Permission.TOKENS_REVOKE)]
) -> None:
    principal = access.principal
    tok, org = tokens.find_token(access.cp, token_id)
    own = tok.user_id == principal.user_id
    if org is None:
        if not own:
            raise NotFound(f"token {token_id!r} not found")
        _refuse_user_tokens(access, f"token {token_id!r}")
    else:
        access.check(Permission.TOKENS_REVOKE, org=org, shown=f"token {token_id!r}")
        if not own and principal.roles.get(org.id) is not Role.ADMIN:
            raise access.refuse(
                PermissionDenied("only an admin can revoke another member's token"),
                org=org,
                shown=f"token {token_id!r}",
            )
    tokens.revoke_token(access.cp, access.ctx, tok)

"""API tokens: scopes from caveats, minting, authentication and authorization.

A token acts for the user who made it, never with more than that user's role
in an organization, and never with more than its caveats allow. Caveats
understood here (every one present must hold; any other caveat, or one not
written exactly so, makes the whole token invalid)::

    org = <org id>[,<org id>...]   only these organizations
    apps = <name>[,<name>...]      only these apps
    actions = read[,write,...]     only these actions: a write-only token cannot read
    expires = <unix seconds>       not at or after this time
    not-before = <unix seconds>    not before this time
    session = <session id>         a sign-in session's token: valid only while
                                   that session is (see ``auth.sessions``)

The same key may appear again (attenuation appends): lists intersect, the
earliest ``expires`` and the latest ``not-before`` win, so no caveat added can
widen what the ones before it allow. Caveats bind operators too: an operator's
installation-wide powers need a token with no ``org`` and no ``apps`` caveat,
and every permission needs its action in ``actions``.

Authorization failures for objects of an organization the token cannot see
raise ``NotFound``, so an id of another organization reveals nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from hangar.auth.rbac import CONFIGURABLE, NO_ROLE, Action, Grants, Permission, Role
from hangar.crypto.macaroons import Macaroon, TokenKeys
from hangar.domain.names import validate_display_name
from hangar.errors import AuthError, NotFound, PermissionDenied, ValidationError
from hangar.store.tables import Membership, OrgGrant, RootKey, Token, User, UserSession

__all__ = [
    "SESSION_KIND",
    "TOKEN_KINDS",
    "Principal",
    "Scope",
    "TokenService",
    "grants_from_rows",
    "new_id",
    "parse_caveats",
]

TOKEN_KINDS = ("user", "org", "app", "readonly")
# A sign-in session's token: minted only by ``mint_session``, never by `tokens create`.
SESSION_KIND = "session"
ALL_ACTIONS = frozenset(Action)


_AUTH_QUERY = (
    select(
        Token.key_id,
        Token.org_id,
        Token.revoked_at,
        Token.expires_at,
        Token.session_id,
        RootKey.wrapped,
        User.id.label("user_id"),
        User.email,
        User.is_operator,
        User.disabled_at,
        UserSession.expires_at.label("session_expires"),
        UserSession.last_seen_at,
        UserSession.idle_timeout_s,
        UserSession.revoked_at.label("session_revoked"),
        UserSession.mfa_verified_at,
        UserSession.amr,
        Membership.org_id.label("member_org"),
        Membership.role,
        OrgGrant.permission.label("grant_perm"),
        OrgGrant.least_role.label("grant_least"),
    )
    .join(RootKey, RootKey.id == Token.key_id)
    .join(User, User.id == Token.user_id)
    .outerjoin(UserSession, UserSession.id == Token.session_id)
    .outerjoin(Membership, Membership.user_id == User.id)
    # At most one row per configurable permission of each organization.
    .outerjoin(OrgGrant, OrgGrant.org_id == Membership.org_id)
    .where(Token.id == bindparam("token_id"))
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Scope:
    """The intersection of a token's caveats."""

    orgs: frozenset[str] | None = None
    apps: frozenset[str] | None = None
    actions: frozenset[Action] = ALL_ACTIONS
    expires: int | None = None
    not_before: int | None = None
    session: str | None = None

    @property
    def unrestricted_in_org(self) -> bool:
        return self.apps is None and self.actions == ALL_ACTIONS

    def check_time(self, stamp: int) -> None:
        """Raise AuthError unless unix time ``stamp`` is inside the token's window."""
        if self.expires is not None and stamp >= self.expires:
            raise AuthError(
                "the token has expired", hint="run `hangar auth login` with a new token"
            )
        if self.not_before is not None and stamp < self.not_before:
            raise AuthError("the token is not valid yet")


def _narrow(current: frozenset[str] | None, values: frozenset[str]) -> frozenset[str]:
    return values if current is None else current & values


# One caveat: a known key, " = ", a value of visible ASCII. Anything else (a
# look-alike key, a stray control character, a number in another script) is
# refused rather than read generously.
_KEYS = ("org", "apps", "actions", "expires", "not-before", "session")
_CAVEAT = re.compile(r"(org|apps|actions|expires|not-before|session) ?= ?([!-~]{1,1000})")
_ITEM = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_STAMP = re.compile(r"-?[0-9]{1,15}")


def parse_caveats(caveats: tuple[str, ...]) -> Scope:
    """Fold caveats into a Scope; AuthError on anything not understood.

    Each caveat can only narrow: lists intersect with those before them, the
    earliest expiry and the latest not-before win.
    """
    scope = Scope()
    for caveat in caveats:
        match = _CAVEAT.fullmatch(caveat)
        if match is None:
            key = caveat.partition("=")[0].strip()
            if key in _KEYS:
                raise AuthError(f"the token has a malformed caveat {caveat!r}")
            raise AuthError(f"the token has a caveat this server does not know: {key!r}")
        key, value = match.group(1), match.group(2)
        if key in ("expires", "not-before"):
            if not _STAMP.fullmatch(value):
                raise AuthError(f"the token has a malformed caveat {caveat!r}")
            when = int(value)
            if key == "expires":
                expires = when if scope.expires is None else min(when, scope.expires)
                scope = _replace(scope, expires=expires)
            else:
                nb = when if scope.not_before is None else max(when, scope.not_before)
                scope = _replace(scope, not_before=nb)
            continue
        parts = value.split(",")
        if not all(_ITEM.fullmatch(part) for part in parts):
            raise AuthError(f"the token has a malformed caveat {caveat!r}")
        items = frozenset(parts)
        if key == "session":
            # One session, named the same by every caveat that names it.
            if len(items) != 1 or (scope.session is not None and {scope.session} != items):
                raise AuthError("the token is not valid")
            scope = _replace(scope, session=parts[0])
            continue
        if key == "org":
            scope = _replace(scope, orgs=_narrow(scope.orgs, items))
        elif key == "apps":
            scope = _replace(scope, apps=_narrow(scope.apps, items))
        else:
            try:
                acts = frozenset(Action(a) for a in items)
            except ValueError as exc:
                raise AuthError(f"the token has an unknown action in {caveat!r}") from exc
            scope = _replace(scope, actions=scope.actions & acts)
    return scope


def _replace(scope: Scope, **changes: object) -> Scope:
    return Scope(**{**scope.__dict__, **changes})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's user, narrowed by the token's scope."""

    user_id: str
    email: str
    is_operator: bool
    token_id: str
    scope: Scope
    roles: dict[str, Role] = field(default_factory=dict)
    # Each organization's choices for the configurable permissions.
    grants: dict[str, Grants] = field(default_factory=dict)
    # The sign-in session this token stands for; None for API tokens.
    session_id: str | None = None
    # When the session's person last showed a second factor (None: never, or an API token).
    mfa_verified_at: dt.datetime | None = None
    # How the session's person authenticated (RFC 8176 values); empty for API tokens.
    amr: tuple[str, ...] = ()
    # When the session was last seen before this call, and its idle timeout
    # (for ``SessionService.seen``).
    session_seen_at: dt.datetime | None = field(default=None, repr=False, compare=False)
    session_idle_s: int = field(default=0, repr=False, compare=False)

    def visible_orgs(self) -> list[str]:
        """Organizations this token may see at all."""
        return [o for o in self.roles if self.scope.orgs is None or o in self.scope.orgs]

    def check_action(self, perm: Permission) -> None:
        """Raise unless the token's ``actions`` caveat allows ``perm``'s action."""
        if perm.action not in self.scope.actions:
            raise PermissionDenied(
                f"this token does not allow the {perm.action} action ({perm.label})",
                hint="create a token with more actions: `hangar tokens create`",
            )

    def check(self, perm: Permission, *, org_id: str | None, app: str | None = None) -> None:
        """Raise unless this principal may use ``perm`` on the target.

        ``org_id`` is the organization owning the target (None for
        installation-wide actions); ``app`` the app name when one is targeted.
        Every caveat applies, to operators as to anyone.
        """
        self.check_action(perm)
        if perm in _OWN:
            return
        if perm.least_role is None:
            if not self.is_operator or self.scope.orgs is not None or self.scope.apps is not None:
                raise PermissionDenied(f"{perm.label} needs an installation operator's user token")
            return
        if org_id is None:
            raise PermissionDenied(f"{perm.label} needs an organization")
        if org_id not in self.visible_orgs():
            raise NotFound("not found")
        role = self.roles[org_id]
        grants = self.grants.get(org_id, _DEFAULT_GRANTS)
        if not grants.holds(perm, role):
            least = grants.least_role(perm)
            if least is None:
                raise PermissionDenied(
                    f"{perm.label} is granted to no role in this organization",
                    hint="an organization admin grants it: `hangar orgs set ORG --grant ROLE=PERM`",
                )
            raise PermissionDenied(
                f"{perm.label} needs the {least} role here; you are {role}",
            )
        if self.scope.apps is not None:
            if app is None and perm is not Permission.APPS_READ:
                raise PermissionDenied(
                    f"this token is limited to apps {', '.join(sorted(self.scope.apps))}"
                )
            if app is not None and app not in self.scope.apps:
                raise PermissionDenied(f"this token does not cover app {app!r}")


_DEFAULT_GRANTS = Grants()
# Permissions over the caller's own person, not any organization's objects.
_OWN = frozenset({Permission.WHOAMI, Permission.SESSIONS_READ, Permission.SESSIONS_REVOKE})
_CONFIGURABLE_BY_LABEL = {p.label: p for p in CONFIGURABLE}


def _least(value: str) -> Role | None:
    """A stored least role; anything not a role holds nothing (fail closed)."""
    if value == NO_ROLE:
        return None
    try:
        return Role(value)
    except ValueError:
        return None


def grants_from_rows(rows: list[tuple[str, str, str]]) -> dict[str, Grants]:
    """``(org_id, permission, least_role)`` rows as each organization's Grants.

    A row naming a permission that is not configurable changes nothing.
    """
    least: dict[str, dict[Permission, Role | None]] = {}
    for org_id, label, value in rows:
        perm = _CONFIGURABLE_BY_LABEL.get(label)
        if perm is not None:
            least.setdefault(org_id, {})[perm] = _least(value)
    return {org_id: Grants(choices) for org_id, choices in least.items()}


_NO_GRANTS: dict[str, Grants] = {}


@functools.lru_cache(maxsize=1024)
def _grants_cached(rows: tuple[tuple[str, str, str], ...]) -> dict[str, Grants]:
    return grants_from_rows(list(rows))


def _grants_of(rows: tuple[tuple[str, str, str], ...]) -> dict[str, Grants]:
    """Grants from the rows just read; the same rows give the same (shared, unmodified) dict."""
    return _grants_cached(rows) if rows else _NO_GRANTS


@functools.lru_cache(maxsize=4096)
def _decode(token: str) -> tuple[Macaroon, str, str]:
    """A token's macaroon, token id and key id (structure only; not verified)."""
    macaroon = Macaroon.parse(token)
    try:
        ident = json.loads(macaroon.identifier)
        return macaroon, str(ident["tid"]), str(ident["kid"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuthError("the token is malformed") from exc


class TokenService:
    def __init__(self, keys: TokenKeys) -> None:
        self._keys = keys
        # Token string -> its scope, once its signature has verified. A token's
        # caveats and its root key never change, so this only skips repeating
        # the same HMAC chain; revocation and expiry are checked every time.
        self._verified: dict[str, Scope] = {}

    def root_key_for(self, session: Session, org_id: str | None) -> RootKey:
        """The newest root key of an organization (or the user-token key), made if absent."""
        row = session.execute(
            select(RootKey)
            .where(RootKey.org_id.is_(None) if org_id is None else RootKey.org_id == org_id)
            .order_by(RootKey.created_at.desc())
            .limit(1)
        ).scalar_one_or_none()
        if row is None:
            key_id = new_id("key")
            row = RootKey(
                id=key_id,
                org_id=org_id,
                wrapped=self._keys.new_root_key(key_id),
                created_at=_utcnow(),
            )
            session.add(row)
            session.flush()
        return row

    def mint(
        self,
        session: Session,
        *,
        user_id: str,
        kind: str,
        org_id: str | None,
        app: str | None = None,
        ttl: dt.timedelta | None = None,
        name: str = "",
    ) -> tuple[Token, str]:
        """Create a token row and return it with the serialized token (shown once)."""
        if kind not in TOKEN_KINDS:
            raise ValidationError(f"unknown token kind {kind!r}; use one of {TOKEN_KINDS}")
        if kind != "user" and org_id is None:
            raise ValidationError(f"a {kind} token needs an organization")
        if kind == "app" and not app:
            raise ValidationError("an app token needs --app")
        name = validate_display_name(name, what="the token name")
        now = _utcnow()
        expires = now + ttl if ttl is not None else None
        caveats: list[str] = []
        if org_id is not None:
            caveats.append(f"org = {org_id}")
        if kind == "app":
            caveats.append(f"apps = {app}")
        if kind == "readonly":
            caveats.append("actions = read")
        if expires is not None:
            caveats.append(f"expires = {int(expires.timestamp())}")
        key = self.root_key_for(session, org_id if kind != "user" else None)
        token_id = new_id("tok")
        row = Token(
            id=token_id,
            org_id=org_id if kind != "user" else None,
            user_id=user_id,
            key_id=key.id,
            kind=kind,
            name=name or f"{kind} token",
            caveats=json.dumps(caveats),
            created_at=now,
            expires_at=expires,
            revoked_at=None,
        )
        session.add(row)
        identifier = json.dumps({"v": 1, "tid": token_id, "kid": key.id}, separators=(",", ":"))
        macaroon = self._keys.mint(key.id, key.wrapped, identifier, tuple(caveats))
        return row, macaroon.serialize()

    def authenticate(
        self, conn: Connection, token: str, now: dt.datetime | None = None
    ) -> Principal:
        """Verify a serialized token end to end; AuthError on any failure."""
        now = now or _utcnow()
        macaroon, token_id, key_id = _decode(token)
        # One round trip: the token, its user, its root key and the user's roles.
        rows = conn.execute(_AUTH_QUERY, {"token_id": token_id}).all()
        if not rows:
            raise AuthError("the token is not known to this server", hint="run `hangar auth login`")
        first = rows[0]
        if first.key_id != key_id:
            raise AuthError("the token is not valid")
        scope = self._verified.get(token)
        if scope is None:
            scope = parse_caveats(self._keys.verify(macaroon, key_id, first.wrapped))
            if len(self._verified) >= 4096:
                self._verified.clear()
            self._verified[token] = scope
        if first.disabled_at is not None:
            raise AuthError(
                "this user is disabled",
                hint="an installation operator can enable them: `hangar users enable`",
            )
        if first.revoked_at is not None:
            raise AuthError("the token was revoked", hint="create a new one or log in again")
        if first.session_id is not None or scope.session is not None:
            _check_session(first, scope, now)
        expires_at = first.expires_at
        if expires_at is not None and now >= expires_at:
            raise AuthError(
                "the token has expired", hint="run `hangar auth login` with a new token"
            )
        scope.check_time(int(now.timestamp()))
        if first.org_id is not None and (scope.orgs is None or scope.orgs - {first.org_id}):
            # Every organization token is minted with its org caveat; a token
            # whose caveats name another organization is forged or corrupt.
            raise AuthError("the token is not valid")
        roles = {r.member_org: Role(r.role) for r in rows if r.member_org is not None}
        grants = _grants_of(
            tuple(
                (r.member_org, r.grant_perm, r.grant_least)
                for r in rows
                if r.member_org is not None and r.grant_perm is not None
            )
        )
        return Principal(
            user_id=first.user_id,
            email=first.email,
            is_operator=bool(first.is_operator),
            token_id=token_id,
            scope=scope,
            roles=roles,
            grants=grants,
            session_id=first.session_id,
            mfa_verified_at=first.mfa_verified_at,
            amr=_amr(first.amr) if first.session_id is not None else (),
            session_seen_at=first.last_seen_at,
            session_idle_s=first.idle_timeout_s or 0,
        )

    def mint_session(
        self,
        session: Session,
        *,
        user_id: str,
        session_id: str,
        expires_at: dt.datetime,
        org_ids: list[str] | None = None,
    ) -> tuple[Token, str]:
        """The token of sign-in session ``session_id`` (shown once, to whoever signed in).

        It carries ``session = <id>`` and the session's expiry; ``org_ids``, when
        given, limits it to those organizations (the ones whose identity policy
        the sign-in satisfied).
        """
        caveats = [f"session = {session_id}", f"expires = {int(expires_at.timestamp())}"]
        if org_ids is not None:
            caveats.append(f"org = {','.join(sorted(org_ids)) or 'none'}")
        key = self.root_key_for(session, None)
        token_id = new_id("tok")
        row = Token(
            id=token_id,
            org_id=None,
            user_id=user_id,
            key_id=key.id,
            kind=SESSION_KIND,
            name="sign-in session",
            caveats=json.dumps(caveats),
            created_at=_utcnow(),
            expires_at=expires_at,
            revoked_at=None,
            session_id=session_id,
        )
        session.add(row)
        identifier = json.dumps({"v": 1, "tid": token_id, "kid": key.id}, separators=(",", ":"))
        macaroon = self._keys.mint(key.id, key.wrapped, identifier, tuple(caveats))
        return row, macaroon.serialize()


@functools.lru_cache(maxsize=256)
def _amr(text: str | None) -> tuple[str, ...]:
    try:
        values = json.loads(text or "[]")
    except ValueError:
        return ()
    return tuple(str(v) for v in values) if isinstance(values, list) else ()


def _check_session(row: Any, scope: Scope, now: dt.datetime) -> None:
    """Raise AuthError unless the session the token stands for is current.

    A token naming a session must be the token of that very session, and a
    session token must name its session: neither can stand in for the other.
    """
    if row.session_id is None or scope.session != row.session_id:
        raise AuthError("the token is not valid")
    if row.session_revoked is not None:
        raise AuthError("the session has ended (signed out or revoked)", hint=_SIGN_IN)
    if now >= row.session_expires:
        raise AuthError("the session has expired", hint=_SIGN_IN)
    idle = (now - row.last_seen_at).total_seconds()
    if idle > row.idle_timeout_s:
        raise AuthError(
            f"the session was idle for more than {row.idle_timeout_s // 60} minutes "
            "and has ended (automatic logoff)",
            hint=_SIGN_IN,
        )


_SIGN_IN = "sign in again: `hangar auth login`"

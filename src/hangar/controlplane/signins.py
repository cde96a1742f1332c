"""People signing in and out: pending sign-ins, sessions issued and ended (audited)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.auth.oidc import new_pkce_pair, s256
from hangar.auth.policy import IdentityPolicy, load_policies
from hangar.auth.sessions import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LIFETIME,
    IssuedSession,
    SessionService,
)
from hangar.auth.signin import (
    PENDING_LIFETIME,
    SigninContext,
    SigninRefused,
    StepResult,
    complete_step,
    pending_steps,
    proven,
    run_checks,
    step_named,
)
from hangar.auth.tokens import new_id
from hangar.controlplane import idps
from hangar.controlplane.changes import change, record_refusal
from hangar.controlplane.state import ControlPlane
from hangar.domain.names import normalize_email
from hangar.errors import (
    AuthError,
    HangarError,
    NotFound,
    TooManyRequests,
    ValidationError,
    audited,
)
from hangar.store.tables import (
    DeviceCode,
    IdentityProvider,
    Membership,
    OrgPolicyValue,
    PendingSignin,
    User,
    UserIdentity,
    UserSession,
)

__all__ = [
    "MAX_PENDING",
    "Outcome",
    "Started",
    "check_loopback_redirect",
    "digest",
    "end_session",
    "exchange_cli_code",
    "fail",
    "finish_callback",
    "issue_from_pending",
    "limit_keys",
    "pending_for",
    "refuse_when_full",
    "start_signin",
    "step_done",
    "utcnow",
]


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


# ---------------------------------------------------------------- signing in

PURPOSES = ("web", "cli")
CALLBACK_PATH = "/web/callback"
CLI_CODE_LIFETIME = dt.timedelta(minutes=2)
_LOOPBACK_REDIRECT = re.compile(r"^http://(127\.0\.0\.1|\[::1\]|localhost):([0-9]{1,5})/callback$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_CLIENT_STATE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_NEXT = re.compile(r"^/web/[A-Za-z0-9/_-]{0,100}(\?[A-Za-z0-9=&_-]{0,100})?$")


# Sign-ins and device codes waiting at once, installation-wide: a bound on
# what anonymous callers can make the store hold.
MAX_PENDING = 10_000
# ... and from one address, so that one caller cannot fill the installation's
# bound and lock everyone else out of signing in (generous for a shared NAT).
MAX_PENDING_PER_ADDR = 100


def refuse_when_full(
    session: Session, table: type[PendingSignin] | type[DeviceCode], client_addr: str | None
) -> None:
    waiting = session.execute(select(func.count()).select_from(table)).scalar_one()
    if waiting >= MAX_PENDING:
        raise TooManyRequests(
            "too many sign-ins are under way: try again in a few minutes", retry_after=60
        )
    addr = (client_addr or "")[:64] or None
    if addr is None:
        return
    mine = session.execute(
        select(func.count()).select_from(table).where(table.client_addr == addr)
    ).scalar_one()
    if mine >= MAX_PENDING_PER_ADDR:
        raise TooManyRequests(
            f"too many sign-ins are under way from {addr}: finish or wait for some to expire",
            retry_after=60,
        )


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def limit_keys(client_addr: str | None, email: str | None = None) -> list[str]:
    keys = [f"addr:{client_addr or '?'}"]
    if email:
        keys.append(f"user:{email}")
    return keys


def _anon(client_addr: str | None, request_id: str | None = None) -> AuditContext:
    return AuditContext(
        actor="anonymous", token_id=None, request_id=request_id, client_addr=client_addr
    )


def fail(
    cp: ControlPlane,
    ctx: AuditContext,
    *,
    action: str,
    target: str,
    exc: HangarError,
    email: str | None = None,
    org_id: str | None = None,
) -> HangarError:
    """Record a failed sign-in (audit and rate limit); returns ``exc`` to raise."""
    cp.signin_limiter.failed(limit_keys(ctx.client_addr, email))
    record_refusal(
        cp,
        ctx,
        org_id=org_id,
        action=action,
        target=target[:300],
        reason=exc.message,
        outcome="failure",
    )
    return audited(exc)


def check_loopback_redirect(uri: str) -> str:
    """``uri`` if it is the CLI's loopback redirect (http, a loopback host, /callback)."""
    match = _LOOPBACK_REDIRECT.match(uri)
    if match is None or not 1024 <= int(match.group(2)) <= 65535:
        raise ValidationError(
            "the CLI's redirect must be http://127.0.0.1:PORT/callback (a loopback address)"
        )
    return uri


def safe_next(path: str | None) -> str:
    """A page of Hangar's own to go to after signing in; anything else goes home."""
    if path and _NEXT.match(path) and "//" not in path:
        return path
    return "/web/"


@dataclass(frozen=True)
class Started:
    cookie: str  # the pending sign-in's secret, for the __Host- cookie
    url: str  # the identity provider's authorization URL


def start_signin(
    cp: ControlPlane,
    *,
    idp_name: str,
    purpose: str,
    client_addr: str | None,
    cli_redirect: str = "",
    cli_challenge: str = "",
    cli_state: str = "",
    next_page: str = "",
) -> Started:
    """A pending sign-in, and where to send the browser. Validates before writing."""
    cp.signin_limiter.check(limit_keys(client_addr))
    if purpose not in PURPOSES:
        raise ValidationError(f"unknown sign-in purpose {purpose!r}")
    return_to = safe_next(next_page)
    if purpose == "cli":
        check_loopback_redirect(cli_redirect)
        if not _CHALLENGE.match(cli_challenge):
            raise ValidationError("the CLI's PKCE challenge must be an S256 challenge")
        if not _CLIENT_STATE.match(cli_state):
            raise ValidationError("the CLI's state must be 16-128 URL-safe characters")
        return_to = f"{cli_redirect}?state={cli_state}"
    row = idps.find_idp(cp, idp_name)
    provider = idps.provider_config(cp, row)
    cookie = secrets.token_urlsafe(32)
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier, challenge = new_pkce_pair()
    url = cp.oidc.authorization_url(
        provider,
        redirect_uri=cp.settings.effective_public_url + CALLBACK_PATH,
        state=state,
        nonce=nonce,
        code_challenge=challenge,
    )
    now = utcnow()
    with cp.db.write() as session:
        # Pending sign-ins are short-lived: the expired ones go as new ones come,
        # and no more than MAX_PENDING wait at once, whoever starts them.
        session.execute(delete(PendingSignin).where(PendingSignin.expires_at < now))
        refuse_when_full(session, PendingSignin, client_addr)
        session.add(
            PendingSignin(
                id=digest(cookie),
                state=state,
                nonce=nonce,
                code_verifier=verifier,
                idp_id=row.id,
                purpose=purpose,
                return_to=return_to,
                client_challenge=cli_challenge,
                org_hint="",
                user_id=None,
                steps="[]",
                claims="{}",
                client_addr=(client_addr or "")[:64] or None,
                created_at=now,
                expires_at=now + PENDING_LIFETIME,
            )
        )
    return Started(cookie=cookie, url=url)


@dataclass(frozen=True)
class Outcome:
    """Where the browser goes next, and the session cookie to set (web sign-ins)."""

    location: str
    session_token: str | None = None
    session_max_age: int = 0
    # The CLI's loopback redirect: the person confirms it with a click, so a
    # sign-in link someone else made cannot hand a code to a listener of theirs.
    to_cli: bool = False


def _pending(session: Session, cookie: str | None) -> PendingSignin | None:
    if not cookie or len(cookie) > 128:
        return None
    return session.get(PendingSignin, digest(cookie))


def finish_callback(
    cp: ControlPlane,
    *,
    cookie: str | None,
    state: str,
    code: str,
    error: str,
    client_addr: str | None,
    request_id: str | None,
) -> Outcome:
    """The identity provider's redirect back: verify everything, then run the pipeline."""
    ctx = _anon(client_addr, request_id)
    cp.signin_limiter.check(limit_keys(client_addr))
    now = utcnow()
    failure: AuthError | None = None
    with cp.db.write() as session:
        row = _pending(session, cookie)
        if (
            row is None
            or not hmac.compare_digest(row.state.encode(), state.encode()[:64])
            or row.user_id is not None
            or row.done_at is not None
        ):
            # No pending sign-in for this browser, another one's state, or a
            # state already used: a replay, a forged callback or a stale tab.
            failure = AuthError(
                "this sign-in is not valid here (its state does not match)",
                hint="start signing in again",
            )
        elif now >= row.expires_at:
            session.delete(row)
            failure = AuthError("this sign-in has expired", hint="start signing in again")
        else:
            # The state is spent whatever happens next.
            row.state = "used-" + secrets.token_hex(16)
            pending_id, nonce, verifier = row.id, row.nonce, row.code_verifier
            idp_row = session.get(IdentityProvider, row.idp_id)
    if failure is not None:
        raise fail(cp, ctx, action="auth.signin", target="callback", exc=failure)
    if idp_row is None:
        raise AuthError("the identity provider was removed", hint="start signing in again")
    if error or not code:
        raise fail(
            cp,
            ctx,
            action="auth.signin",
            target=idp_row.name,
            exc=AuthError(f"the identity provider refused: {error[:100] or 'no code'}"),
        )
    provider = idps.provider_config(cp, idp_row)
    try:
        tokens = cp.oidc.exchange_code(
            provider,
            code=code[:2048],
            code_verifier=verifier,
            redirect_uri=cp.settings.effective_public_url + CALLBACK_PATH,
        )
        claims = cp.oidc.verify_id_token(provider, tokens.id_token, nonce=nonce)
        wanted = ("email", "email_verified", provider.groups_claim)
        if tokens.access_token and any(k not in claims for k in wanted):
            # Providers may keep the scopes' claims for the UserInfo endpoint.
            extra = cp.oidc.userinfo(provider, tokens.access_token, str(claims["sub"]))
            claims = {**{k: extra[k] for k in wanted if k in extra}, **claims}
    except AuthError as exc:
        raise fail(cp, ctx, action="auth.signin", target=idp_row.name, exc=exc) from None
    return _verified(
        cp, ctx, pending_id, idp_row, provider.groups_claim, claims, tokens.refresh_token
    )


def _groups(claims: dict[str, Any], claim: str) -> list[str]:
    value = claims.get(claim)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return sorted({str(v)[:128] for v in value if isinstance(v, str)})[:256]


def _verified(
    cp: ControlPlane,
    ctx: AuditContext,
    pending_id: str,
    idp_row: IdentityProvider,
    groups_claim: str,
    claims: dict[str, Any],
    refresh_token: str | None,
) -> Outcome:
    """A person the provider vouched for: find (or make) their user, apply policy, go on."""
    raw_email = claims.get("email")
    if not isinstance(raw_email, str) or claims.get("email_verified") is False:
        raise fail(
            cp,
            ctx,
            action="auth.signin",
            target=idp_row.name,
            exc=AuthError("the identity provider gave no verified e-mail address"),
        )
    try:
        email = normalize_email(raw_email)
    except ValidationError as exc:
        raise fail(
            cp,
            ctx,
            action="auth.signin",
            target=idp_row.name,
            exc=AuthError(f"the identity provider's e-mail address: {exc.message}"),
        ) from None
    cp.signin_limiter.check(limit_keys(ctx.client_addr, email))
    groups = _groups(claims, groups_claim)
    now = utcnow()
    try:
        return _verified_in(cp, ctx, pending_id, idp_row, claims, refresh_token, email, groups, now)
    except _Refusal as refusal:
        raise fail(
            cp, ctx, action="auth.signin", target=email, email=email, exc=refusal.exc
        ) from None


class _Refusal(Exception):
    def __init__(self, exc: HangarError) -> None:
        super().__init__(exc.message)
        self.exc = exc


def _verified_in(
    cp: ControlPlane,
    ctx: AuditContext,
    pending_id: str,
    idp_row: IdentityProvider,
    claims: dict[str, Any],
    refresh_token: str | None,
    email: str,
    groups: list[str],
    now: dt.datetime,
) -> Outcome:
    idp_ctx = AuditContext(
        actor=f"idp:{idp_row.name}",
        token_id=None,
        request_id=ctx.request_id,
        client_addr=ctx.client_addr,
    )
    subject = str(claims["sub"])[:255]
    with cp.db.write() as session:
        row = session.get(PendingSignin, pending_id)
        assert row is not None
        identity = session.get(UserIdentity, (idp_row.id, subject))
        user = session.get(User, identity.user_id) if identity is not None else None
        if user is None:
            user = session.execute(select(User).where(User.email == email)).scalar_one_or_none()
            linked_elsewhere = (
                user is not None
                and session.execute(
                    select(UserIdentity.idp_id).where(UserIdentity.user_id == user.id).limit(1)
                ).first()
            )
            if linked_elsewhere and user is not None and user.is_operator:
                # An operator's powers are installation-wide: no organization's
                # sso_idp guards them, so no second provider takes them over by
                # e-mail, verified or not (removing the old provider unlinks).
                raise _Refusal(
                    SigninRefused(
                        f"{email} is an operator who signs in through another identity "
                        "provider; an operator is not linked to a second one by e-mail",
                        hint="sign in through the provider you used before",
                    )
                )
            if linked_elsewhere and claims.get("email_verified") is not True:
                # The person already signs in through another provider: taking
                # over their user by e-mail needs a provider that vouches for
                # the address (some leave unverified addresses unmarked).
                raise _Refusal(
                    SigninRefused(
                        f"{email} signs in through another identity provider, and this one "
                        "does not say the address is verified",
                        hint="sign in through the provider you used before",
                    )
                )
        all_policies = _all_policies(session)
        jit = {
            org_id: role
            for org_id, policy in all_policies.items()
            # Groups are the organization's own provider's only (see auth.policy).
            if (role := policy.role_for_groups(groups)) is not None
            and policy.sso_idp == idp_row.name
            and policy.allows_email(email)
        }
        if user is None and not jit:
            raise _Refusal(
                SigninRefused(
                    f"{email} is not a member of any organization here",
                    hint="ask an organization admin to add you",
                )
            )
        if user is None:
            user = User(id=new_id("usr"), email=email, is_operator=False, created_at=now)
            session.add(user)
            session.flush()
        memberships = {
            m.org_id: m
            for m in session.execute(
                select(Membership).where(Membership.user_id == user.id)
            ).scalars()
        }
        changed_roles: list[tuple[str, str, str | None, str]] = []
        for org_id, role in jit.items():
            current = memberships.get(org_id)
            if current is None:
                current = Membership(
                    org_id=org_id, user_id=user.id, role=role.value, created_at=now
                )
                session.add(current)
                memberships[org_id] = current
                changed_roles.append((org_id, "member.add", None, role.value))
            elif current.role != role.value:
                changed_roles.append((org_id, "member.set_role", current.role, role.value))
                current.role = role.value
        policies = {o: all_policies.get(o, IdentityPolicy()) for o in memberships}
        allowed = [
            o
            for o, p in policies.items()
            if p.sso_idp in ("", idp_row.name) and p.allows_email(email)
        ]
        signin_ctx = SigninContext(
            user_id=user.id,
            email=email,
            idp=idp_row.name,
            claims={k: claims[k] for k in ("amr", "acr", "auth_time") if k in claims},
            groups=groups,
            memberships={o: m.role for o, m in memberships.items()},
            policies=policies,
            purpose=row.purpose,
            disabled=user.disabled_at is not None,
            is_operator=bool(user.is_operator),
        )
        try:
            if not allowed and not user.is_operator:
                raise SigninRefused(
                    f"no organization of {email} accepts a sign-in through {idp_row.name}",
                    hint="an organization's policy names the identity provider and "
                    "e-mail domains it accepts",
                )
            steps = run_checks(signin_ctx)
        except SigninRefused as exc:
            raise _Refusal(exc) from None
        for org_id, action, before, after in changed_roles:
            cp.audit.record(
                session,
                idp_ctx,
                org_id=org_id,
                action=action,
                target=email,
                detail={"from": before, "to": after, "groups": groups, "just_in_time": True},
            )
        if identity is None:
            identity = UserIdentity(
                idp_id=idp_row.id, subject=subject, user_id=user.id, groups="[]", last_signin_at=now
            )
            session.add(identity)
        identity.groups = json.dumps(groups)
        identity.last_signin_at = now
        if refresh_token:
            identity.refresh_token = cp.keyring.wrap(
                refresh_token.encode(), purpose=refresh_purpose(idp_row.id, subject)
            )
        lifetime = min(
            (p.session_lifetime for o, p in policies.items() if o in allowed),
            default=int(DEFAULT_LIFETIME.total_seconds()),
        )
        idle = min(
            (p.idle_timeout for o, p in policies.items() if o in allowed),
            default=int(DEFAULT_IDLE_TIMEOUT.total_seconds()),
        )
        row.user_id = user.id
        row.steps = json.dumps(steps)
        row.claims = json.dumps(
            {
                "email": email,
                "idp": idp_row.name,
                "groups": groups,
                "amr": claims.get("amr") if isinstance(claims.get("amr"), list) else [],
                "acr": claims.get("acr") if isinstance(claims.get("acr"), str) else None,
                "orgs": None if len(allowed) == len(memberships) else sorted(allowed),
                "lifetime": lifetime,
                "idle": idle,
            }
        )
    cp.signin_limiter.succeeded(limit_keys(None, email))
    if steps:
        return Outcome(location=step_named(steps[0]).page)
    return issue_from_pending(
        cp, pending_id, client_addr=ctx.client_addr, request_id=ctx.request_id
    )


def refresh_purpose(idp_id: str, subject: str) -> str:
    return f"idp-refresh-token:{idp_id}:{digest(subject)}"


def _all_policies(session: Session) -> dict[str, IdentityPolicy]:
    org_ids = list(session.execute(select(OrgPolicyValue.org_id).distinct()).scalars())
    return load_policies(session, org_ids)


def pending_for(cp: ControlPlane, cookie: str | None) -> PendingSignin | None:
    """The browser's pending sign-in (by its ``__Host-hangar-signin`` cookie), if current.

    For a sign-in step's page: the person is verified (``user_id`` is set)
    and the sign-in is waiting for its steps.
    """
    with cp.db.read() as session:
        row = _pending(session, cookie)
    if row is None or row.user_id is None or row.done_at is not None or utcnow() >= row.expires_at:
        return None
    return row


def step_done(
    cp: ControlPlane,
    cookie: str | None,
    name: str,
    result: StepResult,
    *,
    client_addr: str | None,
    request_id: str | None,
) -> Outcome:
    """A step's page reports its step done: on to the next step's page, or the session.

    AuthError when the browser has no pending sign-in waiting for ``name``.
    """
    now = utcnow()
    with cp.db.write() as session:
        row = _pending(session, cookie)
        if row is None:
            raise AuthError("this sign-in has expired", hint="sign in again")
        complete_step(session, row, name, result, now)
        remaining, pending_id = pending_steps(row), row.id
    if remaining:
        return Outcome(location=step_named(remaining[0]).page)
    return issue_from_pending(cp, pending_id, client_addr=client_addr, request_id=request_id)


def issue_from_pending(
    cp: ControlPlane, pending_id: str, *, client_addr: str | None, request_id: str | None
) -> Outcome:
    """Every step is done: issue the session to whoever started the sign-in (audited)."""
    now = utcnow()
    with cp.db.write() as session:
        row = session.get(PendingSignin, pending_id)
        if row is None or row.user_id is None or row.done_at is not None or now >= row.expires_at:
            raise AuthError("this sign-in has expired", hint="start signing in again")
        if pending_steps(row):
            raise AuthError("this sign-in still has steps to do")
        user = session.get(User, row.user_id)
        assert user is not None
        claims = json.loads(row.claims)
        done = proven(row)
        ctx = AuditContext(
            actor=user.email, token_id=None, request_id=request_id, client_addr=client_addr
        )
        detail: dict[str, Any] = {
            "idp": claims["idp"],
            "via": row.purpose,
            "orgs": claims.get("orgs"),
            "amr": done.amr,
        }
        if row.purpose == "cli":
            code = secrets.token_urlsafe(32)
            row.cli_code = digest(code)
            row.expires_at = min(row.expires_at, now + CLI_CODE_LIFETIME)
            cp.audit.record(
                session,
                ctx,
                org_id=None,
                action="auth.signin",
                target=user.email,
                detail={**detail, "stage": "cli code issued"},
            )
            return Outcome(location=f"{row.return_to}&code={code}", to_cli=True)
        issued = _issue(cp, session, row, user, claims, done, via="web", client_addr=client_addr)
        row.done_at = now
        ctx = AuditContext(
            actor=user.email,
            token_id=issued.token_id,
            request_id=request_id,
            client_addr=client_addr,
        )
        cp.audit.record(
            session,
            ctx,
            org_id=None,
            action="auth.signin",
            target=user.email,
            detail={**detail, "session": issued.row.id},
        )
        return Outcome(
            location=row.return_to or "/web/",
            session_token=issued.token,
            session_max_age=int(claims["lifetime"]),
        )


def _issue(
    cp: ControlPlane,
    session: Session,
    row: PendingSignin,
    user: User,
    claims: dict[str, Any],
    done: StepResult,
    *,
    via: str,
    client_addr: str | None,
) -> IssuedSession:
    amr = sorted({*(claims.get("amr") or []), *done.amr})
    second_at = json.loads(row.claims).get("_proven", {}).get("second_factor_at")
    return cp.sessions.issue(
        session,
        user_id=user.id,
        idp=str(claims["idp"]),
        lifetime=dt.timedelta(seconds=int(claims["lifetime"])),
        idle_timeout=dt.timedelta(seconds=int(claims["idle"])),
        via=via,
        client_addr=client_addr,
        org_ids=claims.get("orgs"),
        amr=[str(a) for a in amr],
        mfa_verified_at=dt.datetime.fromisoformat(second_at) if second_at else None,
    )


def exchange_cli_code(
    cp: ControlPlane,
    *,
    code: str,
    code_verifier: str,
    client_addr: str | None,
    request_id: str | None,
) -> IssuedSession:
    """The CLI's one-time code and its PKCE verifier, for its session (once)."""
    ctx = _anon(client_addr, request_id)
    cp.signin_limiter.check(limit_keys(client_addr))
    now = utcnow()
    with cp.db.write() as session:
        row = session.execute(
            select(PendingSignin).where(PendingSignin.cli_code == digest(code[:128]))
        ).scalar_one_or_none()
        ok = (
            row is not None
            and row.done_at is None
            and now < row.expires_at
            and row.user_id is not None
            and not pending_steps(row)
            and hmac.compare_digest(
                s256(code_verifier[:128]).encode(), row.client_challenge.encode()
            )
        )
        if not ok or row is None:
            if row is not None and row.done_at is None:
                # A wrong verifier spends the code: whoever tried it does not get another go.
                row.done_at = now
            failure = AuthError(
                "the sign-in code is not valid (used, expired, or its PKCE "
                "verifier does not match)",
                hint="run `hangar auth login` again",
            )
        else:
            user = session.get(User, row.user_id)
            assert user is not None
            claims = json.loads(row.claims)
            issued = _issue(
                cp, session, row, user, claims, proven(row), via="cli", client_addr=client_addr
            )
            row.done_at = now
            cp.audit.record(
                session,
                AuditContext(
                    actor=user.email,
                    token_id=issued.token_id,
                    request_id=request_id,
                    client_addr=client_addr,
                ),
                org_id=None,
                action="auth.signin",
                target=user.email,
                detail={
                    "idp": claims["idp"],
                    "via": "cli",
                    "session": issued.row.id,
                    "orgs": claims.get("orgs"),
                },
            )
            return issued
    raise fail(cp, ctx, action="auth.signin", target="cli code", exc=failure)

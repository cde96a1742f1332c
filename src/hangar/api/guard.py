"""Authentication and authorization as FastAPI dependencies; default deny.

Every API route must depend on exactly one ``Guard`` (it names the route's
permission), ``HostGuard`` (the caller is a joined host, known by its client
certificate), ``WebGuard`` (a web page: the browser's session cookie, if any,
is checked as a bearer token would be) or ``Public`` (it says, visibly, that
the route needs none).
``GuardedRouter`` refuses to register a route that has neither, and
``assert_routes_guarded`` checks a whole app the same way.

A guard authenticates the bearer token (auditing failures), then, when the
path names an ``{org}`` or an ``{app}``, loads it and checks the permission
against it before the handler runs. When the path names neither, it still
checks what it can before the handler: the token's ``actions`` caveat, and
the whole permission for installation-wide (operator) ones; the handler
checks the target it resolves. Objects of an organization the token cannot
see answer 404, exactly as objects that do not exist.

Every refusal is audited: here as it happens, and, for any 401 or 403 that
reaches the API's error handler without having been, by
``audit_unrecorded_refusal`` there, so no refusal path can escape the trail.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import select
from starlette.routing import BaseRoute

from hangar.audit.log import AuditContext
from hangar.auth.rbac import Permission
from hangar.auth.tokens import Principal
from hangar.controlplane import mfapolicy
from hangar.controlplane.changes import record_refusal
from hangar.controlplane.state import ControlPlane
from hangar.crypto.macaroons import Macaroon
from hangar.crypto.peercert import PeerIdentity
from hangar.errors import AuthError, HangarError, NotFound, PermissionDenied, audited
from hangar.store.tables import App, Host, Org
from hangar.telemetry.metrics import API_AUTH_FAILURES

__all__ = [
    "HOST",
    "PEER_CERT_SCOPE_KEY",
    "PUBLIC",
    "WEB",
    "Access",
    "Guard",
    "GuardedRouter",
    "HostAccess",
    "HostGuard",
    "Public",
    "WebAccess",
    "WebGuard",
    "assert_routes_guarded",
    "audit_unrecorded_refusal",
    "iter_routes",
    "requires",
]

# Plain Starlette routes FastAPI adds itself; nothing else may bypass a guard.
PLAIN_ROUTES = frozenset({"/openapi.json"})


def control_plane(request: Request) -> ControlPlane:
    cp = request.app.state.cp
    assert isinstance(cp, ControlPlane)
    return cp


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def audit_context(request: Request, actor: str, token_id: str | None = None) -> AuditContext:
    """The audit context of a request: who acts, with which token, from where."""
    return AuditContext(
        actor=actor,
        token_id=token_id,
        request_id=getattr(request.state, "request_id", None),
        client_addr=_client(request),
    )


def _claimed_token_id(token: str) -> str | None:
    try:
        tid = json.loads(Macaroon.parse(token).identifier).get("tid")
    except (AuthError, ValueError, AttributeError):
        return None
    return tid[:32] if isinstance(tid, str) else None


def authenticate(request: Request, cp: ControlPlane) -> Principal:
    """The caller's principal; every failure is audited on the system chain."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    try:
        if not header:
            raise AuthError(
                "no credentials: send Authorization: Bearer <token>",
                hint="run `hangar auth login`",
            )
        if scheme.lower() != "bearer" or not token:
            raise AuthError("expected Authorization: Bearer <token>")
        with cp.db.connect() as conn:
            principal = cp.tokens.authenticate(conn, token)
        cp.sessions.seen(principal)
        if principal.token_id == cp.break_glass_token_id():
            cp.break_glass_used(
                principal,
                _client(request),
                _target(request),
                getattr(request.state, "request_id", None),
            )
        return principal
    except AuthError as exc:
        API_AUTH_FAILURES.inc()
        record_refusal(
            cp,
            _anonymous(request, token),
            org_id=None,
            action="auth.authenticate",
            target=_target(request),
            reason=exc.message,
            outcome="failure",
        )
        audited(exc)
        raise


@dataclass
class Access:
    """What a guarded handler receives: who is calling, and the checked target."""

    cp: ControlPlane
    principal: Principal
    perm: Permission
    ctx: AuditContext
    org: Org | None = None
    app: App | None = None

    def check(
        self, perm: Permission, *, org: Org | None, app: str | None = None, shown: str = ""
    ) -> None:
        """Raise (after auditing the refusal) unless ``perm`` holds on the target."""
        try:
            self.principal.check(perm, org_id=org.id if org else None, app=app)
        except (PermissionDenied, NotFound) as exc:
            self._record(perm.label, org, shown, exc)
            if isinstance(exc, NotFound):
                raise audited(NotFound(f"{shown or 'object'} not found")) from None
            raise audited(exc) from None

    def check_untargeted(self) -> None:
        """What a guard can check before the handler names a target (audited)."""
        try:
            if self.perm.least_role is None:
                self.principal.check(self.perm, org_id=None)
            else:
                self.principal.check_action(self.perm)
        except PermissionDenied as exc:
            # An installation-wide power goes on the system chain; any other
            # refusal on the chain of the one organization the token reaches,
            # where that organization's admins read it.
            home = None if self.perm.least_role is None else self.home_org()
            self._record_on(home, self.perm.label, "-", exc)
            raise audited(exc) from None

    def refuse(self, exc: PermissionDenied, *, org: Org | None, shown: str) -> PermissionDenied:
        """Audit a refusal a handler decides on itself; returns ``exc`` to raise.

        With no ``org``, it goes on the chain of the one organization the token
        reaches, if it reaches exactly one, else on the system chain.
        """
        org_id = org.id if org else self.home_org()
        self._record_on(org_id, self.perm.label, shown, exc)
        return audited(exc)

    def home_org(self) -> str | None:
        """The one organization this token reaches, if it reaches exactly one."""
        visible = self.principal.visible_orgs()
        return visible[0] if len(visible) == 1 else None

    def _record(self, action: str, org: Org | None, shown: str, exc: HangarError) -> None:
        self._record_on(org.id if org else None, action, shown or (org.name if org else "-"), exc)

    def _record_on(self, org_id: str | None, action: str, target: str, exc: HangarError) -> None:
        with self.cp.db.write() as session:
            self.cp.audit.record(
                session,
                self.ctx,
                org_id=org_id,
                action=action,
                target=target,
                outcome="denied",
                detail={"reason": exc.message},
            )

    def allows(self, perm: Permission, *, org_id: str, app: str | None = None) -> bool:
        """For filtering listings: no audit, no exception."""
        try:
            self.principal.check(perm, org_id=org_id, app=app)
        except HangarError:
            return False
        return True


class Guard:
    """``Depends(Guard(Permission.X))``: the route needs permission X.

    Once the target organization is known, its second-factor policy applies:
    a member without a factor it accepts is refused, and with
    ``step_up=True`` (sensitive actions) so is a credential whose second
    factor is older than the organization's ``step_up_minutes``.
    """

    def __init__(self, perm: Permission, *, step_up: bool = False) -> None:
        self.perm = perm
        self.step_up = step_up

    async def __call__(self, request: Request) -> Access:
        # Runs on the event loop, not in the thread pool: its store reads are
        # single indexed statements of well under a millisecond, and handing
        # them to a worker thread cost more (thread switch and GIL convoy)
        # than running them. Handlers that can run long stay synchronous.
        cp = control_plane(request)
        principal = authenticate(request, cp)
        ctx = audit_context(request, principal.email, principal.token_id)
        access = Access(cp=cp, principal=principal, perm=self.perm, ctx=ctx)
        request.state.hangar_access = access
        params = request.path_params
        if "app" in params:
            name = str(params["app"])
            with cp.db.read() as session:
                row = session.execute(
                    select(App, Org).join(Org, Org.id == App.org_id).where(App.name == name)
                ).one_or_none()
            if row is None:
                raise NotFound(f"app {name!r} not found")
            access.app, access.org = row
            access.check(self.perm, org=access.org, app=name, shown=f"app {name!r}")
        elif "org" in params:
            name = str(params["org"])
            with cp.db.read() as session:
                org = session.execute(select(Org).where(Org.name == name)).scalar_one_or_none()
            if org is None:
                raise NotFound(f"organization {name!r} not found")
            access.org = org
            access.check(self.perm, org=org, shown=f"organization {name!r}")
        else:
            access.check_untargeted()
        if access.org is not None:
            mfapolicy.enforce_member(cp, ctx, principal, access.org)
            if self.step_up:
                mfapolicy.enforce_step_up(
                    cp, ctx, principal, org=access.org, action=self.perm.label
                )
        return access


@dataclass
class WebAccess:
    """What a web page receives: the signed-in person (None when not signed in)."""

    cp: ControlPlane
    principal: Principal | None
    ctx: AuditContext


# The cookie holding a browser's session token (``api/web/frame.py`` sets it).
SESSION_COOKIE = "__Host-hangar-session"


class WebGuard:
    """``Depends(WebGuard())``: a web page; the session cookie, when sent, must be valid.

    Only a sign-in session's own token is accepted from the cookie (an API
    token is not a browser's credential, nor is a session token narrowed
    to some apps or actions). A failed check is audited like a bearer
    token's, and the page sees no one signed in.
    """

    async def __call__(self, request: Request) -> WebAccess:
        cp = control_plane(request)
        token = request.cookies.get(SESSION_COOKIE, "")
        principal: Principal | None = None
        if token:
            try:
                with cp.db.connect() as conn:
                    principal = cp.tokens.authenticate(conn, token)
                if principal.session_id is None:
                    raise AuthError("a web page needs a sign-in session, not an API token")
                scope = principal.scope
                if not scope.unrestricted_in_org or scope.not_before is not None:
                    # A narrowed copy of a session's token (apps, actions) must not
                    # act as the whole person: approving a device, a second factor.
                    raise AuthError("a web page needs a sign-in session's own token")
                cp.sessions.seen(principal)
            except AuthError as exc:
                principal = None
                API_AUTH_FAILURES.inc()
                record_refusal(
                    cp,
                    _anonymous(request, token),
                    org_id=None,
                    action="auth.authenticate",
                    target=_target(request),
                    reason=exc.message,
                    outcome="failure",
                )
        ctx = audit_context(
            request,
            principal.email if principal else "anonymous",
            principal.token_id if principal else None,
        )
        request.state.hangar_audit_ctx = ctx
        return WebAccess(cp=cp, principal=principal, ctx=ctx)


# Where the agent listener's protocol puts the verified client certificate (DER).
PEER_CERT_SCOPE_KEY = "hangar.peer_cert"


@dataclass
class HostAccess:
    """What a host-guarded handler receives: the calling host, known by its certificate."""

    cp: ControlPlane
    host: Host
    ctx: AuditContext


class HostGuard:
    """``Depends(HostGuard())``: the caller is a joined host with a current certificate.

    TLS has already verified the chain to the internal CA, the validity dates
    and client-auth usage; this checks that the certificate is one the store
    still accepts for that host (not removed, not replaced by a renewal).
    """

    async def __call__(self, request: Request) -> HostAccess:
        cp = control_plane(request)
        der = request.scope.get(PEER_CERT_SCOPE_KEY)
        if not isinstance(der, bytes):
            raise AuthError("a host client certificate is required")
        # A malformed certificate's refusal is audited by the error handler.
        peer = PeerIdentity.from_der(der)
        host_id, serial = peer.host_id, peer.serial
        ctx = audit_context(request, f"host:{host_id or '?'}")
        request.state.hangar_audit_ctx = ctx
        with cp.db.read() as session:
            host = session.get(Host, host_id) if host_id else None
        accepted = host is not None and host.state != "removed"
        if host is not None and serial not in (host.cert_serial, host.prev_cert_serial):
            accepted = False
        if not accepted or host is None:
            with cp.db.write() as session:
                cp.audit.record(
                    session,
                    ctx,
                    org_id=None,
                    action="host.authenticate",
                    target=host_id or "-",
                    outcome="denied",
                    detail={"serial": serial, "reason": "certificate not accepted"},
                )
            raise audited(
                PermissionDenied(
                    "this host's certificate is no longer accepted",
                    hint="the host was removed or its certificate replaced; join it again",
                )
            )
        if serial == host.cert_serial and host.prev_cert_serial is not None:
            # The renewed certificate is in use: the one before it is done.
            with cp.db.write() as session:
                row = session.get(Host, host.id)
                if row is not None and row.cert_serial == serial:
                    row.prev_cert_serial = None
        return HostAccess(cp=cp, host=host, ctx=ctx)


def audit_unrecorded_refusal(request: Request, status: int, reason: str) -> None:
    """Record a 401/403 that no guard or service recorded: the error handler's backstop.

    The event goes on the chain of the organization the request was about
    when the guard got that far (or the one organization the token reaches),
    else on the system chain, with the caller as far as they are known
    (anonymous before authentication).
    """
    cp = getattr(request.app.state, "cp", None)
    if not isinstance(cp, ControlPlane):
        return
    access = getattr(request.state, "hangar_access", None)
    ctx = getattr(request.state, "hangar_audit_ctx", None)
    org_id = None
    action = f"http.{status}"
    if isinstance(access, Access):
        ctx, action = access.ctx, access.perm.label
        org_id = access.org.id if access.org else access.home_org()
    if not isinstance(ctx, AuditContext):
        header = request.headers.get("authorization", "")
        ctx = _anonymous(request, header.partition(" ")[2].strip())
    record_refusal(
        cp,
        ctx,
        org_id=org_id,
        action=action,
        target=_target(request),
        reason=reason[:500],
        outcome="failure" if status == 401 else "denied",
        status=status,
    )


def _anonymous(request: Request, token: str) -> AuditContext:
    """The audit context of a caller not (yet) authenticated: the token id it claims, if any."""
    return audit_context(request, "anonymous", _claimed_token_id(token) if token else None)


def _target(request: Request) -> str:
    return f"{request.method} {request.url.path}"[:300]


class Public:
    """``Depends(Public())``: the route deliberately needs no credentials."""

    def __call__(self) -> None:
        return None


def requires(perm: Permission, *, step_up: bool = False) -> Any:
    """The route needs ``perm``; ``step_up``: and a fresh second factor (sensitive actions)."""
    return Depends(Guard(perm, step_up=step_up))


PUBLIC: Any = Depends(Public())
WEB: Any = Depends(WebGuard())
HOST: Any = Depends(HostGuard())


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    for dep in dependant.dependencies:
        yield dep.call
        yield from _calls(dep)


def _check_route(route: APIRoute) -> None:
    markers = [
        c for c in _calls(route.dependant) if isinstance(c, Guard | HostGuard | Public | WebGuard)
    ]
    if len(markers) != 1:
        methods = ",".join(sorted(route.methods or []))
        raise RuntimeError(
            f"route {methods} {route.path} must declare exactly one permission "
            f"(Guard, HostGuard, WebGuard or Public); it declares {len(markers)}"
        )


class GuardedRouter(APIRouter):
    """An APIRouter that will not register a route without a declared permission."""

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)
        route = self.routes[-1]
        assert isinstance(route, APIRoute)
        _check_route(route)


def iter_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, looking inside included routers (which FastAPI nests lazily)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if isinstance(inner, APIRouter):
            yield from iter_routes(inner.routes)
        else:
            yield route


def assert_routes_guarded(app: FastAPI) -> None:
    for route in iter_routes(app.routes):
        if isinstance(route, APIRoute):
            _check_route(route)
        elif getattr(route, "path", None) not in PLAIN_ROUTES:
            raise RuntimeError(
                f"route {getattr(route, 'path', route)!r} is not a guarded API route"
            )

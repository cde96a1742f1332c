"""Web pages for second factors: enrol a security key (``hangar auth factors
add-webauthn``) and step up with one (``hangar auth step-up``).

The CLI asks the API for a one-time link and opens it; the page then acts
with a ``__Host-`` cookie ticket (``controlplane/weblinks.py``), sends its
CSRF token with each request, and calls ``navigator.credentials`` from
``static/factors.js``. These routes are ``Public`` to the guard because the
cookie, not a bearer token, authenticates them: each one checks the ticket,
the CSRF token and the request's origin itself, before anything else.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import Body, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from hangar.api.guard import PUBLIC, GuardedRouter, audit_unrecorded_refusal, control_plane
from hangar.api.web.frame import check_origin, page, security_headers, set_cookie, static_file
from hangar.audit.log import AuditContext
from hangar.controlplane import factors, weblinks
from hangar.controlplane.state import ControlPlane
from hangar.errors import HangarError

router = GuardedRouter(prefix="/web", tags=["web"], include_in_schema=False)

COOKIE = "__Host-hangar-factors"


def _ctx(request: Request, ticket: weblinks.WebTicket) -> AuditContext:
    return AuditContext(
        actor=ticket.principal.email,
        token_id=ticket.principal.token_id,
        request_id=getattr(request.state, "request_id", None),
        client_addr=request.client.host if request.client else None,
    )


def _ticket(request: Request, cp: ControlPlane, *, post: bool, page: str) -> weblinks.WebTicket:
    """The page's ticket; for a POST also its origin and CSRF token (raises on any miss)."""
    if post:
        check_origin(request, cp.settings.effective_public_url)
    found = weblinks.ticket(cp, request.cookies.get(COOKIE), page=page)
    if post:
        weblinks.check_csrf(found, request.headers.get("x-csrf-token"))
    return found


def _json(data: Any, status: int = 200) -> Response:
    return security_headers(JSONResponse(data, status_code=status))


@router.get("/static/{name}", dependencies=[PUBLIC])
def static(name: str) -> Response:
    return static_file(name)


def _landing(request: Request, code: str | None, page_name: str) -> weblinks.WebTicket | Response:
    """A link's first visit (spend the code, set the cookie, drop the code from the address),
    or a later one (the cookie's ticket); an error page if neither is good."""
    cp = control_plane(request)
    try:
        if code is not None:
            cookie, _ = weblinks.open_link(cp, code, page=page_name)
            response: Response = RedirectResponse(f"/web/factors/{page_name}", status_code=303)
            set_cookie(response, COOKIE, cookie, max_age=weblinks.TICKET_SECONDS)
            return security_headers(response)
        return _ticket(request, cp, post=False, page=page_name)
    except HangarError as exc:
        if exc.status in (401, 403):
            audit_unrecorded_refusal(request, exc.status, exc.message)
        return _error_page(exc)


@router.get("/factors/enrol", dependencies=[PUBLIC])
def enrol_page(
    request: Request, code: Annotated[str | None, Query(max_length=100)] = None
) -> Response:
    ticket = _landing(request, code, "enrol")
    if isinstance(ticket, Response):
        return ticket
    email = html.escape(ticket.principal.email)
    body = (
        f"<p>Enrol a security key or passkey for <strong>{email}</strong>.</p>"
        '<form id="enrol"><label for="name">Name</label> '
        '<input id="name" name="name" maxlength="64" value="security key" required> '
        '<button id="enrol-button" type="submit">Enrol a security key</button></form>'
        '<p id="status" role="status"></p>'
    )
    return page("Security key", body, meta={"hangar-csrf": ticket.csrf, "hangar-page": "enrol"})


@router.get("/factors/step-up", dependencies=[PUBLIC])
def step_up_page(
    request: Request, code: Annotated[str | None, Query(max_length=100)] = None
) -> Response:
    ticket = _landing(request, code, "step-up")
    if isinstance(ticket, Response):
        return ticket
    email = html.escape(ticket.principal.email)
    body = (
        f"<p>Confirm it is you, <strong>{email}</strong>, with your security key.</p>"
        '<form id="challenge" data-options="/web/factors/step-up/options" '
        'data-verify="/web/factors/step-up">'
        '<button id="challenge-button" type="submit">Use my security key</button></form>'
        '<p id="status" role="status"></p>'
    )
    return page("Second factor", body, meta={"hangar-csrf": ticket.csrf, "hangar-page": "step-up"})


@router.post("/factors/step-up/options", dependencies=[PUBLIC])
def step_up_options(request: Request) -> Response:
    cp = control_plane(request)
    ticket = _ticket(request, cp, post=True, page="step-up")
    challenge_id, options = factors.begin_assertion(cp, ticket.principal)
    return _json({"challenge_id": challenge_id, "publicKey": options})


@router.post("/factors/step-up", dependencies=[PUBLIC])
def step_up_finish(
    request: Request,
    challenge_id: Annotated[str, Body(max_length=32)],
    credential: Annotated[dict[str, Any], Body()],
) -> Response:
    cp = control_plane(request)
    ticket = _ticket(request, cp, post=True, page="step-up")
    when = factors.step_up(
        cp,
        _ctx(request, ticket),
        ticket.principal,
        method="webauthn",
        challenge_id=challenge_id,
        credential=credential,
    )
    return _json({"verified_at": when.isoformat()})


def _error_page(exc: HangarError) -> Response:
    hint = f"<p>{html.escape(exc.hint)}</p>" if exc.hint else ""
    status = exc.status if 400 <= exc.status < 500 else 500
    return page(
        "Not possible", f'<p id="status">{html.escape(exc.message)}</p>{hint}', status=status
    )


@router.post("/factors/enrol/options", dependencies=[PUBLIC])
def enrol_options(request: Request) -> Response:
    cp = control_plane(request)
    ticket = _ticket(request, cp, post=True, page="enrol")
    challenge_id, options = factors.begin_webauthn(cp, ticket.principal)
    return _json({"challenge_id": challenge_id, "publicKey": options})


@router.post("/factors/enrol", dependencies=[PUBLIC])
def enrol_finish(
    request: Request,
    challenge_id: Annotated[str, Body(max_length=32)],
    credential: Annotated[dict[str, Any], Body()],
    name: Annotated[str, Body(max_length=64)] = "security key",
) -> Response:
    cp = control_plane(request)
    ticket = _ticket(request, cp, post=True, page="enrol")
    row = factors.finish_webauthn(
        cp,
        _ctx(request, ticket),
        ticket.principal,
        challenge_id=challenge_id,
        credential=credential,
        name=name,
    )
    return _json(factors.as_json(row), status=201)

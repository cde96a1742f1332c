"""Web pages for second factors.

* ``/web/factors/enrol``: enrol a security key (``hangar auth factors
  add-webauthn`` opens it) and ``/web/factors/step-up``: step up with one
  (``hangar auth step-up``). The CLI asks the API for a one-time link; the
  page then acts with a ``__Host-`` cookie ticket (``controlplane/weblinks.py``)
  for the CLI's own login.
* ``/web/signin/second-factor``: the sign-in step (``controlplane/signin_factor.py``),
  bound to the pending sign-in's cookie.

These routes are ``Public`` to the guard because a cookie, not a bearer
token, authenticates them: each checks its cookie, and every POST the web
frame's CSRF token and the request's origin, before anything else.
Navigator calls live in ``static/factors.js``; no script runs inline.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Body, Query, Request, Response
from fastapi.responses import JSONResponse

from hangar.api.guard import (
    PUBLIC,
    GuardedRouter,
    audit_context,
    audit_unrecorded_refusal,
    control_plane,
)
from hangar.api.web.frame import (
    PENDING_COOKIE,
    check_csrf,
    csrf_field,
    esc,
    form_fields,
    page,
    redirect,
    security_headers,
    set_cookie,
)
from hangar.api.web.signin import render_outcome
from hangar.audit.log import AuditContext
from hangar.controlplane import factors, signin_factor, stepups, weblinks
from hangar.controlplane.state import ControlPlane
from hangar.errors import HangarError, ValidationError

router = GuardedRouter(prefix="/web", tags=["web"], include_in_schema=False)

COOKIE = "__Host-hangar-factors"
SCRIPTS = ("factors.js",)


def _ctx(request: Request, email: str = "anonymous", token_id: str | None = None) -> AuditContext:
    return audit_context(request, email, token_id)


def _ticket(request: Request, cp: ControlPlane, *, page_name: str) -> weblinks.WebTicket:
    """A POST's ticket, after its CSRF token and origin (raises on any miss)."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    return weblinks.ticket(cp, request.cookies.get(COOKIE), page=page_name)


def _json(data: Any, status: int = 200) -> Response:
    return security_headers(JSONResponse(data, status_code=status))


def _error_page(request: Request, exc: HangarError) -> Response:
    if exc.status in (401, 403) and not exc.audited:
        audit_unrecorded_refusal(request, exc.status, exc.message)
    hint = f"<p class=muted>{esc(exc.hint)}</p>" if exc.hint else ""
    status = exc.status if 400 <= exc.status < 500 else 500
    return page(
        request,
        "Not possible",
        f"<p class=error id=status>{esc(exc.message)}</p>{hint}",
        status=status,
    )


def _landing(request: Request, code: str | None, page_name: str) -> weblinks.WebTicket | Response:
    """A link's first visit (spend the code, set the cookie, drop the code from the
    address), or a later one (the cookie's ticket); an error page if neither is good."""
    cp = control_plane(request)
    try:
        if code is not None:
            cookie, _ = weblinks.open_link(cp, code, page=page_name)
            response = redirect(f"/web/factors/{page_name}")
            set_cookie(response, COOKIE, cookie, max_age=weblinks.TICKET_SECONDS)
            return response
        return weblinks.ticket(cp, request.cookies.get(COOKIE), page=page_name)
    except HangarError as exc:
        return _error_page(request, exc)


Code = Annotated[str | None, Query(max_length=100)]


@router.get("/factors/enrol", dependencies=[PUBLIC], response_model=None)
def enrol_page(request: Request, code: Code = None) -> Response:
    ticket = _landing(request, code, "enrol")
    if isinstance(ticket, Response):
        return ticket
    body = (
        "<p>Enrol a security key or passkey for "
        f"<strong>{esc(ticket.principal.email)}</strong>.</p>"
        '<form id=enrol data-options="/web/factors/enrol/options" '
        'data-verify="/web/factors/enrol">'
        f"{csrf_field(request)}<label for=name>Name</label> "
        '<input id=name name=name maxlength=64 value="security key" required> '
        "<button id=enrol-button type=submit>Enrol a security key</button></form>"
        "<p id=status role=status></p>"
    )
    return page(request, "Security key", body, scripts=SCRIPTS)


@router.post("/factors/enrol/options", dependencies=[PUBLIC])
def enrol_options(request: Request) -> Response:
    cp = control_plane(request)
    ticket = _ticket(request, cp, page_name="enrol")
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
    ticket = _ticket(request, cp, page_name="enrol")
    row = factors.finish_webauthn(
        cp,
        _ctx(request, ticket.principal.email, ticket.principal.token_id),
        ticket.principal,
        challenge_id=challenge_id,
        credential=credential,
        name=name,
    )
    return _json(factors.as_json(row), status=201)


@router.get("/factors/step-up", dependencies=[PUBLIC], response_model=None)
def step_up_page(request: Request, code: Code = None) -> Response:
    ticket = _landing(request, code, "step-up")
    if isinstance(ticket, Response):
        return ticket
    body = (
        f"<p>Confirm it is you, <strong>{esc(ticket.principal.email)}</strong>, "
        "with your security key.</p>"
        '<form id=challenge data-options="/web/factors/step-up/options" '
        f'data-verify="/web/factors/step-up">{csrf_field(request)}'
        "<button id=challenge-button type=submit>Use my security key</button></form>"
        "<p id=status role=status></p>"
    )
    return page(request, "Second factor", body, scripts=SCRIPTS)


@router.post("/factors/step-up/options", dependencies=[PUBLIC])
def step_up_options(request: Request) -> Response:
    cp = control_plane(request)
    ticket = _ticket(request, cp, page_name="step-up")
    challenge_id, options = stepups.begin_assertion(cp, ticket.principal)
    return _json({"challenge_id": challenge_id, "publicKey": options})


@router.post("/factors/step-up", dependencies=[PUBLIC])
def step_up_finish(
    request: Request,
    challenge_id: Annotated[str, Body(max_length=32)],
    credential: Annotated[dict[str, Any], Body()],
) -> Response:
    cp = control_plane(request)
    ticket = _ticket(request, cp, page_name="step-up")
    when = stepups.step_up(
        cp,
        _ctx(request, ticket.principal.email, ticket.principal.token_id),
        ticket.principal,
        method="webauthn",
        challenge_id=challenge_id,
        credential=credential,
    )
    return _json({"verified_at": when.isoformat()})


# --- the sign-in step ---------------------------------------------------------------


@router.get("/signin/second-factor", dependencies=[PUBLIC], response_model=None)
def signin_step(request: Request) -> Response:
    cp = control_plane(request)
    cookie = request.cookies.get(PENDING_COOKIE)
    try:
        passed = signin_factor.finish(cp, _ctx(request), cookie)
        if passed is not None:
            return render_outcome(request, passed)
        found = signin_factor.need(cp, cookie)
    except HangarError as exc:
        return _error_page(request, exc)
    parts = [f"<p>Signing in as <strong>{esc(found.email)}</strong>: show a second factor.</p>"]
    if "webauthn" in found.methods:
        parts.append(
            # The answer is posted as the form itself, so the page that comes back
            # (the session's, or the command line's confirmation) is a page.
            '<form id=challenge method=post action="/web/signin/second-factor/webauthn" '
            'data-options="/web/signin/second-factor/options" data-submit=1>'
            f"{csrf_field(request)}"
            "<input type=hidden name=challenge_id><input type=hidden name=credential>"
            "<button id=challenge-button type=submit>Use my security key</button></form>"
            "<p id=status role=status></p>"
        )
    for method, label in (
        ("totp", "Code from your authenticator app"),
        ("recovery", "Recovery code"),
    ):
        if method in found.methods:
            parts.append(
                f'<form method=post action="/web/signin/second-factor/code">{csrf_field(request)}'
                f'<input type=hidden name=method value="{method}">'
                f"<label for={method}>{label}</label> "
                f"<input id={method} name=code autocomplete=one-time-code maxlength=32 required> "
                f"<button type=submit>Continue</button></form>"
            )
    return page(request, "Second factor", "".join(parts), scripts=SCRIPTS)


@router.post("/signin/second-factor/options", dependencies=[PUBLIC])
def signin_step_options(request: Request) -> Response:
    cp = control_plane(request)
    check_csrf(request, request.headers.get("x-csrf-token"))
    challenge_id, options = signin_factor.begin(cp, request.cookies.get(PENDING_COOKIE))
    return _json({"challenge_id": challenge_id, "publicKey": options})


@router.post("/signin/second-factor/webauthn", dependencies=[PUBLIC], response_model=None)
async def signin_step_webauthn(request: Request) -> Response:
    fields = await form_fields(request)
    check_csrf(request, fields.get("csrf"))
    cp = control_plane(request)
    try:
        try:
            credential = json.loads(fields.get("credential", ""))
        except ValueError:
            raise ValidationError("the security key's answer is not JSON") from None
        outcome = signin_factor.verify(
            cp,
            _ctx(request),
            request.cookies.get(PENDING_COOKIE),
            method="webauthn",
            challenge_id=fields.get("challenge_id", "")[:32],
            credential=credential,
        )
    except HangarError as exc:
        return _error_page(request, exc)
    return render_outcome(request, outcome)


@router.post("/signin/second-factor/code", dependencies=[PUBLIC], response_model=None)
async def signin_step_code(request: Request) -> Response:
    fields = await form_fields(request)
    check_csrf(request, fields.get("csrf"))
    cp = control_plane(request)
    method = fields.get("method", "")
    if method not in ("totp", "recovery"):
        return _error_page(request, HangarError("choose a TOTP or recovery code"))
    try:
        outcome = signin_factor.verify(
            cp,
            _ctx(request),
            request.cookies.get(PENDING_COOKIE),
            method=method,
            code=fields.get("code", ""),
        )
    except HangarError as exc:
        return _error_page(request, exc)
    return render_outcome(request, outcome)

"""Signing in through an identity provider, and approving a device, in the browser."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Query, Request
from fastapi.responses import Response

from hangar.api.guard import PUBLIC, WEB, GuardedRouter, WebAccess
from hangar.api.web.frame import (
    PENDING_COOKIE,
    SESSION_COOKIE,
    check_csrf,
    clear_cookie,
    csrf_field,
    esc,
    form_fields,
    page,
    redirect,
    set_cookie,
)
from hangar.controlplane import devicecodes, idps, signins
from hangar.errors import HangarError

router = GuardedRouter(prefix="/web", tags=["web"], include_in_schema=False)

Text = Annotated[str, Query(max_length=200)]


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _error_page(request: Request, exc: HangarError) -> Response:
    body = f"<p class=error>{esc(exc.message)}</p>"
    if exc.hint:
        body += f"<p class=muted>{esc(exc.hint)}</p>"
    body += '<p><a href="/web/signin">Sign in again</a></p>'
    response = page(request, "Sign-in failed", body, status=exc.status)
    if exc.status == 429 and hasattr(exc, "retry_after"):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


@router.get("/signin", dependencies=[PUBLIC], response_model=None)
def signin(
    request: Request,
    idp: Text = "",
    next: Text = "",
    cli_redirect: Text = "",
    cli_challenge: Text = "",
    cli_state: Text = "",
) -> Response:
    """Choose an identity provider, or (with ``idp``) be sent to it."""
    cp = request.app.state.cp
    if not idp:
        after = esc(quote(signins.safe_next(next), safe="/"))
        items = "".join(
            f'<li><a href="/web/signin?idp={esc(row.name)}&amp;next={after}">'
            f"Sign in with {esc(row.name)}</a></li>"
            for row in idps.list_idps(cp)
        )
        body = (
            f"<ul class=idps>{items}</ul>"
            if items
            else (
                "<p>No identity provider is configured.</p>"
                "<p class=muted>An installation operator adds one: <code>hangar idps add</code></p>"
            )
        )
        return page(request, "Sign in", body)
    try:
        started = signins.start_signin(
            cp,
            idp_name=idp,
            purpose="cli" if cli_redirect else "web",
            client_addr=_client(request),
            cli_redirect=cli_redirect,
            cli_challenge=cli_challenge,
            cli_state=cli_state,
            next_page=next,
        )
    except HangarError as exc:
        return _error_page(request, exc)
    response = redirect(started.url, status=302)
    # Lax: it must come back with the provider's redirect (see frame.py).
    set_cookie(response, PENDING_COOKIE, started.cookie, max_age=600, same_site="lax")
    return response


@router.get("/callback", dependencies=[PUBLIC], response_model=None)
def callback(
    request: Request,
    state: Text = "",
    code: Annotated[str, Query(max_length=2048)] = "",
    error: Text = "",
) -> Response:
    """Where the identity provider sends the browser back."""
    cp = request.app.state.cp
    try:
        outcome = signins.finish_callback(
            cp,
            cookie=request.cookies.get(PENDING_COOKIE),
            state=state,
            code=code,
            error=error,
            client_addr=_client(request),
            request_id=getattr(request.state, "request_id", None),
        )
    except HangarError as exc:
        response = _error_page(request, exc)
        clear_cookie(response, PENDING_COOKIE)
        return response
    return render_outcome(request, outcome)


def render_outcome(request: Request, outcome: signins.Outcome) -> Response:
    """Where a sign-in goes next, as the browser must be sent there.

    To the CLI's loopback redirect: a page whose link the person follows
    (confirming they started it). To a step's page: a redirect. With a
    session: a page of Hangar's own that sets the session cookie and goes on
    (so the next request is same-site and carries the Strict cookie). A
    sign-in step's page (``auth.signin.register_step``) answers with this
    once ``signins.step_done`` returns.
    """
    if outcome.to_cli:
        port = urlsplit(outcome.location).port
        body = (
            "<p>A command-line sign-in (<code>hangar auth login</code>) on this computer is "
            f"waiting on port <code>{esc(port)}</code>.</p>"
            f'<p><a href="{esc(outcome.location)}">Sign in the command line</a></p>'
            "<p class=muted>If you did not just run it, close this page: someone may be "
            "trying to sign in as you.</p>"
        )
        response = page(request, "Sign in the command line", body)
        clear_cookie(response, PENDING_COOKIE)
        return response
    if outcome.session_token is None:
        return redirect(outcome.location, status=303)
    response = page(
        request,
        "Signed in",
        f'<p><a href="{esc(outcome.location)}">Continue</a></p>',
        refresh_to=outcome.location,
    )
    clear_cookie(response, PENDING_COOKIE)
    set_cookie(response, SESSION_COOKIE, outcome.session_token, max_age=outcome.session_max_age)
    return response


@router.get("/device", response_model=None)
def device(request: Request, web: Annotated[WebAccess, WEB], code: Text = "") -> Response:
    """Enter (or confirm) the code a device shows, to let it sign in as you."""
    if web.principal is None:
        target = "/web/device" + (f"?code={devicecodes.normalize_user_code(code)}" if code else "")
        return redirect(f"/web/signin?next={quote(target, safe='/')}")
    try:
        found = devicecodes.find_device(web.cp, web.ctx, web.principal, code) if code else None
    except HangarError as exc:
        return _error_page(request, exc)
    if found is None:
        note = "<p class=error>No device is waiting with that code.</p>" if code else ""
        body = (
            f"{note}<p>Enter the code your device shows.</p>"
            f'<form method=get action="/web/device"><input type=text name=code '
            "autocomplete=off maxlength=9 required> <button type=submit>Next</button></form>"
        )
        return page(request, "Approve a device", body)
    body = (
        f"<p>A device at <code>{esc(found.client_addr or 'unknown address')}</code> asks to sign "
        f"in as <strong>{esc(web.principal.email)}</strong> with the code "
        f"<code>{esc(found.user_code)}</code>.</p><p>Approve only if you started it.</p>"
        f'<form method=post action="/web/device">{csrf_field(request)}'
        f'<input type=hidden name=code value="{esc(found.user_code)}">'
        "<button type=submit name=decision value=approve>Approve</button> "
        "<button type=submit name=decision value=deny>Deny</button></form>"
    )
    return page(request, "Approve a device", body)


@router.post("/device", response_model=None)
async def device_decide(request: Request, web: Annotated[WebAccess, WEB]) -> Response:
    fields = await form_fields(request)
    check_csrf(request, fields.get("csrf"))
    if web.principal is None:
        return redirect("/web/signin?next=/web/device")
    approve = fields.get("decision") == "approve"
    try:
        devicecodes.decide_device(
            web.cp, web.ctx, web.principal, fields.get("code", "")[:16], approve=approve
        )
    except HangarError as exc:
        return _error_page(request, exc)
    text = "The device is signed in: return to it." if approve else "The device was denied."
    return page(request, "Approve a device", f"<p>{esc(text)}</p>")

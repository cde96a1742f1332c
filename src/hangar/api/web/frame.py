"""The frame every web page shares: HTML, headers, cookies, CSRF.

Hangar's web pages are only what a browser must do (sign in, approve a
device, what a second factor needs): server-rendered HTML, no JavaScript
framework. Every page is sent with a strict Content-Security-Policy
(``default-src 'none'``; styles and scripts only from ``/web/static/``;
forms post only to Hangar; no framing), no caching, and no referrer to other sites.

Cookies are ``__Host-`` (Secure, Path=/, no Domain: no other host can set
or read them), HttpOnly and SameSite=Strict, except the pending sign-in's
cookie, which must come back with the identity provider's redirect to the
callback (a top-level navigation from another site) and so is
SameSite=Lax: it is useless without the ``state`` bound to it, and lives
minutes.

Every form carries a CSRF token (``csrf_field``): the value of a random
``__Host-hangar-csrf`` cookie, which another site can neither read nor set;
``check_csrf`` compares the two in constant time and also refuses a request
whose ``Origin`` or ``Sec-Fetch-Site`` says it came from another site.
"""

from __future__ import annotations

import hmac
import html
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from hangar.errors import PermissionDenied, ValidationError

__all__ = [
    "CSRF_COOKIE",
    "PENDING_COOKIE",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "STATIC_DIR",
    "check_csrf",
    "clear_cookie",
    "csrf_field",
    "esc",
    "form_fields",
    "page",
    "redirect",
    "security_headers",
    "set_cookie",
]

SESSION_COOKIE = "__Host-hangar-session"
PENDING_COOKIE = "__Host-hangar-signin"
CSRF_COOKIE = "__Host-hangar-csrf"
STATIC_DIR = Path(__file__).parent / "static"

CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null"
    # on a form post, and the CSRF check could not tell it from another site's.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def security_headers(response: Response) -> Response:
    """The headers every ``/web/`` response carries (the API's middleware adds
    those missing to the ones no page made: errors, 404, 405)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def esc(value: object) -> str:
    """``value`` as HTML text (quotes included): the only way text reaches a page."""
    return html.escape(str(value), quote=True)


def page(
    request: Request,
    title: str,
    body: str,
    *,
    status: int = 200,
    scripts: Iterable[str] = (),
    refresh_to: str | None = None,
) -> HTMLResponse:
    """A whole page: ``body`` is HTML already escaped by the caller (``esc``).

    ``scripts`` are file names under ``/web/static/``; nothing inline runs.
    The response sets the CSRF cookie if the browser has none yet.
    """
    tags = "".join(f'<script src="/web/static/{esc(s)}" defer></script>' for s in scripts)
    if refresh_to is not None:
        # Onward from a page of Hangar's own, so the next request is same-site
        # and carries the SameSite=Strict cookies (a redirect chain that began
        # at the identity provider would not).
        assert refresh_to.startswith("/") and not refresh_to.startswith("//")
        tags += f'<meta http-equiv=refresh content="0;url={esc(refresh_to)}">'
    text = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · Hangar</title>"
        f'<link rel=stylesheet href="/web/static/hangar.css">{tags}</head>'
        f'<body><header><a href="/web/">Hangar</a></header><main><h1>{esc(title)}</h1>'
        f"{body}</main></body></html>\n"
    )
    response = HTMLResponse(text, status_code=status)
    if not request.cookies.get(CSRF_COOKIE):
        # The token the page's forms were given (csrf_field ran first), else a new one.
        set_cookie(response, CSRF_COOKIE, csrf_token(request), max_age=12 * 3600)
    return security_headers(response)  # type: ignore[return-value]


def redirect(location: str, *, status: int = 303) -> RedirectResponse:
    return security_headers(RedirectResponse(location, status_code=status))  # type: ignore[return-value]


def set_cookie(
    response: Response, name: str, value: str, *, max_age: int, same_site: str = "strict"
) -> None:
    assert name.startswith("__Host-")
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=True,
        samesite=same_site,  # type: ignore[arg-type]
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="strict")


def _new_csrf(request: Request) -> str:
    token = secrets.token_urlsafe(32)
    # Pages rendered in the same response (and the forms on them) use this value.
    request.state.hangar_csrf = token
    return token


def csrf_token(request: Request) -> str:
    existing = getattr(request.state, "hangar_csrf", None) or request.cookies.get(CSRF_COOKIE)
    if existing:
        return str(existing)
    return _new_csrf(request)


def csrf_field(request: Request) -> str:
    """The hidden input every form carries."""
    return f'<input type=hidden name=csrf value="{esc(csrf_token(request))}">'


MAX_FORM_BYTES = 8192


async def form_fields(request: Request) -> dict[str, str]:
    """An URL-encoded form's fields (the first value of each); ValidationError otherwise."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ValidationError("expected a form (application/x-www-form-urlencoded)")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ValidationError("the form is too large")
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError("the form is malformed") from exc
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


def check_csrf(request: Request, submitted: str | None) -> None:
    """PermissionDenied unless the form's token matches the cookie and the request is same-site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise PermissionDenied("this form was submitted from another site")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise PermissionDenied("this form was submitted from another site")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not submitted or not hmac.compare_digest(cookie, submitted):
        raise PermissionDenied(
            "this form's CSRF token is missing or wrong", hint="reload the page and try again"
        )

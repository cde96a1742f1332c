"""The frame every web page shares: its HTML shell, strict headers, cookies, static files.

Pages run no inline script and load nothing from elsewhere: the
Content-Security-Policy allows scripts, styles and requests from the API's
own origin only, and no framing. Cookies are ``__Host-`` (Secure, HttpOnly,
SameSite=Strict, Path=/); every form sends the page's CSRF token back, and
every POST must come from the API's own origin.
"""

from __future__ import annotations

import html
from importlib import resources

from fastapi import Request, Response
from fastapi.responses import HTMLResponse

from hangar.errors import PermissionDenied

__all__ = [
    "CSP",
    "STATIC",
    "check_origin",
    "page",
    "security_headers",
    "set_cookie",
    "static_file",
]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC = {"factors.js": "text/javascript", "hangar.css": "text/css"}


def security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return response


def page(
    title: str, body: str, *, meta: dict[str, str] | None = None, status: int = 200
) -> Response:
    """An HTML page; ``body`` is trusted markup, everything interpolated into it escaped first."""
    metas = "".join(
        f'<meta name="{html.escape(k)}" content="{html.escape(v)}">'
        for k, v in (meta or {}).items()
    )
    text = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{metas}<title>{html.escape(title)} · Hangar</title>"
        '<link rel="stylesheet" href="/web/static/hangar.css">'
        '<script src="/web/static/factors.js" defer></script>'
        f"</head><body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>\n"
    )
    return security_headers(HTMLResponse(text, status_code=status))


def set_cookie(response: Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict"
    )


def check_origin(request: Request, origin: str) -> None:
    """Refuse a state-changing request that did not come from the API's own pages."""
    sent = request.headers.get("origin")
    if sent != origin:
        raise PermissionDenied(
            f"this request came from {sent or 'an unnamed origin'!s}, not {origin}",
            hint="use the page the CLI opened",
        )


def static_file(name: str) -> Response:
    kind = STATIC.get(name)
    if kind is None:
        return security_headers(Response("not found\n", status_code=404, media_type="text/plain"))
    data = resources.files("hangar.api.web").joinpath("static", name).read_bytes()
    response = Response(data, media_type=kind)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response

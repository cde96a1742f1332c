"""The web frame's own pages: home, static files, sign out."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Request
from fastapi.responses import FileResponse, Response

from hangar.api.guard import PUBLIC, WEB, GuardedRouter, WebAccess
from hangar.api.web.frame import (
    SESSION_COOKIE,
    STATIC_DIR,
    check_csrf,
    clear_cookie,
    csrf_field,
    esc,
    form_fields,
    page,
    redirect,
    security_headers,
)
from hangar.controlplane import signins
from hangar.errors import NotFound

router = GuardedRouter(prefix="/web", tags=["web"], include_in_schema=False)

_STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\.(css|js)$")
_TYPES = {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8"}


@router.get("/static/{name}", dependencies=[PUBLIC])
def static(name: str) -> Response:
    """A file of ``api/web/static`` (a flat directory: no path in the name)."""
    if not _STATIC_NAME.match(name) or not (STATIC_DIR / name).is_file():
        raise NotFound("no such file")
    response = FileResponse(STATIC_DIR / name, media_type=_TYPES[name.rpartition(".")[2]])
    security_headers(response)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@router.get("/", response_model=None)
def home(request: Request, web: Annotated[WebAccess, WEB]) -> Response:
    if web.principal is None:
        return redirect("/web/signin")
    who = web.principal
    body = (
        f"<p>Signed in as <strong>{esc(who.email)}</strong>.</p>"
        '<p><a href="/web/device">Approve a device sign-in</a></p>'
        f'<form method=post action="/web/signout">{csrf_field(request)}'
        "<button type=submit>Sign out</button></form>"
    )
    return page(request, "Hangar", body)


@router.post("/signout", response_model=None)
async def signout(request: Request, web: Annotated[WebAccess, WEB]) -> Response:
    """End the browser's session (the session itself, not only the cookie)."""
    check_csrf(request, (await form_fields(request)).get("csrf"))
    if web.principal is not None and web.principal.session_id is not None:
        signins.end_session(web.cp, web.ctx, web.principal.user_id, web.principal.session_id)
    response = redirect("/web/signin")
    clear_cookie(response, SESSION_COOKIE)
    return response

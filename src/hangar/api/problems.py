"""RFC 7807 problem responses, from one place.

Also the last line of the audit trail's defence: a 401 or 403 reaching these
handlers that no guard or service wrote to the trail is written here, so a
refusal cannot leave no trace whatever path raised it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from hangar.api.guard import audit_unrecorded_refusal
from hangar.errors import HangarError, TooManyRequests

__all__ = ["PROBLEM_RESPONSES", "Problem", "install_problem_handlers", "problem"]

log = logging.getLogger("hangar.api")
MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """An RFC 7807 problem document, as every error is answered."""

    type: str
    title: str
    status: int
    detail: str
    hint: str | None = None
    request_id: str | None = None
    errors: list[dict[str, str]] | None = None


def _doc(description: str) -> dict[str, Any]:
    return {
        "model": Problem,
        "description": description,
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("The URL holds control, zero-width or bidirectional characters"),
    401: _doc("No valid credentials"),
    403: _doc("Credentials valid, action not allowed"),
    404: _doc("No such object, or not yours"),
    409: _doc("Conflicts with existing data"),
    413: _doc("Request body too large"),
    422: _doc("The request is malformed"),
    429: _doc(
        "Too many failed attempts (sign-ins, second factors): retry after Retry-After seconds"
    ),
    500: _doc("Unexpected server error"),
    503: _doc("The store is unavailable"),
}


def problem(
    request: Request | None,
    status: int,
    title: str,
    detail: str,
    *,
    code: str,
    hint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://hangar.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if hint:
        body["hint"] = hint
    request_id = getattr(request.state, "request_id", None) if request else None
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    headers = {"WWW-Authenticate": 'Bearer realm="hangar"'} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _audit_refusal(request: Request, status: int, reason: str) -> None:
    try:
        audit_unrecorded_refusal(request, status, reason)
    except Exception:
        # The refusal stands either way; the failure to record it is loud.
        log.exception("could not audit a %d refusal", status)


async def _hangar_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HangarError)
    if exc.status >= 500:
        log.error("request failed: %s", exc.message)
    if exc.status in (401, 403) and not exc.audited:
        _audit_refusal(request, exc.status, exc.message)
    response = problem(request, exc.status, exc.title, exc.message, code=exc.code, hint=exc.hint)
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    details = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        message = str(err.get("msg", "invalid"))
        if err.get("type") == "value_error":
            # Hangar's own checks (domain/names.py) name what they refuse;
            # pydantic's "Value error, " prefix adds nothing.
            message = message.removeprefix("Value error, ")
            details.append(message)
        else:
            details.append(f"{loc}: {message}")
        errors.append({"field": loc, "message": message})
    return problem(
        request,
        422,
        "Invalid request",
        details[0] if details else "invalid request",
        code="validation",
        extra={"errors": errors},
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed", 400: "Bad request"}
    title = titles.get(exc.status_code, "Error")
    if exc.status_code in (401, 403):
        _audit_refusal(request, exc.status_code, str(exc.detail))
    return problem(request, exc.status_code, title, str(exc.detail), code=f"http-{exc.status_code}")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Never echo an unexpected exception: it may carry data from the request.
    log.exception("unhandled error")
    return problem(
        request, 500, "Internal error", "the server hit an unexpected error", code="internal"
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HangarError, _hangar_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

"""ASGI middleware: a request id on every response, a cap on body size, plain URLs.

A path or query string holding a control, zero-width, bidirectional or other
invisible character (after percent-decoding) is answered 400 before any
route sees it: no name Hangar stores can hold one (domain/names.py), so such
a URL can only be meant to deceive a log reader or a later parser.

Written as plain ASGI (not BaseHTTPMiddleware) so it costs little per request.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hangar.api.web.frame import SECURITY_HEADERS
from hangar.domain.names import find_invisible
from hangar.errors import PayloadTooLarge

__all__ = ["RequestContextMiddleware"]

# Image uploads (a tar of an OCI layout) have their own, larger cap.
_UPLOAD_PATH = re.compile(r"^/v1/apps/[^/]+/images$")


_WEB_HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        header = request_id.encode()

        path = scope.get("path", "")
        web = path == "/web" or path.startswith("/web/")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", header))
                if web:
                    # Every answer under /web/, errors too, with the pages' headers.
                    present = {name.lower() for name, _ in headers}
                    headers.extend(h for h in _WEB_HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        hidden = _invisible_in_url(scope)
        if hidden is not None:
            await _reject(
                send_with_id,
                request_id,
                400,
                "bad-url",
                "Bad request",
                f"the {hidden[0]} holds U+{ord(hidden[1]):04X}: control, zero-width and "
                "bidirectional characters are not allowed in URLs",
            )
            return
        limit = self.max_body_bytes
        if self.max_upload_bytes and _UPLOAD_PATH.match(scope.get("path", "")):
            limit = max(limit, self.max_upload_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject(
                send_with_id,
                request_id,
                413,
                "payload-too-large",
                "Request body too large",
                f"request body is larger than {limit} bytes",
                close=True,
            )
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            return message

        await self.app(scope, capped_receive, send_with_id)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _invisible_in_url(scope: Scope) -> tuple[str, str] | None:
    """("path" or "query string", the character) for the first invisible one, if any."""
    char = find_invisible(scope.get("path", ""))
    if char is not None:
        return "path", char
    query = scope.get("query_string", b"")
    if query:
        text = unquote_to_bytes(query).decode("utf-8", "replace")
        char = find_invisible(text)
        if char is not None:
            return "query string", char
    return None


async def _reject(
    send: Any,
    request_id: str,
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    close: bool = False,
) -> None:
    body = json.dumps(
        {
            "type": f"https://hangar.dev/problems/{code}",
            "title": title,
            "status": status,
            "detail": detail,
            "request_id": request_id,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

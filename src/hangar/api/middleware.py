"""ASGI middleware: a request id on every response and a cap on body size.

Written as plain ASGI (not BaseHTTPMiddleware) so it costs little per request.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hangar.errors import PayloadTooLarge

__all__ = ["RequestContextMiddleware"]

# Image uploads (a tar of an OCI layout) have their own, larger cap.
_UPLOAD_PATH = re.compile(r"^/v1/apps/[^/]+/images$")


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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", header))
                message["headers"] = headers
            await send(message)

        limit = self.max_body_bytes
        if self.max_upload_bytes and _UPLOAD_PATH.match(scope.get("path", "")):
            limit = max(limit, self.max_upload_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject_too_large(send_with_id, request_id, limit)
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


async def _reject_too_large(send: Any, request_id: str, limit: int) -> None:
    body = json.dumps(
        {
            "type": "https://hangar.dev/problems/payload-too-large",
            "title": "Request body too large",
            "status": 413,
            "detail": f"request body is larger than {limit} bytes",
            "request_id": request_id,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

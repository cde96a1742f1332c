"""Counting the API's requests for Prometheus: by route template, status and latency.

Plain ASGI, outermost, so it also counts what the inner middleware refuses
(an oversized body). The route label is the matched route's template
(``/v1/apps/{app}``), or ``unmatched``: a client sending random paths cannot
grow the number of series.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hangar.telemetry.metrics import API_LATENCY, API_REQUESTS

__all__ = ["MetricsMiddleware"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, *, listener: str) -> None:
        self.app = app
        self.listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app fails before responding

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            method = method if method in _METHODS else "other"
            API_LATENCY.labels(self.listener, method, template).observe(
                time.perf_counter() - started
            )
            API_REQUESTS.labels(self.listener, method, template, str(status)).inc()

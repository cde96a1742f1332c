"""Each app's figures at this host's edge, read from HAProxy's own exporter.

HAProxy serves its Prometheus exporter on a loopback-only listener
(``edge_metrics_port``). Every ``INTERVAL`` seconds the agent of an edge host
reads the backends' figures from it (``?scope=backend``), keeps those of the
apps' HTTP backends (``app_<name>``) and a few figures of each, renamed
``hangar_edge_*`` and labelled with the app's name alone, and ships them up
through the link. The control plane files them under the app as its store
knows it, for that app's organization only, and only from a host joined as
an edge.

The exporter is HAProxy on this host, not a tenant: the read has a short
deadline and a cap on its size, and a failure ships nothing (the figures
of the last read go stale on the control plane).
"""

from __future__ import annotations

import http.client
import logging
import re
import time
from collections.abc import Callable

from hangar.domain.routing import http_backend

__all__ = ["FIGURES", "INTERVAL", "EdgeMetrics", "edge_texts"]

log = logging.getLogger("hangar.agent")

INTERVAL = 15.0  # seconds between two reads of the exporter
READ_SECONDS = 3.0
MAX_BODY = 8 << 20  # bytes read from the exporter

# HAProxy's backend figure -> (Hangar's name, type, help).
FIGURES: dict[str, tuple[str, str, str]] = {
    "haproxy_backend_http_requests_total": (
        "hangar_edge_http_requests",
        "counter",
        "HTTP requests the edge passed to the app.",
    ),
    "haproxy_backend_http_responses_total": (
        "hangar_edge_http_responses",
        "counter",
        "HTTP responses the edge sent for the app, by status class (code: 1xx..5xx, other).",
    ),
    "haproxy_backend_bytes_in_total": (
        "hangar_edge_bytes_in",
        "counter",
        "Bytes the edge received from clients for the app.",
    ),
    "haproxy_backend_bytes_out_total": (
        "hangar_edge_bytes_out",
        "counter",
        "Bytes the edge sent to clients for the app.",
    ),
    "haproxy_backend_current_sessions": (
        "hangar_edge_current_sessions",
        "gauge",
        "Connections open through the edge to the app now.",
    ),
    "haproxy_backend_response_time_average_seconds": (
        "hangar_edge_response_time_average_seconds",
        "gauge",
        "The app's average response time over its last 1024 requests at the edge.",
    ),
}
_LINE = re.compile(
    r'^(haproxy_backend_[a-z_]+)\{proxy="([^"\\]*)"(?:,code="([0-9a-z]+)")?\} (\S+)$'
)
_PREFIX = http_backend("")


def edge_texts(exposition: str) -> dict[str, str]:
    """Each app's figures from the exporter's text, as exposition text labelled ``app``."""
    rows: dict[str, dict[str, list[str]]] = {}
    for line in exposition.splitlines():
        found = _LINE.match(line)
        if found is None:
            continue
        source, proxy, code, value = found.groups()
        figure = FIGURES.get(source)
        if figure is None or not proxy.startswith(_PREFIX) or len(proxy) == len(_PREFIX):
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        app = proxy[len(_PREFIX) :]
        name, kind, _ = figure
        sample = name + ("_total" if kind == "counter" else "")
        labels = f'app="{app}"' + (f',code="{code}"' if code else "")
        rows.setdefault(app, {}).setdefault(source, []).append(f"{sample}{{{labels}}} {number}")
    texts = {}
    for app, by_source in rows.items():
        lines = []
        for source, samples in by_source.items():
            name, kind, text = FIGURES[source]
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples]
        texts[app] = "\n".join(lines) + "\n"
    return texts


def read_exporter(port: int) -> str:
    """The exporter's backend figures; OSError (or HTTPException) if it does not answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_SECONDS)
    try:
        conn.request("GET", "/metrics?scope=backend")
        answer = conn.getresponse()
        if answer.status != 200:
            raise OSError(f"the edge's exporter answered {answer.status}")
        body = answer.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise OSError(f"the edge's exporter sent more than {MAX_BODY} bytes")
        return body.decode("utf-8", errors="replace")
    finally:
        conn.close()


class EdgeMetrics:
    """Reads the edge's exporter every ``INTERVAL``; ``take`` hands each app's figures over."""

    def __init__(
        self,
        port: int,
        clock: Callable[[], float] = time.time,
        read: Callable[[int], str] = read_exporter,
    ) -> None:
        self.port = port
        self.clock = clock
        self.read = read
        self._last = -float("inf")

    def take(self) -> dict[str, tuple[float, str]]:
        """Each app's figures if a read is due and succeeds: app name -> (when, text)."""
        now = self.clock()
        if now - self._last < INTERVAL:
            return {}
        self._last = now
        try:
            text = self.read(self.port)
        except (OSError, http.client.HTTPException) as exc:
            log.info("edge metrics not read: %s", exc)
            return {}
        return {app: (now, figures) for app, figures in edge_texts(text).items()}

"""The edge's access logs: one line a request, kept per app, without query strings.

HAProxy sends a line a request (``FORMAT``, raw, no syslog header) to a
unix datagram socket in the edge's private directory; ``AccessLog`` reads
them and appends each to its app's log (``AGENT_DIR/access/<app>.log``,
rotated by size), attributed by the backend that served it (``app_<name>``).
Requests no app served (a 404 for an unknown name, a redirect to HTTPS,
an ACME challenge) belong to no app and are not kept.

The path is logged without its query string: query strings may carry
personal or health data. HAProxy's ``%HPO`` is the path alone; the parser
also cuts at a ``?`` so that no line written here can hold one. HAProxy
drops lines while no one reads the socket (the agent restarting): access
logs are best effort, unlike machines' output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

from hangar.domain.routing import http_backend
from hangar.telemetry.logfiles import RotatingLog

__all__ = ["FORMAT", "SOCKET", "AccessLog", "access_log_path", "parse"]

log = logging.getLogger("hangar.edge")

SOCKET = "access.sock"
TAG = "hangar-access"
# The client, the backend, status, bytes sent, total time (ms), method, then the path
# without query string, last because it is the one field that is not a single token.
FORMAT = f"{TAG} %ci %b %ST %B %Tt %HM %HPO"
PREFIX = http_backend("")
MAX_LINE = 8192
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def access_log_path(agent_dir: Path, app: str) -> Path:
    return agent_dir / "access" / f"{app}.log"


def parse(datagram: bytes) -> tuple[str, dict[str, Any]] | None:
    """(app, record) from one of HAProxy's lines, or None for one that is no app's."""
    text = datagram.decode(errors="replace").rstrip("\n")
    parts = text.split(" ", 7)
    if len(parts) != 8 or parts[0] != TAG or not parts[2].startswith(PREFIX):
        return None
    _, client, backend, status, size, millis, method, path = parts
    app = backend[len(PREFIX) :]
    if not NAME.fullmatch(app):
        return None
    path = path.split("?", 1)[0].split("#", 1)[0]  # never a query string, whatever HAProxy sent
    line = f"{client} {method} {path} {status} {size} {millis}ms"
    when = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    return app, {"ts": when, "stream": "access", "line": line}


class AccessLog:
    """Reads HAProxy's access lines from ``socket_path`` into per-app logs under ``agent_dir``."""

    def __init__(self, socket_path: Path, agent_dir: Path) -> None:
        self.socket_path = socket_path
        self.agent_dir = agent_dir
        self._logs: dict[str, RotatingLog] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Bind the socket (0600: only HAProxy, as root, writes to it) and start reading."""
        if self._thread is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.socket_path))
        finally:
            os.umask(old)
        (self.agent_dir / "access").mkdir(parents=True, exist_ok=True, mode=0o700)
        sock.settimeout(0.5)  # to see ``close`` ask it to stop
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hangar-access-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            try:
                datagram = sock.recv(MAX_LINE)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            if not datagram:
                continue
            try:
                self.take(datagram)
            except (OSError, ValueError) as exc:
                log.warning("edge access log: %s", exc)

    def take(self, datagram: bytes) -> None:
        parsed = parse(datagram)
        if parsed is None:
            return
        app, record = parsed
        if app not in self._logs:
            self._logs[app] = RotatingLog(access_log_path(self.agent_dir, app))
        self._logs[app].write_record(record)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        for opened in self._logs.values():
            opened.close()
        self._logs.clear()
        self._sock, self._thread = None, None

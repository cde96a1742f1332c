"""Hangar's own logs: one JSON object a line, and shipped to the operator's sink.

``configure_logging`` sets up the root logger of ``hangar server run`` and
``hangar agent run``: text (``time LEVEL logger: message``) or JSON, one
object a line (``time``, ``level``, ``logger``, ``message``, and ``exc``
with the traceback when there is one).

``OwnLogShipper`` ships the same records to one sink the operator names in
the server's (or the agent's) settings. These are the installation's logs:
they may mention any organization, so they go to the operator's sink only,
never to an organization's. A logging handler puts each record on a bounded
queue (it never blocks the code that logs; what overflows is counted); a
thread moves the queue into a disk buffer (``SinkBuffer``, ``fsync``ed)
and pushes its oldest records, with the organizations' sinks' drivers and
backoff (1 s doubling to 60 s). Records dropped by the queue or the
buffer's cap are counted in one record shipped after them. Lines logged by
the shipping thread itself (its HTTP client's, its own warnings) are not
shipped: each push would otherwise make another line to push.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from hangar.errors import ConfigError, HangarError
from hangar.telemetry.sinkbuffer import SinkBuffer
from hangar.telemetry.sinks import DRIVERS, Credential, LogSink, Partial, SinkError, driver_for

__all__ = ["JsonFormatter", "OwnLogShipper", "OwnLogSink", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUEUE_MAX = 10_000
BATCH = 500
BACKOFF_MAX = 60.0
# Which scheme a credential file stands for, by sink kind.
SCHEMES = {"splunk-hec": "splunk", "elasticsearch": "apikey"}

log = logging.getLogger("hangar.ownlogs")
_shipping = threading.local()


def _when(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="microseconds")


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line; newlines in it stay escaped."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _when(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class OwnLogSink:
    """The operator's sink for the installation's own logs, as settings name it."""

    kind: str
    url: str
    credential_file: Path | None = None
    index: str | None = None

    def driver(self) -> LogSink:
        if self.kind not in DRIVERS:
            raise ConfigError(f"own_log_sink_kind {self.kind!r} is not one of {sorted(DRIVERS)}")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https", "tls") or not parts.hostname:
            raise ConfigError(f"own_log_sink_url {self.url!r} is not an http(s) or tls:// URL")
        if parts.username or parts.password or parts.query:
            raise ConfigError(
                "own_log_sink_url is a base URL without credentials or query",
                hint="put a token or API key in own_log_sink_credential_file",
            )
        credential = None
        if self.credential_file is not None:
            try:
                secret = self.credential_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read own_log_sink_credential_file {self.credential_file}: {exc}"
                ) from exc
            if self.kind not in SCHEMES:
                raise ConfigError(f"a {self.kind} sink takes no credential")
            if not secret:
                raise ConfigError(f"{self.credential_file} is empty")
            credential = Credential(SCHEMES[self.kind], secret)
        elif self.kind == "splunk-hec":
            raise ConfigError("a splunk-hec sink needs own_log_sink_credential_file (its token)")
        return driver_for(self.kind, self.url, credential, self.index)


class _Handler(logging.Handler):
    def __init__(self, shipper: OwnLogShipper) -> None:
        super().__init__()
        self.shipper = shipper
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(_shipping, "active", False):
            return  # logged while shipping (its HTTP client's lines): each would make another
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.shipper.offer({"ts": _when(record.created), "line": line})


class OwnLogShipper:
    """Ships this process's log records to the operator's sink, at least once."""

    def __init__(
        self,
        sink: OwnLogSink,
        directory: Path,
        *,
        component: Literal["hangar-server", "hangar-agent"],
        host: str = "",
        buffer_bytes: int = 64 << 20,
        interval: float = 1.0,
    ) -> None:
        self.driver = sink.driver()  # refuses a bad sink before anything starts
        self.buffer = SinkBuffer(directory, buffer_bytes)
        self.component = component
        self.host = host or socket.gethostname()
        self.interval = interval
        self.queue: queue.Queue[dict[str, str]] = queue.Queue(QUEUE_MAX)
        self.handler = _Handler(self)
        self._overflow = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self._retry_at = 0.0

    def offer(self, record: dict[str, str]) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self._overflow += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hangar-own-logs", daemon=True)
        self._thread.start()
        logging.getLogger().addHandler(self.handler)

    def stop(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.round()  # what was logged while stopping, as far as the sink takes it
        close = getattr(self.driver, "close", None)
        if callable(close):
            close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.round()
            except (HangarError, OSError) as exc:
                log.warning("own log sink: %s", getattr(exc, "message", exc))

    def _record(self, ts: str, line: str) -> dict[str, str]:
        return {
            "ts": ts,
            "org": "",
            "app": self.component,
            "machine": self.host,
            "stream": "hangar",
            "line": line,
        }

    def round(self) -> None:
        """Move what was logged into the buffer, then push it while the sink takes it."""
        _shipping.active = True
        try:
            self._round()
        finally:
            _shipping.active = False

    def _round(self) -> None:
        taken: list[dict[str, str]] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            taken.append(self._record(item["ts"], item["line"]))
        with self._lock:
            overflow, self._overflow = self._overflow, 0
        dropped = overflow + self.buffer.take_dropped()
        if dropped:
            now = _when(time.time())
            note = {"time": now, "level": "warning", "logger": "hangar.ownlogs"}
            note["message"] = f"{dropped} log records dropped before shipping (buffer full)"
            taken.append(self._record(now, json.dumps(note, separators=(",", ":"))))
        if taken:
            self.buffer.append(taken)
        if time.monotonic() < self._retry_at:
            return
        while batch := self.buffer.peek(BATCH):
            try:
                partial = self.driver.push(batch) or Partial()
            except SinkError as exc:
                if not exc.retry:
                    log.warning("own log sink refused %d records: %s", len(batch), exc.message)
                    self.buffer.ack(len(batch))
                    continue
                self.failures += 1
                delay = min(BACKOFF_MAX, 2.0 ** (self.failures - 1))
                self._retry_at = time.monotonic() + delay
                log.warning("own log sink: %s; retrying in %.0f s", exc.message, delay)
                return
            if partial.retry:
                # Send the whole batch again: duplicates are allowed, losses are not.
                self.failures += 1
                self._retry_at = time.monotonic() + min(BACKOFF_MAX, 2.0 ** (self.failures - 1))
                return
            self.buffer.ack(len(batch))
            self.failures = 0


class _Console(logging.StreamHandler):  # type: ignore[type-arg]
    """Standard error, as ``configure_logging`` set it up."""


def configure_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """The root logger of a Hangar process: ``level``, as text or one JSON object a line."""
    handler = _Console()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Console):  # configured before: replaced, not doubled
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

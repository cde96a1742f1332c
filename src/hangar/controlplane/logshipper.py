"""Shipping organizations' machines' output to their log sinks, at least once.

One round, for each sink: read the organization's machines' new output
(from a cursor per machine: a position in its log's files, which survives
rotation), append it to the sink's disk buffer (``fsync``ed)
and only then move the cursors on; then push the buffer's oldest records
to the sink in order and forget them once it accepted them. A sink that is
down, or answers 429 or 5xx, is retried with exponential backoff (1 s to
60 s) and loses nothing while the buffer has room. Records dropped by the
buffer's cap, or refused by the sink for good, are counted exactly: a
metric and an audit event (``logs.sink.dropped``) per round that dropped
any. A restarted control plane resumes from the buffer and the cursors;
what a crash interrupted may be sent twice, never lost.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hangar.audit.log import AuditContext
from hangar.controlplane.background import BackgroundLoop
from hangar.controlplane.logs import log_sources
from hangar.controlplane.logsinks import check_sink_url
from hangar.controlplane.state import ControlPlane
from hangar.errors import HangarError
from hangar.store.tables import App, LogSinkRow, Org
from hangar.telemetry.metrics import LOG_SINK_DROPPED, LOG_SINK_FAILURES, LOG_SINK_SHIPPED
from hangar.telemetry.sinkbuffer import SinkBuffer
from hangar.telemetry.sinks import LogSink, SinkError, driver_for

__all__ = ["SHIPPER", "LogShipper"]

log = logging.getLogger("hangar.logs")
SHIPPER = AuditContext(actor="log-shipper", token_id=None, request_id=None, client_addr=None)
BATCH = 500  # records a push
BACKOFF_MAX = 60.0
PUSH_BUDGET = 5.0  # seconds of pushing per sink a round, so one busy sink cannot hold the rest
READ_BUDGET = 4 << 20  # bytes of one machine's output read per round

Cursor = dict[str, int]  # {"inode": …, "offset": …}: see telemetry.logfiles.read_since


@dataclass
class _Sink:
    id: str
    org_id: str
    org: str
    url: str
    driver: LogSink
    buffer: SinkBuffer
    cursors_file: Path
    cursors: dict[str, Cursor | None] = field(default_factory=dict)
    failures: int = 0
    retry_at: float = 0.0


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class LogShipper(BackgroundLoop):
    def __init__(
        self, cp: ControlPlane, interval: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__("hangar-log-shipper", interval)
        self.cp = cp
        self.clock = clock
        self.root = cp.data_dir / "log-sinks"
        self._sinks: dict[str, _Sink] = {}

    def _open(self, row: LogSinkRow, org: str) -> _Sink:
        directory = self.root / row.id
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cursors_file = directory / "cursors.json"
        cursors = json.loads(cursors_file.read_text()) if cursors_file.exists() else {}
        return _Sink(
            row.id,
            row.org_id,
            org,
            row.url,
            driver_for(row.kind, row.url),
            SinkBuffer(directory / "buffer", self.cp.settings.log_sink_buffer_bytes),
            cursors_file,
            cursors,
        )

    def _refresh(self) -> None:
        with self.cp.db.read() as session:
            rows = session.execute(select(LogSinkRow, Org.name).join(Org)).all()
        wanted = {row.id: (row, org) for row, org in rows}
        for gone in set(self._sinks) - set(wanted):
            del self._sinks[gone]
            shutil.rmtree(self.root / gone, ignore_errors=True)
        for sink_id, (row, org) in wanted.items():
            if sink_id not in self._sinks:
                self._sinks[sink_id] = self._open(row, org)
        if self.root.is_dir():
            for leftover in self.root.iterdir():  # removed while the server was down
                if leftover.name not in wanted:
                    shutil.rmtree(leftover, ignore_errors=True)

    def round(self) -> float | None:
        self._refresh()
        now = self.clock()
        for sink in list(self._sinks.values()):
            try:
                self._gather(sink)
                if now >= sink.retry_at:
                    self._push(sink)
            except (HangarError, OSError) as exc:
                log.warning("log sink %s: %s", sink.id, getattr(exc, "message", exc))
            self._report_dropped(sink, sink.buffer.take_dropped(), "buffer_full")
        return None

    def _gather(self, sink: _Sink) -> None:
        """The organization's machines' new output, into the sink's buffer."""
        with self.cp.db.read() as session:
            apps = list(session.execute(select(App).where(App.org_id == sink.org_id)).scalars())
        taken: list[dict[str, Any]] = []
        cursors = dict(sink.cursors)
        for app in apps:
            for source in log_sources(self.cp, app):
                try:
                    fresh, cursors[source.machine_id] = source.read_since(
                        sink.cursors.get(source.machine_id), READ_BUDGET
                    )
                except (HangarError, OSError, ValueError):
                    continue
                taken += [
                    {
                        "ts": r["ts"],
                        "org": sink.org,
                        "app": app.name,
                        "machine": source.machine_id,
                        "stream": r.get("stream", "stdout"),
                        "line": r.get("line", ""),
                    }
                    for r in fresh
                ]
        if not taken:
            return
        sink.buffer.append(taken)  # durable before the cursors move past it
        sink.cursors = cursors
        _save(sink.cursors_file, cursors)

    def _push(self, sink: _Sink) -> None:
        deadline = time.monotonic() + PUSH_BUDGET
        while time.monotonic() < deadline:
            batch = sink.buffer.peek(BATCH)
            if not batch:
                return
            try:
                check_sink_url(sink.url, self.cp.settings.allowed_log_sink_hosts)
                sink.driver.push(batch)
            except SinkError as exc:
                if not exc.retry:
                    log.warning("log sink %s refused %d records: %s", sink.id, len(batch), exc)
                    sink.buffer.ack(len(batch))
                    self._report_dropped(sink, len(batch), "refused", exc.message)
                    continue
                self._backoff(sink, exc.message)
                return
            except HangarError as exc:  # its address no longer passes
                self._backoff(sink, exc.message)
                return
            sink.buffer.ack(len(batch))
            sink.failures, sink.retry_at = 0, 0.0
            LOG_SINK_SHIPPED.labels(sink.org_id, sink.id).inc(len(batch))

    def _backoff(self, sink: _Sink, reason: str) -> None:
        sink.failures += 1
        delay = min(BACKOFF_MAX, 2.0 ** (sink.failures - 1))
        sink.retry_at = self.clock() + delay
        LOG_SINK_FAILURES.labels(sink.org_id, sink.id).inc()
        log.warning("log sink %s: %s; retrying in %.0f s", sink.id, reason, delay)

    def _report_dropped(self, sink: _Sink, count: int, reason: str, detail: str = "") -> None:
        if count <= 0:
            return
        LOG_SINK_DROPPED.labels(sink.org_id, sink.id, reason).inc(count)
        with self.cp.db.write() as session:
            self.cp.audit.record(
                session,
                SHIPPER,
                org_id=sink.org_id,
                action="logs.sink.dropped",
                target=sink.id,
                outcome="failure",
                detail={"count": count, "reason": reason, **({"error": detail} if detail else {})},
            )

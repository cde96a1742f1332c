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

The organization's audit trail goes the same way, from the event that
added the sink on: each event in its chain's order (stream ``audit``,
the event as JSON in the line), behind the same buffer and drop counts.

A sink that takes part of a batch (``Partial``) is sent only what it did
not take, until it has taken all of it; what it refused for good is
counted and audited as dropped (reason ``refused``).
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

from hangar.audit.log import AuditContext, chain_for
from hangar.controlplane.background import BackgroundLoop
from hangar.controlplane.logs import log_sources
from hangar.controlplane.logsinks import check_sink_url, sink_credential
from hangar.controlplane.state import ControlPlane
from hangar.errors import HangarError
from hangar.store.tables import App, AuditEvent, LogSinkRow, Org
from hangar.telemetry.metrics import LOG_SINK_DROPPED, LOG_SINK_FAILURES, LOG_SINK_SHIPPED
from hangar.telemetry.sinkbuffer import SinkBuffer
from hangar.telemetry.sinks import LogSink, Partial, SinkError, driver_for

__all__ = ["SHIPPER", "LogShipper"]

log = logging.getLogger("hangar.logs")
SHIPPER = AuditContext(actor="log-shipper", token_id=None, request_id=None, client_addr=None)
BATCH = 500  # records a push
BACKOFF_MAX = 60.0
PUSH_BUDGET = 5.0  # seconds of pushing per sink a round, so one busy sink cannot hold the rest
READ_BUDGET = 4 << 20  # bytes of one machine's output read per round
AUDIT_BATCH = 1000  # audit events read per round
AUDIT = ":audit"  # the audit trail's cursor among the machines' ones: {"seq": n}

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
    # After a partial push: which records of the batch at ``owed_head`` are still owed.
    owed: list[int] | None = None
    owed_head: tuple[int, int] | None = None
    owed_size: int = 0


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _refused_by(event: AuditEvent, sink_id: str) -> bool:
    if event.action != "logs.sink.dropped" or event.target != sink_id:
        return False
    detail = json.loads(event.detail) if event.detail else {}
    return isinstance(detail, dict) and detail.get("reason") == "refused"


def _close(sink: _Sink) -> None:
    close = getattr(sink.driver, "close", None)
    if callable(close):
        close()


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
        if AUDIT not in cursors:
            cursors[AUDIT] = {"seq": self._audit_start(row)}
            _save(cursors_file, cursors)
        return _Sink(
            row.id,
            row.org_id,
            org,
            row.url,
            driver_for(row.kind, row.url, sink_credential(self.cp, row), row.index_name),
            SinkBuffer(directory / "buffer", self.cp.settings.log_sink_buffer_bytes),
            cursors_file,
            cursors,
        )

    def _audit_start(self, row: LogSinkRow) -> int:
        """The audit trail is shipped from the event that added the sink on."""
        with self.cp.db.read() as session:
            added = session.execute(
                select(AuditEvent.seq).where(
                    AuditEvent.chain == chain_for(row.org_id),
                    AuditEvent.action == "logs.sink.add",
                    AuditEvent.target == row.id,
                )
            ).scalar_one_or_none()
        return (added - 1) if added is not None else 0

    def _refresh(self) -> None:
        with self.cp.db.read() as session:
            rows = session.execute(select(LogSinkRow, Org.name).join(Org)).all()
        wanted = {row.id: (row, org) for row, org in rows}
        for gone in set(self._sinks) - set(wanted):
            _close(self._sinks.pop(gone))
            shutil.rmtree(self.root / gone, ignore_errors=True)
        for sink_id, (row, org) in wanted.items():
            if sink_id not in self._sinks:
                try:
                    self._sinks[sink_id] = self._open(row, org)
                except (HangarError, OSError, ValueError) as exc:
                    # One sink that cannot start (its credential does not
                    # unwrap, its directory is unwritable) must not stop the others.
                    log.warning("log sink %s: %s", sink_id, getattr(exc, "message", exc))
        if self.root.is_dir():
            for leftover in self.root.iterdir():  # removed while the server was down
                if leftover.name not in wanted:
                    shutil.rmtree(leftover, ignore_errors=True)

    def stop(self) -> None:
        super().stop()
        self.close()

    def close(self) -> None:
        """Close the sinks' connections (the loop stopping, or a test done with it)."""
        while self._sinks:
            _close(self._sinks.popitem()[1])

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
                # Machines' ids are unique; an edge's lines are per app, and so is their cursor.
                key = source.machine_id
                if not key.startswith("m_"):
                    key = f"{app.id}/{key}"
                try:
                    fresh, cursors[key] = source.read_since(sink.cursors.get(key), READ_BUDGET)
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
        taken += self._audit_since(sink, cursors)
        if not taken:
            return
        sink.buffer.append(taken)  # durable before the cursors move past it
        sink.cursors = cursors
        _save(sink.cursors_file, cursors)

    def _audit_since(self, sink: _Sink, cursors: dict[str, Cursor | None]) -> list[dict[str, Any]]:
        """The organization's audit events after the sink's cursor, in chain order.

        A chain's sequence numbers are handed out under a lock on its head
        and committed in that order, so no event can appear later below
        the cursor.
        """
        after = (cursors.get(AUDIT) or {}).get("seq", 0)
        with self.cp.db.read() as session:
            rows = list(
                session.execute(
                    select(AuditEvent)
                    .where(AuditEvent.chain == chain_for(sink.org_id), AuditEvent.seq > after)
                    .order_by(AuditEvent.seq)
                    .limit(AUDIT_BATCH)
                ).scalars()
            )
        if not rows:
            return []
        cursors[AUDIT] = {"seq": rows[-1].seq}
        # A sink's own record of refusing records is not sent to it: refused
        # again, it would make another, once a round, for as long as it refuses.
        rows = [r for r in rows if not _refused_by(r, sink.id)]
        return [
            {
                "ts": r.time,
                "org": sink.org,
                "app": "",
                "machine": "",
                "stream": "audit",
                "line": json.dumps(
                    {
                        "seq": r.seq,
                        "time": r.time,
                        "actor": r.actor,
                        "action": r.action,
                        "target": r.target,
                        "outcome": r.outcome,
                        "request_id": r.request_id,
                        "client_addr": r.client_addr,
                        "detail": json.loads(r.detail) if r.detail else {},
                        "hash": r.hash,
                    },
                    separators=(",", ":"),
                ),
            }
            for r in rows
        ]

    def _push(self, sink: _Sink) -> None:
        deadline = time.monotonic() + PUSH_BUDGET
        while time.monotonic() < deadline:
            batch = sink.buffer.peek(BATCH)
            if not batch:
                return
            if sink.owed is not None and sink.owed_head == sink.buffer.head:
                # The rest of a batch the sink took part of: the same records
                # still head the buffer (newer ones behind them wait their turn).
                batch = batch[: sink.owed_size]
                owed = sink.owed
            else:
                owed = list(range(len(batch)))  # dropped from the head, or a new batch
            try:
                check_sink_url(sink.url, self.cp.settings.allowed_log_sink_hosts)
                partial = sink.driver.push([batch[n] for n in owed])
            except SinkError as exc:
                if not exc.retry:
                    log.warning("log sink %s refused %d records: %s", sink.id, len(owed), exc)
                    self._done(sink, batch)
                    self._report_dropped(sink, len(owed), "refused", exc.message)
                    continue
                self._backoff(sink, exc.message)
                return
            except HangarError as exc:  # its address no longer passes
                self._backoff(sink, exc.message)
                return
            partial = partial or Partial()
            shipped = len(owed) - len(partial.retry) - len(partial.refused)
            if shipped > 0:
                LOG_SINK_SHIPPED.labels(sink.org_id, sink.id).inc(shipped)
            if partial.refused:
                self._report_dropped(sink, len(partial.refused), "refused", partial.reason)
            if partial.retry:
                sink.owed = [owed[n] for n in partial.retry]
                sink.owed_head, sink.owed_size = sink.buffer.head, len(batch)
                self._backoff(sink, f"took part of a batch; {len(sink.owed)} to send again")
                return
            self._done(sink, batch)

    def _done(self, sink: _Sink, batch: list[Any]) -> None:
        """Every record of ``batch`` was taken or counted: forget them."""
        sink.buffer.ack(len(batch))
        sink.owed, sink.owed_head, sink.owed_size = None, None, 0
        sink.failures, sink.retry_at = 0, 0.0

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

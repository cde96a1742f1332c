"""Machines' output: this host's from its runtime, other hosts' as their agents shipped it.

The edge's access lines of an app are sources too: this host's edge's
(machine ``edge``) read from its files, and each other edge host's
(machine ``edge:<host id>``) as its agent shipped them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from sqlalchemy import select

from hangar.contract.links import HostMachines
from hangar.controlplane.logstore import LogStore
from hangar.controlplane.machine_control import list_machines
from hangar.controlplane.state import ControlPlane
from hangar.edge.accesslog import access_log_path
from hangar.errors import NotFound, ValidationError
from hangar.store.tables import App, Host
from hangar.telemetry.logfiles import read_all, read_since

__all__ = ["EDGE", "LogFilter", "LogSource", "edge_source_name", "log_sources"]

EDGE = "edge"  # the "machine" of the edge's access lines


def _aware(when: dt.datetime | None) -> dt.datetime | None:
    """A time without a zone is UTC, as the records' own times are."""
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    return when


@dataclass(frozen=True)
class LogFilter:
    """Which records a reader wants: a stream, a time window (since inclusive, until
    exclusive) and a text the line must contain (plain text, case-sensitive)."""

    stream: Literal["stdout", "stderr", "access"] | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    match: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "since", _aware(self.since))
        object.__setattr__(self, "until", _aware(self.until))
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValidationError(
                f"since ({self.since.isoformat()}) is not before until ({self.until.isoformat()})"
            )

    def accepts(self, record: dict[str, Any]) -> bool:
        if self.stream is not None and record.get("stream") != self.stream:
            return False
        if self.match and self.match not in str(record.get("line", "")):
            return False
        if self.since is None and self.until is None:
            return True
        try:
            when = _aware(dt.datetime.fromisoformat(str(record.get("ts"))))
        except ValueError:
            return False  # a record without a readable time is outside any window
        assert when is not None
        if self.since is not None and when < self.since:
            return False
        return self.until is None or when < self.until


Cursor = dict[str, int]


@dataclass(frozen=True)
class LogSource:
    """One machine's output; ``read`` returns every record so far, oldest first.

    ``read_since(cursor, budget)`` returns the records after a cursor (None:
    from the oldest kept), about ``budget`` bytes of them, and the cursor
    after them: a position in the log's files that survives rotation.
    """

    machine_id: str
    region: str
    read: Callable[[], list[dict[str, Any]]]
    read_since: Callable[[Cursor | None, int], tuple[list[dict[str, Any]], Cursor | None]]


def log_sources(cp: ControlPlane, app: App, machine_id: str | None = None) -> list[LogSource]:
    """The app's machines' output (or one machine's: NotFound if it is not the app's)."""
    rows = list_machines(cp, app.id, machine_id)
    if machine_id is not None and not rows:
        raise NotFound(f"machine {machine_id!r} not found in app {app.name!r}")
    shipped = LogStore(cp.data_dir / "logs")
    local = cp.local
    sources = []
    for machine, host in rows:
        if local is not None and local.host_id == host.id:
            here = local

            # Looked up when read: a HostMachines is asked only for what is used.
            def reader(machine_id: str, on: HostMachines = here) -> list[dict[str, Any]]:
                return on.logs(machine_id)

            def since(
                machine_id: str, cursor: Cursor | None, budget: int, on: HostMachines = here
            ) -> tuple[list[dict[str, Any]], Cursor | None]:
                return on.logs_since(machine_id, cursor, budget)

            sources.append(
                LogSource(
                    machine.id, host.region, partial(reader, machine.id), partial(since, machine.id)
                )
            )
        else:
            sources.append(
                LogSource(
                    machine.id,
                    host.region,
                    partial(shipped.read, machine.id),
                    partial(shipped.read_since, machine.id),
                )
            )
    if machine_id is None and local is not None and cp.settings.edge:
        path = access_log_path(cp.settings.effective_agent_dir, app.name)
        if path.exists() or path.with_name(path.name + ".1").exists():  # the edge served it
            sources.append(_access_source(cp, app))
    if machine_id is None:
        sources += _shipped_access_sources(cp, app, shipped)
    return sources


def edge_source_name(host_id: str) -> str:
    """The "machine" of an edge host's shipped access lines (``edge:<host id>``)."""
    return f"{EDGE}:{host_id}"


def _shipped_access_sources(cp: ControlPlane, app: App, shipped: LogStore) -> list[LogSource]:
    """The access lines edges on other hosts shipped for the app, one source a host."""
    hosts = shipped.access_hosts(app.id)
    if not hosts:
        return []
    with cp.db.read() as session:
        regions = dict(
            session.execute(select(Host.id, Host.region).where(Host.id.in_(hosts))).all()
        )
    return [
        LogSource(
            edge_source_name(host_id),
            regions.get(host_id, ""),
            partial(shipped.read_access, app.id, host_id),
            partial(shipped.read_access_since, app.id, host_id),
        )
        for host_id in hosts
    ]


def _access_source(cp: ControlPlane, app: App) -> LogSource:
    """This host's edge's access lines for the app (``stream`` ``access``).

    Lines are kept by app name; a name freed and taken again by another
    app (of another organization, maybe) must not inherit the old one's
    lines, so only those from the app's creation on are read.
    """
    path = access_log_path(cp.settings.effective_agent_dir, app.name)
    born = _aware(app.created_at)
    assert born is not None

    def mine(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for record in records:
            try:
                when = _aware(dt.datetime.fromisoformat(str(record.get("ts"))))
            except ValueError:
                continue
            if when is not None and when >= born:
                kept.append(record)
        return kept

    def read() -> list[dict[str, Any]]:
        return mine(read_all(path))

    def since(cursor: Cursor | None, budget: int) -> tuple[list[dict[str, Any]], Cursor | None]:
        records, after = read_since(path, cursor, budget)
        return mine(records), after

    return LogSource(EDGE, cp.settings.region, read, since)

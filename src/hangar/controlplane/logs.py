"""Machines' output: this host's from its runtime, other hosts' as their agents shipped it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from hangar.contract.links import HostMachines
from hangar.controlplane.logstore import LogStore
from hangar.controlplane.machine_control import list_machines
from hangar.controlplane.state import ControlPlane
from hangar.errors import NotFound, ValidationError
from hangar.store.tables import App

__all__ = ["LogFilter", "LogSource", "log_sources"]


def _aware(when: dt.datetime | None) -> dt.datetime | None:
    """A time without a zone is UTC, as the records' own times are."""
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    return when


@dataclass(frozen=True)
class LogFilter:
    """Which records a reader wants: a stream, a time window (since inclusive, until
    exclusive) and a text the line must contain (plain text, case-sensitive)."""

    stream: Literal["stdout", "stderr"] | None = None
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
    return sources

"""Machines' output: this host's from its runtime, other hosts' as their agents shipped it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from hangar.controlplane.logstore import LogStore
from hangar.controlplane.machine_control import list_machines
from hangar.controlplane.state import ControlPlane
from hangar.errors import NotFound
from hangar.store.tables import App

__all__ = ["LogSource", "log_sources"]


@dataclass(frozen=True)
class LogSource:
    """One machine's output; ``read`` returns every record so far, oldest first."""

    machine_id: str
    region: str
    read: Callable[[], list[dict[str, Any]]]


def log_sources(cp: ControlPlane, app: App, machine_id: str | None = None) -> list[LogSource]:
    """The app's machines' output (or one machine's: NotFound if it is not the app's)."""
    rows = list_machines(cp, app.id, machine_id)
    if machine_id is not None and not rows:
        raise NotFound(f"machine {machine_id!r} not found in app {app.name!r}")
    shipped = LogStore(cp.data_dir / "logs")
    local = cp.local
    sources = []
    for machine, host in rows:
        here = local is not None and local.host_id == host.id
        reader = local.logs if local is not None and here else shipped.read
        sources.append(LogSource(machine.id, host.region, partial(reader, machine.id)))
    return sources

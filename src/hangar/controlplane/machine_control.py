"""An app's machines as people see and steer them: list, add, update, stop, start,
restart, destroy, wait, and what happened to each.

A change sets a machine's desired state (lease permitting) and records it
twice: in the machine's own event list and in the audit trail. The agents
then make it so.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.images import resolve_image
from hangar.controlplane.leases import held
from hangar.controlplane.machines import (
    DEFAULT_MEMORY_MB,
    create_machine,
    get_release,
    machine_memory,
    release_config,
)
from hangar.controlplane.releases import live_release
from hangar.controlplane.state import ControlPlane
from hangar.errors import Conflict, NotFound, ValidationError, WaitTimeout
from hangar.store.tables import App, Host, Machine, MachineEvent, Org

__all__ = [
    "add_machine",
    "destroy_machine",
    "find_machine",
    "list_machines",
    "machine_events",
    "machine_owner",
    "steer_machine",
    "update_machine",
    "wait_machine",
]

Placed = tuple[Machine, Host]


def _on_host() -> Any:
    return select(Machine, Host).join(Host, Host.id == Machine.host_id)


def list_machines(cp: ControlPlane, app_id: str, machine_id: str | None = None) -> list[Placed]:
    """The app's machines (or the one named) with their hosts, oldest first."""
    query = _on_host().where(Machine.app_id == app_id)
    if machine_id is not None:
        query = query.where(Machine.id == machine_id[:32])
    with cp.db.read() as session:
        rows = session.execute(query.order_by(Machine.created_at, Machine.id)).all()
    return [(m, h) for m, h in rows]


def find_machine(cp: ControlPlane, app: App, machine_id: str) -> Placed:
    found = list_machines(cp, app.id, machine_id)
    if not found:
        raise NotFound(f"machine {machine_id!r} not found in app {app.name!r}")
    return found[0]


def machine_owner(cp: ControlPlane, machine_id: str) -> tuple[App, Org]:
    """The app and organization of a machine, by its id alone (ids are unique).

    The caller authorizes against that app before showing anything: to anyone
    else the machine does not exist.
    """
    query = (
        select(App, Org)
        .join(Machine, Machine.app_id == App.id)
        .join(Org, Org.id == App.org_id)
        .where(Machine.id == machine_id[:32])
    )
    with cp.db.read() as session:
        row = session.execute(query).one_or_none()
    if row is None:
        raise NotFound(f"machine {machine_id!r} not found")
    return row[0], row[1]


def _record(session: Session, machine_id: str, kind: str, detail: str = "") -> None:
    session.add(
        MachineEvent(machine_id=machine_id, time=dt.datetime.now(dt.UTC), kind=kind, detail=detail)
    )


def steer_machine(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    machine_id: str,
    action: str,
    *,
    nonce: str = "",
    restart: bool = False,
    **values: Any,
) -> Placed:
    """Change a machine's desired state (lease permitting), audited and recorded.

    ``restart`` bumps the machine's generation in the same transaction, so
    two restarts never read the same generation.
    """
    with change(cp, ctx, org_id=app.org_id, action=action) as (session, event):
        row = held(session, app, machine_id, nonce)
        for key, value in values.items():
            setattr(row, key, value)
        if restart:
            row.generation += 1
        row.updated_at = dt.datetime.now(dt.UTC)
        detail = dict(values)
        _record(
            session, row.id, action.removeprefix("machine."), json.dumps(detail) if detail else ""
        )
        event.target, event.detail = row.id, detail
        host = session.get(Host, row.host_id)
        assert host is not None
    return row, host


def add_machine(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    *,
    region: str | None = None,
    image: str | None = None,
    cmd: list[str] | None = None,
) -> Placed:
    """A machine of the live release, or a one-off with its own image or command."""
    with contextlib.ExitStack() as stack:
        layout = digest = None
        if image is not None:
            layout, digest = stack.enter_context(resolve_image(cp, app.org_id, image))
        with change(cp, ctx, org_id=app.org_id, action="machine.create") as (session, event):
            live = live_release(session, app.id)
            current = live.version if live is not None else None
            if current is None and layout is None:
                raise Conflict(
                    f"app {app.name!r} has no live release",
                    hint="hangar deploy first, or give the machine an image",
                )
            row = session.get(App, app.id)
            assert row is not None
            machine = create_machine(
                session,
                row,
                current or 0,
                region,
                image=layout,
                image_digest=digest,
                args=cmd,
                memory_mb=machine_memory(release_config(live)) if live else DEFAULT_MEMORY_MB,
                # A machine of the release mounts its volumes; a one-off mounts none.
                mounts=(
                    [m.source for m in release_config(live).mounts]
                    if live is not None and layout is None and cmd is None
                    else ()
                ),
            )
            host = session.get(Host, machine.host_id)
            assert host is not None
            event.target, event.detail = machine.id, {"version": current}
        return machine, host


def update_machine(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    machine_id: str,
    *,
    nonce: str = "",
    version: int | None = None,
    image: str | None = None,
    cmd: list[str] | None = None,
    stop_signal: str | None = None,
    stop_timeout: float | None = None,
) -> Placed:
    """A new release, image or command replaces the machine; stop settings do not."""
    given = {"version": version, "stop_signal": stop_signal, "stop_timeout": stop_timeout}
    values: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if cmd is not None:
        values["args"] = json.dumps(cmd)
    machine, _ = find_machine(cp, app, machine_id)
    if image is not None:
        if not machine.one_off:
            raise ValidationError(
                "only a one-off machine has its own image",
                hint="deploy a new release to change the app's image",
            )
        with resolve_image(cp, app.org_id, image) as (layout, values["image_digest"]):
            values["image"] = layout
    if version is not None:
        if machine.one_off:
            raise ValidationError("a one-off machine runs its own image, not a release")
        with cp.db.read() as session:
            get_release(session, app.id, version)  # NotFound names it
    if not values:
        raise ValidationError(
            "nothing to update", hint="give version, image, cmd, stop_signal or stop_timeout"
        )
    replace = bool({"version", "image", "args"} & set(values))
    return steer_machine(
        cp, ctx, app, machine_id, "machine.update", nonce=nonce, restart=replace, **values
    )


def destroy_machine(
    cp: ControlPlane, ctx: AuditContext, app: App, machine_id: str, *, nonce: str, force: bool
) -> Placed:
    """A machine that is (or is about to be) running needs ``force``; stop it first otherwise."""
    machine, _ = find_machine(cp, app, machine_id)
    if not force and machine.desired == "started" and machine.state not in ("stopped", "failed"):
        raise Conflict(
            f"machine {machine.id} is {machine.state}",
            hint="stop it first, or destroy it with --force",
        )
    return steer_machine(
        cp, ctx, app, machine_id, "machine.destroy", nonce=nonce, desired="destroyed"
    )


async def wait_machine(
    cp: ControlPlane, app: App, machine_id: str, state: str, timeout: float
) -> Placed:
    """The machine once it is in ``state``; WaitTimeout if it is not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            machine, host = find_machine(cp, app, machine_id)
        except NotFound:
            if state == "destroyed":
                raise NotFound(f"machine {machine_id!r} is destroyed") from None
            raise
        if machine.state == state:
            return machine, host
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"machine {machine_id} is {machine.state}, not {state}, after {timeout:g}s"
            )
        await asyncio.sleep(0.05)


def machine_events(cp: ControlPlane, app: App, machine_id: str, limit: int) -> list[MachineEvent]:
    """What happened to a machine, newest first."""
    machine, _ = find_machine(cp, app, machine_id)
    with cp.db.read() as session:
        return list(
            session.execute(
                select(MachineEvent)
                .where(MachineEvent.machine_id == machine.id)
                .order_by(MachineEvent.id.desc())
                .limit(limit)
            ).scalars()
        )

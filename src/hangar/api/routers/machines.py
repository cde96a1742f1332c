"""An app's machines: list, show, add, update, stop, start, restart, wait, destroy, events."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import Header, Query
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import machine_control as control
from hangar.controlplane.leases import LEASE_HEADER
from hangar.store.tables import Host, Machine

router = GuardedRouter(prefix="/v1/apps/{app}", tags=["machines"])

Signal = Literal["SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL"]


class MachineOut(BaseModel):
    id: str
    one_off: bool
    state: str
    desired: str
    version: int
    running_version: int | None
    healthy: bool | None
    exit_code: int | None
    address: str
    host: str
    region: str
    detail: str
    created_at: dt.datetime
    updated_at: dt.datetime


def machine_out(placed: tuple[Machine, Host]) -> MachineOut:
    m, h = placed
    return MachineOut(
        id=m.id,
        one_off=m.one_off,
        state=m.state,
        desired=m.desired,
        version=m.version,
        running_version=m.running_version,
        healthy=m.healthy,
        exit_code=m.exit_code,
        address=m.address,
        host=h.name,
        region=h.region,
        detail=m.detail,
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


@router.get("/machines", response_model=list[MachineOut], summary="The app's machines")
def list_machines(
    app: str, access: Annotated[Access, requires(Permission.APPS_READ)]
) -> list[MachineOut]:
    assert access.app is not None
    return [machine_out(p) for p in control.list_machines(access.cp, access.app.id)]


@router.get("/machines/{machine_id}", response_model=MachineOut, summary="One machine")
def show_machine(
    app: str, machine_id: str, access: Annotated[Access, requires(Permission.APPS_READ)]
) -> MachineOut:
    assert access.app is not None
    return machine_out(control.find_machine(access.cp, access.app, machine_id))


# The holder of a machine's lease presents its nonce in this header (hidden from the schema).
Nonce = Annotated[str, Header(alias=LEASE_HEADER, include_in_schema=False)]


class MachineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = Field(default=None, min_length=1, max_length=1000)
    cmd: list[str] | None = Field(default=None, min_length=1, max_length=256)


@router.post(
    "/machines",
    response_model=MachineOut,
    status_code=201,
    summary="Add a machine: the current release's, or a one-off with its own image or command",
)
def create_machine_route(
    app: str,
    access: Annotated[Access, requires(Permission.APPS_DEPLOY)],
    region: Annotated[str | None, Query(max_length=32)] = None,
    body: MachineIn | None = None,
) -> MachineOut:
    assert access.app is not None
    body = body or MachineIn()
    placed = control.add_machine(
        access.cp, access.ctx, access.app, region=region, image=body.image, cmd=body.cmd
    )
    return machine_out(placed)


class MachineUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(default=None, ge=1, description="run this release instead")
    image: str | None = Field(
        default=None, min_length=1, max_length=1000, description="one-off machines only"
    )
    cmd: list[str] | None = Field(default=None, min_length=1, max_length=256)
    stop_signal: Signal | None = None
    stop_timeout: float | None = Field(default=None, ge=0, le=3600)


@router.patch(
    "/machines/{machine_id}",
    response_model=MachineOut,
    summary="Update a machine's configuration; the agent replaces it to apply a new one",
)
def update_machine(
    app: str,
    machine_id: str,
    body: MachineUpdate,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
    nonce: Nonce = "",
) -> MachineOut:
    assert access.app is not None
    placed = control.update_machine(
        access.cp, access.ctx, access.app, machine_id, nonce=nonce, **body.model_dump()
    )
    return machine_out(placed)


def _steer(access: Access, machine_id: str, action: str, nonce: str, **values: Any) -> MachineOut:
    assert access.app is not None
    placed = control.steer_machine(
        access.cp, access.ctx, access.app, machine_id, action, nonce=nonce, **values
    )
    return machine_out(placed)


class StopIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signal: Signal | None = None
    timeout: float | None = Field(default=None, ge=0, le=3600)


@router.post("/machines/{machine_id}/stop", response_model=MachineOut, summary="Stop a machine")
def stop_machine(
    app: str,
    machine_id: str,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
    body: StopIn | None = None,
    nonce: Nonce = "",
) -> MachineOut:
    body = body or StopIn()
    values = {"desired": "stopped", "stop_signal": body.signal, "stop_timeout": body.timeout}
    return _steer(access, machine_id, "machine.stop", nonce, **values)


@router.post("/machines/{machine_id}/start", response_model=MachineOut, summary="Start a machine")
def start_machine(
    app: str,
    machine_id: str,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
    nonce: Nonce = "",
) -> MachineOut:
    return _steer(access, machine_id, "machine.start", nonce, desired="started")


@router.post(
    "/machines/{machine_id}/restart",
    response_model=MachineOut,
    summary="Restart a machine in place",
)
def restart_machine(
    app: str,
    machine_id: str,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
    nonce: Nonce = "",
) -> MachineOut:
    return _steer(access, machine_id, "machine.restart", nonce, restart=True, desired="started")


@router.delete(
    "/machines/{machine_id}",
    response_model=MachineOut,
    summary="Destroy a machine (the agent removes it)",
)
def destroy_machine(
    app: str,
    machine_id: str,
    access: Annotated[Access, requires(Permission.APPS_DELETE)],
    force: bool = False,
    nonce: Nonce = "",
) -> MachineOut:
    """A machine that is (or is about to be) running needs ``force``; stop it first otherwise."""
    assert access.app is not None
    placed = control.destroy_machine(
        access.cp, access.ctx, access.app, machine_id, nonce=nonce, force=force
    )
    return machine_out(placed)


@router.get(
    "/machines/{machine_id}/wait",
    response_model=MachineOut,
    summary="Wait until a machine reaches a state (408 if it does not in time)",
)
async def wait_machine(
    app: str,
    machine_id: str,
    access: Annotated[Access, requires(Permission.APPS_READ)],
    state: Literal["started", "stopped", "failed", "destroyed"] = "started",
    timeout: Annotated[float, Query(ge=0, le=60)] = 30,
) -> MachineOut:
    assert access.app is not None
    return machine_out(
        await control.wait_machine(access.cp, access.app, machine_id, state, timeout)
    )


class EventOut(BaseModel):
    time: dt.datetime
    kind: str
    detail: str


@router.get(
    "/machines/{machine_id}/events",
    response_model=list[EventOut],
    summary="What happened to a machine, newest first",
)
def machine_events(
    app: str,
    machine_id: str,
    access: Annotated[Access, requires(Permission.APPS_READ)],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[EventOut]:
    assert access.app is not None
    rows = control.machine_events(access.cp, access.app, machine_id, limit)
    return [EventOut(time=e.time, kind=e.kind, detail=e.detail) for e in rows]


# Machine ids are unique: this names a machine's app, so the CLI needs no --app.
by_id = GuardedRouter(prefix="/v1/machines", tags=["machines"])


class MachineOwner(BaseModel):
    id: str
    app: str
    org: str


@by_id.get("/{machine_id}", response_model=MachineOwner, summary="A machine's app, by its id")
def machine_owner(
    machine_id: str, access: Annotated[Access, requires(Permission.APPS_READ)]
) -> MachineOwner:
    app, org = control.machine_owner(access.cp, machine_id)
    # Authorized against the machine's app as its app-scoped routes are: a machine
    # of an organization the caller cannot see answers 404, as a missing one does.
    access.check(Permission.APPS_READ, org=org, app=app.name, shown=f"machine {machine_id!r}")
    return MachineOwner(id=machine_id, app=app.name, org=org.name)

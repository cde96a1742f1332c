"""An app's releases (deploys) and machines."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from hangar.agent.oci import parse_image_ref, read_manifest
from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.config.appconfig import parse_app_config
from hangar.controlplane.machines import create_machine, create_release, get_release
from hangar.errors import Conflict, NotFound, ValidationError
from hangar.store.tables import App, Host, Machine, Release

router = GuardedRouter(prefix="/v1/apps/{app}", tags=["machines"])


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(min_length=1, max_length=1000)
    config: str = Field(min_length=1, max_length=256 * 1024, description="hangar.toml text")
    strategy: Literal["immediate", "rolling"] | None = None


class ReleaseOut(BaseModel):
    version: int
    status: str
    strategy: str
    image: str
    reason: str
    created_by: str
    created_at: dt.datetime
    finished_at: dt.datetime | None


class MachineOut(BaseModel):
    id: str
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


def _release_out(r: Release) -> ReleaseOut:
    detail: dict[str, Any] = json.loads(r.detail or "{}")
    return ReleaseOut(
        version=r.version,
        status=r.status,
        strategy=r.strategy,
        image=r.image,
        reason=str(detail.get("reason", "")),
        created_by=r.created_by,
        created_at=r.created_at,
        finished_at=r.finished_at,
    )


def _machine_out(m: Machine, h: Host) -> MachineOut:
    return MachineOut(
        id=m.id,
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


@router.post(
    "/releases",
    response_model=ReleaseOut,
    status_code=201,
    summary="Deploy: a new release, rolled out by the deployer",
)
def deploy(
    app: str,
    body: ReleaseIn,
    request: Request,
    access: Annotated[Access, requires(Permission.APPS_DEPLOY)],
) -> ReleaseOut:
    assert access.app is not None and access.org is not None
    config = parse_app_config(body.config)
    if config.app != app:
        raise ValidationError(f"hangar.toml is for app {config.app!r}, not {app!r}")
    ref = parse_image_ref(body.image)
    if ref.kind != "oci":
        raise ValidationError(
            f"{body.image}: registry images are copied to a local layout first",
            hint="skopeo copy docker://… oci:DIR:TAG, then --image oci:DIR:TAG",
        )
    if ref.path is None or not ref.path.is_absolute():
        raise ValidationError("the image path must be absolute on the server")
    read_manifest(ref)  # fail now, with the reason, rather than on every machine
    with access.cp.db.write() as session:
        row = session.get(App, access.app.id)
        assert row is not None
        release = create_release(
            session,
            row,
            image=str(ref),
            config=config,
            strategy=body.strategy,
            actor=access.principal.email,
        )
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="release.create",
            target=f"{app} v{release.version}",
            detail={"image": str(ref), "strategy": release.strategy},
        )
    _wake(request)
    return _release_out(release)


def _wake(request: Request) -> None:
    """Tell this host's loops that desired state changed (no-op without them)."""
    wake = getattr(request.app.state, "wake", None)
    if wake is not None:
        wake()


@router.get("/releases", response_model=list[ReleaseOut], summary="Releases, newest first")
def list_releases(
    app: str,
    access: Annotated[Access, requires(Permission.APPS_READ)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[ReleaseOut]:
    assert access.app is not None
    with access.cp.db.read() as session:
        rows = session.execute(
            select(Release)
            .where(Release.app_id == access.app.id)
            .order_by(Release.version.desc())
            .limit(limit)
        ).scalars()
        return [_release_out(r) for r in rows]


@router.get("/releases/{version}", response_model=ReleaseOut, summary="One release")
def show_release(
    app: str, version: int, access: Annotated[Access, requires(Permission.APPS_READ)]
) -> ReleaseOut:
    assert access.app is not None
    with access.cp.db.read() as session:
        return _release_out(get_release(session, access.app.id, version))


@router.get("/machines", response_model=list[MachineOut], summary="The app's machines")
def list_machines(
    app: str, access: Annotated[Access, requires(Permission.APPS_READ)]
) -> list[MachineOut]:
    assert access.app is not None
    with access.cp.db.read() as session:
        rows = session.execute(
            select(Machine, Host)
            .join(Host, Host.id == Machine.host_id)
            .where(Machine.app_id == access.app.id)
            .order_by(Machine.created_at, Machine.id)
        ).all()
        return [_machine_out(m, h) for m, h in rows]


def _machine(access: Access, machine_id: str) -> tuple[Machine, Host]:
    assert access.app is not None
    with access.cp.db.read() as session:
        row = session.execute(
            select(Machine, Host)
            .join(Host, Host.id == Machine.host_id)
            .where(Machine.id == machine_id[:32], Machine.app_id == access.app.id)
        ).one_or_none()
    if row is None:
        raise NotFound(f"machine {machine_id!r} not found in app {access.app.name!r}")
    return row[0], row[1]


@router.get("/machines/{machine_id}", response_model=MachineOut, summary="One machine")
def show_machine(
    app: str, machine_id: str, access: Annotated[Access, requires(Permission.APPS_READ)]
) -> MachineOut:
    machine, host = _machine(access, machine_id)
    return _machine_out(machine, host)


def _set_desired(
    access: Access, request: Request, machine_id: str, desired: str, action: str
) -> MachineOut:
    assert access.org is not None
    machine, host = _machine(access, machine_id)
    with access.cp.db.write() as session:
        row = session.get(Machine, machine.id)
        if row is None:
            raise NotFound(f"machine {machine_id!r} not found")
        row.desired = desired
        row.updated_at = dt.datetime.now(dt.UTC)
        access.cp.audit.record(
            session, access.ctx, org_id=access.org.id, action=action, target=row.id
        )
        out = _machine_out(row, host)
    _wake(request)
    return out


@router.post(
    "/machines",
    response_model=MachineOut,
    status_code=201,
    summary="Add a machine running the app's current release",
)
def create_machine_route(
    app: str,
    request: Request,
    access: Annotated[Access, requires(Permission.APPS_DEPLOY)],
    region: Annotated[str | None, Query(max_length=32)] = None,
) -> MachineOut:
    assert access.app is not None and access.org is not None
    with access.cp.db.write() as session:
        current = session.execute(
            select(Release.version)
            .where(Release.app_id == access.app.id, Release.status == "complete")
            .order_by(Release.version.desc())
            .limit(1)
        ).scalar_one_or_none()
        if current is None:
            raise Conflict(f"app {app!r} has no live release", hint="hangar deploy first")
        row = session.get(App, access.app.id)
        assert row is not None
        machine = create_machine(session, row, current, region)
        host = session.get(Host, machine.host_id)
        assert host is not None
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="machine.create",
            target=machine.id,
            detail={"version": current},
        )
        out = _machine_out(machine, host)
    _wake(request)
    return out


@router.post("/machines/{machine_id}/stop", response_model=MachineOut, summary="Stop a machine")
def stop_machine(
    app: str,
    machine_id: str,
    request: Request,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
) -> MachineOut:
    return _set_desired(access, request, machine_id, "stopped", "machine.stop")


@router.post("/machines/{machine_id}/start", response_model=MachineOut, summary="Start a machine")
def start_machine(
    app: str,
    machine_id: str,
    request: Request,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
) -> MachineOut:
    return _set_desired(access, request, machine_id, "started", "machine.start")


@router.delete(
    "/machines/{machine_id}",
    response_model=MachineOut,
    summary="Destroy a machine (the agent removes it)",
)
def destroy_machine(
    app: str,
    machine_id: str,
    request: Request,
    access: Annotated[Access, requires(Permission.APPS_DELETE)],
) -> MachineOut:
    return _set_desired(access, request, machine_id, "destroyed", "machine.destroy")

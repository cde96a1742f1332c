"""An app's releases (deploys) and machines."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.loops import wake_loops
from hangar.auth.rbac import Permission
from hangar.config.appconfig import parse_app_config
from hangar.controlplane.logstore import LogStore
from hangar.controlplane.machines import (
    DEFAULT_MEMORY_MB,
    create_machine,
    create_release,
    get_release,
    machine_memory,
    release_config,
)
from hangar.controlplane.routes import check_service_ports, reserved_ports
from hangar.errors import Conflict, NotFound, ValidationError, WaitTimeout
from hangar.images.oci import parse_image_ref, read_manifest
from hangar.images.registry import copy_from_registry
from hangar.store.tables import App, Host, Machine, MachineEvent, Release

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
    image_digest: str | None
    reason: str
    created_by: str
    created_at: dt.datetime
    finished_at: dt.datetime | None


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


def _release_out(r: Release) -> ReleaseOut:
    detail: dict[str, Any] = json.loads(r.detail or "{}")
    return ReleaseOut(
        version=r.version,
        status=r.status,
        strategy=r.strategy,
        image=r.image,
        image_digest=r.image_digest,
        reason=str(detail.get("reason", "")),
        created_by=r.created_by,
        created_at=r.created_at,
        finished_at=r.finished_at,
    )


def _machine_out(m: Machine, h: Host) -> MachineOut:
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
    reserved = reserved_ports(access.cp.settings)
    with access.cp.db.read() as session:  # before the image is fetched: nothing to undo
        check_service_ports(session, access.app, config, reserved)
    with _resolved_image(access, body.image) as (image, digest), access.cp.db.write() as session:
        row = session.get(App, access.app.id)
        assert row is not None
        check_service_ports(session, row, config, reserved)
        release = create_release(
            session,
            row,
            image=image,
            image_digest=digest,
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
            detail={
                "image": body.image,
                "layout": image,
                "digest": digest,
                "strategy": release.strategy,
            },
        )
    wake_loops(request)
    return _release_out(release)


@contextlib.contextmanager
def _resolved_image(access: Access, text: str) -> Iterator[tuple[str, str]]:
    """An image as the layout machines run it from, and its manifest digest (the pin).

    A ``docker://`` reference is copied with skopeo into a new layout under
    the data directory; if what follows fails, the copy is removed again.
    Checking the manifest now fails with the reason once, not on every machine.
    """
    ref = parse_image_ref(text)
    copied: Path | None = None
    if ref.kind == "docker":
        name = re.sub(r"[^a-z0-9.-]+", "_", ref.reference.lower())[:80]
        copied = access.cp.data_dir / "images" / f"{name}-{secrets.token_hex(4)}"
        ref = copy_from_registry(ref, copied, insecure=access.cp.settings.insecure_registries)
    elif ref.path is None or not ref.path.is_absolute():
        raise ValidationError("the image path must be absolute on the server")
    try:
        yield str(ref), read_manifest(ref).digest
    except BaseException:
        if copied is not None:
            shutil.rmtree(copied, ignore_errors=True)
        raise


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


LEASE_HEADER = "Hangar-Lease-Nonce"


def _nonce_hash(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


def _check_lease(machine: Machine, request: Request) -> None:
    """Conflict if someone else holds an unexpired lease on the machine."""
    expires = machine.lease_expires_at
    if machine.lease_nonce_hash is None or expires is None or expires <= dt.datetime.now(dt.UTC):
        return
    nonce = request.headers.get(LEASE_HEADER, "")
    if not hmac.compare_digest(_nonce_hash(nonce), machine.lease_nonce_hash):
        raise Conflict(
            f"machine {machine.id} is leased by {machine.lease_owner} until "
            f"{expires.isoformat(timespec='seconds')}",
            hint=f"wait, or send the lease's nonce in the {LEASE_HEADER} header",
        )


def _event(session: Session, machine_id: str, kind: str, detail: str = "") -> None:
    session.add(
        MachineEvent(machine_id=machine_id, time=dt.datetime.now(dt.UTC), kind=kind, detail=detail)
    )


def _change(
    access: Access,
    request: Request,
    machine_id: str,
    action: str,
    *,
    restart: bool = False,
    **values: Any,
) -> MachineOut:
    """Change a machine's desired state (lease permitting), audited and recorded.

    ``restart`` bumps the machine's generation in the same transaction, so
    two restarts never read the same generation.
    """
    assert access.org is not None
    machine, host = _machine(access, machine_id)
    with access.cp.db.write() as session:
        row = session.get(Machine, machine.id)
        if row is None:
            raise NotFound(f"machine {machine_id!r} not found")
        _check_lease(row, request)
        for key, value in values.items():
            setattr(row, key, value)
        if restart:
            row.generation += 1
        row.updated_at = dt.datetime.now(dt.UTC)
        detail = dict(values)
        _event(
            session, row.id, action.removeprefix("machine."), json.dumps(detail) if detail else ""
        )
        access.cp.audit.record(
            session, access.ctx, org_id=access.org.id, action=action, target=row.id, detail=detail
        )
        out = _machine_out(row, host)
    wake_loops(request)
    return out


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
    request: Request,
    access: Annotated[Access, requires(Permission.APPS_DEPLOY)],
    region: Annotated[str | None, Query(max_length=32)] = None,
    body: MachineIn | None = None,
) -> MachineOut:
    assert access.app is not None and access.org is not None
    body = body or MachineIn()
    with contextlib.ExitStack() as stack:
        image = digest = None
        if body.image is not None:
            image, digest = stack.enter_context(_resolved_image(access, body.image))
        return _create_machine(access, request, app, body, image, digest, region)


def _create_machine(
    access: Access,
    request: Request,
    app: str,
    body: MachineIn,
    image: str | None,
    digest: str | None,
    region: str | None,
) -> MachineOut:
    assert access.app is not None and access.org is not None
    with access.cp.db.write() as session:
        live = session.execute(
            select(Release)
            .where(Release.app_id == access.app.id, Release.status == "complete")
            .order_by(Release.version.desc())
            .limit(1)
        ).scalar_one_or_none()
        current = live.version if live is not None else None
        if current is None and image is None:
            raise Conflict(
                f"app {app!r} has no live release",
                hint="hangar deploy first, or give the machine an image",
            )
        row = session.get(App, access.app.id)
        assert row is not None
        machine = create_machine(
            session,
            row,
            current or 0,
            region,
            image=image,
            image_digest=digest,
            args=body.cmd,
            memory_mb=machine_memory(release_config(live)) if live else DEFAULT_MEMORY_MB,
        )
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
    wake_loops(request)
    return out


class MachineUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(default=None, ge=1, description="run this release instead")
    image: str | None = Field(
        default=None, min_length=1, max_length=1000, description="one-off machines only"
    )
    cmd: list[str] | None = Field(default=None, min_length=1, max_length=256)
    stop_signal: Literal["SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL"] | None = (
        None
    )
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
    request: Request,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
) -> MachineOut:
    assert access.app is not None
    values: dict[str, Any] = {
        k: v for k, v in body.model_dump(exclude_none=True).items() if k != "image"
    }
    if body.cmd is not None:
        values["args"] = json.dumps(values.pop("cmd"))
    machine, _ = _machine(access, machine_id)
    if body.image is not None:
        if not machine.one_off:
            raise ValidationError(
                "only a one-off machine has its own image",
                hint="deploy a new release to change the app's image",
            )
        ref = parse_image_ref(body.image)
        if ref.kind != "oci" or ref.path is None or not ref.path.is_absolute():
            raise ValidationError("give a one-off machine's new image as an absolute oci: path")
        values["image_digest"] = read_manifest(ref).digest
        values["image"] = str(ref)
    if body.version is not None:
        if machine.one_off:
            raise ValidationError("a one-off machine runs its own image, not a release")
        with access.cp.db.read() as session:
            get_release(session, access.app.id, body.version)  # NotFound names it
    if not values:
        raise ValidationError(
            "nothing to update", hint="give version, image, cmd, stop_signal or stop_timeout"
        )
    # A new image, command or release means a new container; stop settings do not.
    replace = bool({"version", "image", "args"} & set(values))
    return _change(access, request, machine_id, "machine.update", restart=replace, **values)


class StopIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signal: Literal["SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL"] | None = None
    timeout: float | None = Field(default=None, ge=0, le=3600)


@router.post("/machines/{machine_id}/stop", response_model=MachineOut, summary="Stop a machine")
def stop_machine(
    app: str,
    machine_id: str,
    request: Request,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
    body: StopIn | None = None,
) -> MachineOut:
    body = body or StopIn()
    return _change(
        access,
        request,
        machine_id,
        "machine.stop",
        desired="stopped",
        stop_signal=body.signal,
        stop_timeout=body.timeout,
    )


@router.post("/machines/{machine_id}/start", response_model=MachineOut, summary="Start a machine")
def start_machine(
    app: str,
    machine_id: str,
    request: Request,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
) -> MachineOut:
    return _change(access, request, machine_id, "machine.start", desired="started")


@router.post(
    "/machines/{machine_id}/restart",
    response_model=MachineOut,
    summary="Restart a machine in place",
)
def restart_machine(
    app: str,
    machine_id: str,
    request: Request,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
) -> MachineOut:
    return _change(access, request, machine_id, "machine.restart", restart=True, desired="started")


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
    force: bool = False,
) -> MachineOut:
    """A machine that is (or is about to be) running needs ``force``; stop it first otherwise."""
    machine, _ = _machine(access, machine_id)
    if not force and machine.desired == "started" and machine.state not in ("stopped", "failed"):
        raise Conflict(
            f"machine {machine.id} is {machine.state}",
            hint="stop it first, or destroy it with --force",
        )
    return _change(access, request, machine_id, "machine.destroy", desired="destroyed")


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
    deadline = time.monotonic() + timeout
    while True:
        try:
            machine, host = _machine(access, machine_id)
        except NotFound:
            if state == "destroyed":
                raise NotFound(f"machine {machine_id!r} is destroyed") from None
            raise
        if machine.state == state:
            return _machine_out(machine, host)
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"machine {machine_id} is {machine.state}, not {state}, after {timeout:g}s"
            )
        await asyncio.sleep(0.05)


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
    machine, _ = _machine(access, machine_id)
    with access.cp.db.read() as session:
        rows = session.execute(
            select(MachineEvent)
            .where(MachineEvent.machine_id == machine.id)
            .order_by(MachineEvent.id.desc())
            .limit(limit)
        ).scalars()
        return [EventOut(time=e.time, kind=e.kind, detail=e.detail) for e in rows]


class LeaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: int = Field(default=30, ge=1, le=3600)


class LeaseOut(BaseModel):
    nonce: str = Field(description="send as the Hangar-Lease-Nonce header; shown only now")
    owner: str
    expires_at: dt.datetime


@router.post(
    "/machines/{machine_id}/lease",
    response_model=LeaseOut,
    status_code=201,
    summary="Take a lease: only its holder may change the machine until it expires",
)
def take_lease(
    app: str,
    machine_id: str,
    request: Request,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
    body: LeaseIn | None = None,
) -> LeaseOut:
    ttl = (body or LeaseIn()).ttl
    machine, _ = _machine(access, machine_id)
    nonce = secrets.token_urlsafe(24)
    with access.cp.db.write() as session:
        row = session.get(Machine, machine.id)
        assert row is not None
        _check_lease(row, request)
        row.lease_nonce_hash = _nonce_hash(nonce)
        row.lease_owner = access.principal.email
        row.lease_expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
        assert access.org is not None
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="machine.lease",
            target=row.id,
            detail={"ttl": ttl},
        )
        return LeaseOut(nonce=nonce, owner=row.lease_owner, expires_at=row.lease_expires_at)


@router.delete("/machines/{machine_id}/lease", status_code=204, summary="Release a lease")
def release_lease(
    app: str,
    machine_id: str,
    request: Request,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
) -> None:
    machine, _ = _machine(access, machine_id)
    with access.cp.db.write() as session:
        row = session.get(Machine, machine.id)
        assert row is not None
        _check_lease(row, request)
        row.lease_nonce_hash = row.lease_owner = row.lease_expires_at = None
        assert access.org is not None
        access.cp.audit.record(
            session, access.ctx, org_id=access.org.id, action="machine.lease_release", target=row.id
        )


class ExecIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: list[str] = Field(min_length=1, max_length=256)
    timeout: float = Field(default=30, gt=0, le=300)


class ExecOut(BaseModel):
    exit_code: int
    stdout: str
    stderr: str


@router.post(
    "/machines/{machine_id}/exec",
    response_model=ExecOut,
    summary="Run a command in a running machine (audited)",
)
def exec_machine(
    app: str,
    machine_id: str,
    body: ExecIn,
    request: Request,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
) -> ExecOut:
    assert access.org is not None
    machine, host = _machine(access, machine_id)
    local = getattr(request.app.state, "agent", None)
    here = local is not None and local.host_id == host.id
    with access.cp.db.write() as session:
        # Audited before it runs: a command that never returns is still on record.
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="machine.exec",
            target=machine.id,
            detail={"cmd": body.cmd},
        )
    if local is not None and here:
        result = local.reconciler.runtime.exec(machine.id, body.cmd, timeout=body.timeout)
    else:
        # Another host's machine: its agent picks the command up on its next poll.
        result = access.cp.execs.run(host.id, machine.id, body.cmd, body.timeout)
    cap = 1 << 20
    return ExecOut(
        exit_code=result.exit_code,
        stdout=result.stdout[:cap].decode(errors="replace"),
        stderr=result.stderr[:cap].decode(errors="replace"),
    )


@router.get(
    "/logs",
    response_class=StreamingResponse,
    summary="Machines' output as NDJSON, oldest first; follow=true keeps streaming",
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "NDJSON lines"}},
)
async def logs(
    app: str,
    request: Request,
    access: Annotated[Access, requires(Permission.APPS_READ)],
    machine: Annotated[str | None, Query(max_length=32)] = None,
    follow: bool = False,
) -> StreamingResponse:
    assert access.app is not None
    with access.cp.db.read() as session:
        query = (
            select(Machine, Host)
            .join(Host, Host.id == Machine.host_id)
            .where(Machine.app_id == access.app.id)
        )
        if machine is not None:
            query = query.where(Machine.id == machine)
        rows = session.execute(query).all()
    if machine is not None and not rows:
        raise NotFound(f"machine {machine!r} not found in app {app!r}")
    local = getattr(request.app.state, "agent", None)
    shipped = LogStore(access.cp.data_dir / "logs")
    targets = [(m.id, h.region, local is not None and local.host_id == h.id) for m, h in rows]

    def read(machine_id: str, here: bool) -> list[dict[str, Any]]:
        """This host's machines from its runtime; other hosts' as their agents shipped them."""
        if here:
            assert local is not None
            return local.reconciler.runtime.logs(machine_id)  # type: ignore[no-any-return]
        return shipped.read(machine_id)

    async def stream() -> AsyncIterator[bytes]:
        sent: dict[str, int] = {}
        while True:
            for machine_id, region, here in targets:
                try:
                    records = read(machine_id, here)
                except NotFound:
                    continue
                start = sent.get(machine_id, 0)
                if start > len(records):  # rotated away under us: start over
                    start = 0
                for record in records[start:]:
                    line = {
                        "ts": record["ts"],
                        "machine": machine_id,
                        "app": app,
                        "region": region,
                        "stream": record["stream"],
                        "line": record["line"],
                    }
                    yield (json.dumps(line) + "\n").encode()
                sent[machine_id] = len(records)
            if not follow or await request.is_disconnected():
                return
            await asyncio.sleep(0.3)

    return StreamingResponse(stream(), media_type="application/x-ndjson")

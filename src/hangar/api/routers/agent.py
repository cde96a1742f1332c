"""The agents' API: served only on the mutual-TLS listener, never on the public one.

A joined host long-polls its assignments, reports what it observed, fetches
the images its machines need (only those), and renews its certificate. Every
route knows the host by its client certificate (``HostGuard``) and can see
or change only that host's machines.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from hangar.agent.reconciler import Assignment
from hangar.agent.runtimes.base import ExecResult
from hangar.api.guard import HOST, GuardedRouter, HostAccess
from hangar.api.loops import wake_loops
from hangar.controlplane.hostlink import (
    apply_report,
    assignments_version,
    dns_records,
    host_assignments,
)
from hangar.controlplane.hosts import renew_host_cert
from hangar.controlplane.logstore import LogStore
from hangar.controlplane.mesh import mesh_peers, register_mesh
from hangar.controlplane.routes import route_builder
from hangar.controlplane.secrets import deliver
from hangar.crypto.secretbox import seal
from hangar.domain.routing import edge_seal_context
from hangar.errors import Conflict, IntegrityError, NotFound, PermissionDenied, ValidationError
from hangar.images.oci import open_blob, parse_image_ref, read_manifest
from hangar.store.tables import Host, Machine

router = GuardedRouter(prefix="/agent/v1", tags=["agent"])

POLL_STEP = 0.25


class ExecOrder(BaseModel):
    id: str
    machine_id: str
    cmd: list[str]
    timeout: float


class AssignmentsOut(BaseModel):
    version: str
    host_id: str
    assignments: list[dict[str, Any]]
    execs: list[ExecOrder] = []


class ExecDone(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exit_code: int | None = None
    stdout: str = Field(default="", max_length=512 << 10, description="base64")
    stderr: str = Field(default="", max_length=512 << 10, description="base64")
    error: str | None = Field(default=None, max_length=4096)


class LogRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ts: str = Field(max_length=40)
    stream: Literal["stdout", "stderr"]
    line: str = Field(max_length=64 << 10)


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    machines: dict[str, dict[str, Any]] = Field(max_length=10_000)
    errors: dict[str, str] = Field(default_factory=dict, max_length=10_000)
    logs: dict[str, list[LogRecord]] = Field(default_factory=dict, max_length=10_000)


class RenewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csr: str = Field(max_length=16_384)


class CertOut(BaseModel):
    host_id: str
    name: str
    certificate: str
    ca_certificate: str
    expires_at: dt.datetime


class ImageOut(BaseModel):
    manifest: dict[str, Any]
    blobs: dict[str, int]


def _read(access: HostAccess) -> list[Assignment]:
    with access.cp.db.read() as session:
        return host_assignments(session, access.host.id)


@router.get("/assignments", response_model=AssignmentsOut, summary="This host's assignments")
async def assignments(
    access: Annotated[HostAccess, HOST],
    after: Annotated[str | None, Query(max_length=64)] = None,
    wait: Annotated[float, Query(ge=0, le=60)] = 0,
) -> AssignmentsOut:
    """With ``after``, waits up to ``wait`` seconds for a version other than ``after``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    broker = access.cp.execs
    while True:
        found = await run_in_threadpool(_read, access)
        version = assignments_version(found)
        if version != after or broker.has_pending(access.host.id) or loop.time() >= deadline:
            orders = [
                ExecOrder(id=r.id, machine_id=r.machine_id, cmd=r.cmd, timeout=r.timeout)
                for r in broker.pending(access.host.id)
            ]
            return AssignmentsOut(
                version=version,
                host_id=access.host.id,
                assignments=[a.to_json() for a in found],
                execs=orders,
            )
        await asyncio.sleep(min(POLL_STEP, max(0.0, deadline - loop.time())))


@router.post("/execs/{exec_id}", status_code=204, summary="The result of a command it was given")
def exec_done(exec_id: str, body: ExecDone, access: Annotated[HostAccess, HOST]) -> None:
    result = None
    if body.error is None:
        try:
            result = ExecResult(
                body.exit_code if body.exit_code is not None else -1,
                base64.b64decode(body.stdout, validate=True),
                base64.b64decode(body.stderr, validate=True),
            )
        except binascii.Error as exc:
            raise ValidationError("stdout and stderr must be base64") from exc
    if not access.cp.execs.finish(access.host.id, exec_id, result, body.error):
        raise NotFound(f"no command {exec_id!r} is waiting for this host")


@router.post("/report", status_code=204, summary="What this host observed of its machines")
def report(body: ReportIn, request: Request, access: Annotated[HostAccess, HOST]) -> None:
    if body.logs:
        # Logs first: a report can delete a destroyed machine, and its last lines count.
        with access.cp.db.read() as session:
            mine = set(
                session.execute(
                    select(Machine.id).where(
                        Machine.id.in_(list(body.logs)), Machine.host_id == access.host.id
                    )
                ).scalars()
            )
        store = LogStore(access.cp.data_dir / "logs")
        for machine_id in sorted(mine):  # only this host's machines: others' are dropped
            store.append(machine_id, [r.model_dump() for r in body.logs[machine_id]])
    with access.cp.db.write() as session:
        apply_report(session, access.host.id, body.machines, body.errors)
    wake_loops(request)  # the deployer may be waiting on these machines


@router.post("/renew", response_model=CertOut, summary="A new client certificate for this host")
def renew(body: RenewIn, access: Annotated[HostAccess, HOST]) -> CertOut:
    settings = access.cp.settings
    with access.cp.db.write() as session:
        issued = renew_host_cert(
            session,
            access.cp.ca,
            access.host.id,
            body.csr,
            lifetime=dt.timedelta(seconds=settings.host_cert_seconds),
        )
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=None,
            action="host.renew",
            target=access.host.name,
            detail={"serial": issued.serial, "expires_at": issued.expires_at.isoformat()},
        )
    return CertOut(
        host_id=access.host.id,
        name=access.host.name,
        certificate=issued.pem,
        ca_certificate=access.cp.ca.pem(),
        expires_at=issued.expires_at,
    )


def _machine_image(access: HostAccess, machine_id: str) -> tuple[str, str | None]:
    with access.cp.db.read() as session:
        found = [a for a in host_assignments(session, access.host.id) if a.machine_id == machine_id]
        # Hosts see only their own machines; others' are "not found", as on the public API.
        if not found or session.get(Machine, machine_id) is None:
            raise NotFound(f"machine {machine_id!r} is not assigned to this host")
    return found[0].image, found[0].image_digest


@router.get(
    "/machines/{machine_id}/image",
    response_model=ImageOut,
    summary="The pinned manifest of a machine's image, and the blobs it needs",
)
def machine_image(machine_id: str, access: Annotated[HostAccess, HOST]) -> ImageOut:
    image, digest = _machine_image(access, machine_id)
    manifest = read_manifest(parse_image_ref(image))
    if digest is not None and manifest.digest != digest:
        raise Conflict(
            f"image {image} is now {manifest.digest}, not the {digest} its release pinned",
            hint="deploy again to run the image as it is now",
        )
    return ImageOut(
        manifest={
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": manifest.size,
        },
        blobs=manifest.blobs(),
    )


@router.get(
    "/machines/{machine_id}/image/blobs/{digest}",
    response_class=StreamingResponse,
    summary="One blob of a machine's image (only blobs its manifest names)",
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the blob"}},
)
def machine_image_blob(
    machine_id: str, digest: str, access: Annotated[HostAccess, HOST]
) -> StreamingResponse:
    image, pinned = _machine_image(access, machine_id)
    ref = parse_image_ref(image)
    manifest = read_manifest(ref)
    if pinned is not None and manifest.digest != pinned:
        raise Conflict(f"image {image} no longer has the digest its release pinned")
    blobs = manifest.blobs()
    if digest not in blobs:
        raise NotFound(f"blob {digest} is not part of machine {machine_id}'s image")
    assert ref.path is not None
    layout, size = ref.path, blobs[digest]

    def chunks() -> Iterator[bytes]:
        try:
            with open_blob(layout, digest, size) as handle:
                while chunk := handle.read(1 << 16):
                    yield chunk
        except IntegrityError:
            return  # a short or corrupt stream: the agent's digest check refuses it

    return StreamingResponse(chunks(), media_type="application/octet-stream")


class DeliveryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(max_length=64, description="a one-time X25519 key, base64")


class SealedOut(BaseModel):
    ephemeral: str
    nonce: str
    ciphertext: str


@router.post(
    "/machines/{machine_id}/secrets",
    response_model=SealedOut,
    summary="A starting machine's secrets, sealed to the agent's one-time key",
)
def machine_secrets(
    machine_id: str, body: DeliveryIn, access: Annotated[HostAccess, HOST]
) -> SealedOut:
    cp = access.cp
    values = deliver(
        cp.db, cp.keyring, cp.audit, access.ctx, host_id=access.host.id, machine_id=machine_id
    )
    return SealedOut(**seal(values, body.public_key, machine_id))


class RoutesOut(BaseModel):
    table: dict[str, Any] = Field(description="the routing table, certificate keys left out")
    keys: SealedOut = Field(description="{host name: key PEM}, sealed to the one-time key")


@router.post(
    "/routes",
    response_model=RoutesOut,
    summary="The routing table, for an edge host; certificate keys sealed to it",
)
def routes(body: DeliveryIn, request: Request, access: Annotated[HostAccess, HOST]) -> RoutesOut:
    cp = access.cp
    if not access.host.edge:
        # Only edge hosts hold tenants' TLS keys; a machine host asking is suspect.
        with cp.db.write() as session:
            cp.audit.record(
                session,
                access.ctx,
                org_id=None,
                action="edge.routes",
                target=access.host.name,
                outcome="denied",
                detail={"reason": "not an edge host"},
            )
        raise PermissionDenied(
            f"host {access.host.name} is not an edge host",
            hint="join it with a token from `hangar hosts join-token --edge`",
        )
    builder = getattr(request.app.state, "route_builder", None)
    if builder is None:
        builder = request.app.state.route_builder = route_builder(cp.keyring, cp.ca, cp.settings)
    with cp.db.read() as session:
        table = builder.build(session)
    keys = {c.hostname: c.key_pem for c in table.certs}
    plain = table.to_json()
    for cert in plain["certs"]:
        cert["key_pem"] = ""
    sealed = seal(keys, body.public_key, edge_seal_context(access.host.id))
    return RoutesOut(table=plain, keys=SealedOut(**sealed))


class MeshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(max_length=64, description="WireGuard public key, base64")
    endpoint: str = Field(max_length=300, description="host:port other hosts reach it at")


class PeerOut(BaseModel):
    host: str
    public_key: str
    endpoint: str
    allowed_ips: list[str]


@router.put("/mesh", status_code=204, summary="This host's WireGuard public key and endpoint")
def mesh_register(body: MeshIn, request: Request, access: Annotated[HostAccess, HOST]) -> None:
    cp = access.cp
    with cp.db.write() as session:
        host = session.get(Host, access.host.id)
        assert host is not None
        if register_mesh(session, host, body.public_key, body.endpoint):
            cp.audit.record(
                session,
                access.ctx,
                org_id=None,
                action="host.mesh",
                target=host.name,
                detail={"public_key": body.public_key, "endpoint": body.endpoint},
            )
    wake_loops(request)


@router.get("/mesh/peers", response_model=list[PeerOut], summary="This host's mesh peers")
def mesh_list(access: Annotated[HostAccess, HOST]) -> list[PeerOut]:
    with access.cp.db.read() as session:
        return [
            PeerOut(
                host=p.host,
                public_key=p.public_key,
                endpoint=p.endpoint,
                allowed_ips=list(p.allowed_ips),
            )
            for p in mesh_peers(session, access.host.id)
        ]


class NameOut(BaseModel):
    app: str
    region: str
    machine_id: str
    address: str


@router.get("/names", response_model=list[NameOut], summary="Started machines, for .internal DNS")
def names(access: Annotated[HostAccess, HOST]) -> list[NameOut]:
    """Every started machine's name and address; each host's resolver answers an asker
    only about the asker's own network."""
    with access.cp.db.read() as session:
        return [
            NameOut(app=r.app, region=r.region, machine_id=r.machine_id, address=str(r.address))
            for r in dns_records(session)
        ]


class MeshStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latest_handshake: int = Field(ge=0, description="unix time of the newest handshake; 0: none")


@router.put("/mesh/status", status_code=204, summary="This host's newest mesh handshake")
def mesh_status(body: MeshStatusIn, access: Annotated[HostAccess, HOST]) -> None:
    with access.cp.db.write() as session:
        host = session.get(Host, access.host.id)
        assert host is not None
        host.mesh_handshake_at = (
            dt.datetime.fromtimestamp(body.latest_handshake, dt.UTC)
            if body.latest_handshake
            else None
        )

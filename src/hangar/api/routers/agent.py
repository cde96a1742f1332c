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

from fastapi import Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import HOST, GuardedRouter, HostAccess
from hangar.contract import VERSION, check_version
from hangar.contract.assignments import Assignment, MachineStatus
from hangar.contract.execs import MAX_OUTPUT, ExecOrder, ExecResult
from hangar.contract.reports import Report
from hangar.contract.volumejobs import VolumeJobResult
from hangar.controlplane.agents import AgentService
from hangar.controlplane.appmetrics import MAX_TEXT
from hangar.controlplane.hostlink import assignments_version
from hangar.crypto.secretbox import seal
from hangar.crypto.volumekeys import seal_keys
from hangar.domain.routing import edge_seal_context
from hangar.errors import Conflict, HangarError, IntegrityError, NotFound, ValidationError
from hangar.images.oci import ImageRef, Manifest, open_blob, read_manifest

router = GuardedRouter(prefix="/agent/v1", tags=["agent"])

POLL_STEP = 0.25


class AssignmentsOut(BaseModel):
    contract: int = Field(description="the contract version both sides must speak")
    version: str
    host_id: str
    assignments: list[dict[str, Any]]
    execs: list[ExecOrder] = []


class ExecDone(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exit_code: int | None = None
    stdout: str = Field(default="", max_length=2 * MAX_OUTPUT, description="base64")
    stderr: str = Field(default="", max_length=2 * MAX_OUTPUT, description="base64")
    error: str | None = Field(default=None, max_length=4096)


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


def _service(access: HostAccess) -> AgentService:
    return AgentService(access.cp, access.host.id, access.ctx)


def _read(access: HostAccess) -> list[Assignment]:
    return _service(access).assignments()


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
                contract=VERSION,
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
def report(body: Report, access: Annotated[HostAccess, HOST]) -> None:
    """Statuses, machines' output and (an edge host) its access lines; another host's
    machines, and lines of apps this host's edge does not serve, are dropped."""
    check_version(body.contract)
    statuses = {mid: MachineStatus.from_json(info) for mid, info in body.machines.items()}
    logs = {mid: [r.model_dump() for r in records] for mid, records in body.logs.items()}
    lines = {app: [r.model_dump() for r in records] for app, records in body.access.items()}
    _service(access).report(statuses, body.errors, logs, lines)


@router.post("/renew", response_model=CertOut, summary="A new client certificate for this host")
def renew(body: RenewIn, access: Annotated[HostAccess, HOST]) -> CertOut:
    issued = _service(access).renew(body.csr)
    return CertOut(
        host_id=access.host.id,
        name=access.host.name,
        certificate=issued.pem,
        ca_certificate=access.cp.ca.pem(),
        expires_at=issued.expires_at,
    )


def _machine_image(access: HostAccess, machine_id: str) -> tuple[ImageRef, str | None]:
    return _service(access).image(machine_id)


def _manifest(ref: ImageRef) -> Manifest:
    try:
        return read_manifest(ref)
    except IntegrityError as exc:
        raise ValidationError(f"the machine's image is unusable: {exc.message}") from exc


@router.get(
    "/machines/{machine_id}/image",
    response_model=ImageOut,
    summary="The pinned manifest of a machine's image, and the blobs it needs",
)
def machine_image(machine_id: str, access: Annotated[HostAccess, HOST]) -> ImageOut:
    image, digest = _machine_image(access, machine_id)
    manifest = _manifest(image)
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
    ref, pinned = _machine_image(access, machine_id)
    manifest = _manifest(ref)
    if pinned is not None and manifest.digest != pinned:
        raise Conflict(f"image {ref} no longer has the digest its release pinned")
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
    values = _service(access).secrets(machine_id)
    return SealedOut(**seal(values, body.public_key, machine_id))


@router.post(
    "/machines/{machine_id}/volume-keys",
    response_model=SealedOut,
    summary="The keys of a starting machine's volumes, sealed to the agent's one-time key",
)
def machine_volume_keys(
    machine_id: str, body: DeliveryIn, access: Annotated[HostAccess, HOST]
) -> SealedOut:
    keys = _service(access).volume_keys(machine_id)
    return SealedOut(**seal_keys(keys, body.public_key, machine_id))


@router.get("/volumes", summary="The volumes that live on this host")
def host_volumes(
    access: Annotated[HostAccess, HOST],
    backend: Annotated[Literal["luks2", "gocryptfs"], Query(description="this host's backend")],
    grows_online: Annotated[bool, Query(description="can grow a volume in use")] = False,
) -> list[dict[str, Any]]:
    return [v.to_json() for v in _service(access).volumes(backend, grows_online)]


class JobTaken(BaseModel):
    job: dict[str, Any]
    sealed: dict[str, str] | None


@router.post(
    "/volume-jobs/take",
    response_model=list[JobTaken],
    summary="This host's pending volume jobs; repository secrets sealed to a one-time key",
)
def take_volume_jobs(body: DeliveryIn, access: Annotated[HostAccess, HOST]) -> list[JobTaken]:
    taken = _service(access).volume_jobs(body.public_key)
    return [JobTaken(job=job.to_json(), sealed=sealed) for job, sealed in taken]


@router.post("/volume-jobs/{job_id}/done", status_code=204, summary="Report a volume job")
def volume_job_done(
    job_id: Annotated[str, Path(max_length=40)],
    body: dict[str, Any],
    access: Annotated[HostAccess, HOST],
) -> None:
    done = VolumeJobResult.from_json(body)
    if done.job_id != job_id:
        raise ValidationError("the job id in the path and the body differ")
    _service(access).volume_job_done(done)


@router.post(
    "/volume-jobs/{job_id}/export",
    status_code=204,
    summary="Upload an export job's tar, relayed to the person who asked",
)
async def volume_export(
    job_id: Annotated[str, Path(max_length=40)],
    request: Request,
    access: Annotated[HostAccess, HOST],
) -> None:
    service = _service(access)
    relay = access.cp.exports
    await run_in_threadpool(service.volume_export_start, job_id)
    try:
        async for chunk in request.stream():
            await run_in_threadpool(relay.push, job_id, chunk)
    except BaseException:
        relay.fail(job_id, HangarError(f"the upload of export {job_id} broke off"))
        raise
    await run_in_threadpool(relay.end, job_id)


class RoutesOut(BaseModel):
    table: dict[str, Any] = Field(description="the routing table, certificate keys left out")
    keys: SealedOut = Field(description="{host name: key PEM}, sealed to the one-time key")


@router.post(
    "/routes",
    response_model=RoutesOut,
    summary="The routing table, for an edge host; certificate keys sealed to it",
)
def routes(body: DeliveryIn, access: Annotated[HostAccess, HOST]) -> RoutesOut:
    table = _service(access).routes()
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
def mesh_register(body: MeshIn, access: Annotated[HostAccess, HOST]) -> None:
    _service(access).register_mesh(body.public_key, body.endpoint)


@router.get("/mesh/peers", response_model=list[PeerOut], summary="This host's mesh peers")
def mesh_list(access: Annotated[HostAccess, HOST]) -> list[PeerOut]:
    return [
        PeerOut(
            host=p.host,
            public_key=p.public_key,
            endpoint=p.endpoint,
            allowed_ips=list(p.allowed_ips),
        )
        for p in _service(access).peers()
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
    return [
        NameOut(app=r.app, region=r.region, machine_id=r.machine_id, address=str(r.address))
        for r in _service(access).names()
    ]


class MeshStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latest_handshake: int = Field(ge=0, description="unix time of the newest handshake; 0: none")


class MachineFiguresIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: float = Field(ge=0)
    text: str = Field(max_length=MAX_TEXT)


class MetricsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    machines: dict[Annotated[str, Field(max_length=32)], MachineFiguresIn] = Field(
        max_length=10_000
    )
    # Apps' figures at this host's edge, by app name (an edge host only).
    edge: dict[Annotated[str, Field(max_length=63)], MachineFiguresIn] = Field(
        default_factory=dict, max_length=10_000
    )


@router.post("/metrics", status_code=204, summary="This host's machines' and edge's figures")
def metrics(body: MetricsIn, access: Annotated[HostAccess, HOST]) -> None:
    """Kept for the machines' (and apps') organizations; another host's machines are ignored,
    and so are edge figures from a host that is not an edge."""
    service = _service(access)
    figures = {m: (f.at, f.text) for m, f in body.machines.items()}
    if figures:
        service.report_metrics(figures)
    edge = {a: (f.at, f.text) for a, f in body.edge.items()}
    if edge:
        service.report_edge_metrics(edge)


@router.put("/mesh/status", status_code=204, summary="This host's newest mesh handshake")
def mesh_status(body: MeshStatusIn, access: Annotated[HostAccess, HOST]) -> None:
    _service(access).report_mesh(body.latest_handshake)

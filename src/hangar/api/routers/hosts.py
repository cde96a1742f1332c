"""Hosts: the machines' hosts, for installation operators."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import PUBLIC, Access, GuardedRouter, audit_context, control_plane, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import host_admin
from hangar.errors import NotFound

router = GuardedRouter(prefix="/v1/hosts", tags=["hosts"])


class HostOut(BaseModel):
    id: str
    name: str
    region: str
    state: str
    number: int
    machines: int
    memory_mb: int
    edge: bool
    mesh_public_key: str | None
    mesh_endpoint: str | None
    mesh_handshake_at: dt.datetime | None
    created_at: dt.datetime
    last_seen: dt.datetime | None
    volume_backend: str | None = Field(
        default=None,
        description="how its volumes are encrypted at rest: luks2 (dm-crypt) or gocryptfs;"
        " null until its agent reports, or if it has neither",
    )
    volume_grows_online: bool | None = Field(
        default=None, description="whether it grows a volume while a machine uses it"
    )


def _hosts(access: Access, name: str | None = None) -> list[HostOut]:
    access.check(access.perm, org=None, shown="hosts")
    return [
        HostOut(
            id=h.id,
            name=h.name,
            region=h.region,
            state=h.state,
            number=h.number,
            machines=n,
            memory_mb=h.memory_mb,
            edge=h.edge,
            mesh_public_key=h.mesh_public_key,
            mesh_endpoint=h.mesh_endpoint,
            volume_backend=h.volume_backend,
            volume_grows_online=h.volume_grows_online,
            mesh_handshake_at=h.mesh_handshake_at,
            created_at=h.created_at,
            last_seen=h.last_seen,
        )
        for h, n in host_admin.list_hosts(access.cp, name)
    ]


@router.get("", response_model=list[HostOut], summary="Hosts and their machine counts")
def list_hosts(access: Annotated[Access, requires(Permission.HOSTS_READ)]) -> list[HostOut]:
    return _hosts(access)


@router.get("/{host}", response_model=HostOut, summary="One host")
def show_host(host: str, access: Annotated[Access, requires(Permission.HOSTS_READ)]) -> HostOut:
    found = _hosts(access, host)
    if not found:
        raise NotFound(f"host {host!r} not found")
    return found[0]


def _set_state(access: Access, name: str, state: str) -> HostOut:
    access.check(access.perm, org=None, shown=f"host {name!r}")
    host_admin.set_state(access.cp, access.ctx, name, state)
    return _hosts(access, name)[0]


@router.post(
    "/{host}/cordon",
    response_model=HostOut,
    summary="Give a host no new machines (those it runs stay)",
)
def cordon(host: str, access: Annotated[Access, requires(Permission.HOSTS_WRITE)]) -> HostOut:
    return _set_state(access, host, "cordoned")


@router.post("/{host}/uncordon", response_model=HostOut, summary="Let a host take machines again")
def uncordon(host: str, access: Annotated[Access, requires(Permission.HOSTS_WRITE)]) -> HostOut:
    return _set_state(access, host, "active")


class JoinTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=63)
    region: str = Field(default="local", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    expires_in: int = Field(default=900, ge=30, le=86400, description="seconds")
    edge: bool = Field(default=False, description="the host runs an edge (gets TLS keys)")


class JoinTokenOut(BaseModel):
    id: str
    token: str
    name: str | None
    region: str
    expires_at: dt.datetime
    edge: bool


@router.post(
    "/join-tokens",
    response_model=JoinTokenOut,
    status_code=201,
    summary="A one-time token a new host joins with (shown once)",
)
def create_join_token(
    access: Annotated[Access, requires(Permission.HOSTS_WRITE)], body: JoinTokenIn | None = None
) -> JoinTokenOut:
    access.check(access.perm, org=None, shown="hosts")
    body = body or JoinTokenIn()
    row, token = host_admin.new_join_token(
        access.cp,
        access.ctx,
        name=body.name,
        region=body.region,
        expires_in=body.expires_in,
        edge=body.edge,
    )
    return JoinTokenOut(
        id=row.id,
        token=token,
        name=row.name,
        region=row.region,
        expires_at=row.expires_at,
        edge=row.edge,
    )


class JoinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(max_length=256)
    csr: str = Field(max_length=16_384)
    name: str = Field(max_length=63)
    memory_mb: int = Field(default=0, ge=0, le=1 << 30, description="0: unknown")


class JoinOut(BaseModel):
    host_id: str
    name: str
    region: str
    certificate: str
    ca_certificate: str
    expires_at: dt.datetime
    agent_port: int


@router.post(
    "/join",
    response_model=JoinOut,
    status_code=201,
    summary="A new host trades a join token and a CSR for its client certificate",
)
def join(body: JoinIn, request: Request, _: Annotated[None, PUBLIC]) -> JoinOut:
    """Public: the join token is the credential. Refusals are audited."""
    cp = control_plane(request)
    ctx = audit_context(request, f"host:{body.name}")
    host, issued = host_admin.join(
        cp, ctx, body.token, body.csr, name=body.name, memory_mb=body.memory_mb
    )
    return JoinOut(
        host_id=host.id,
        name=host.name,
        region=host.region,
        certificate=issued.pem,
        ca_certificate=cp.ca.pem(),
        expires_at=issued.expires_at,
        agent_port=cp.settings.agent_listen_port,
    )


@router.delete(
    "/{host}",
    status_code=204,
    summary="Remove a host (with no machines or volumes left): its certificate stops working",
)
def remove(host: str, access: Annotated[Access, requires(Permission.HOSTS_WRITE)]) -> None:
    access.check(access.perm, org=None, shown=f"host {host!r}")
    host_admin.remove(access.cp, access.ctx, host)

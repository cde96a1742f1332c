"""People's WireGuard peers on an organization's private network.

The private key of a new peer is in the one answer that creates it, and
nowhere else: not in the store, not in the audit trail.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.loops import wake_loops
from hangar.auth.rbac import Permission
from hangar.controlplane.mesh import create_user_peer
from hangar.errors import NotFound
from hangar.store.tables import Host, WireguardPeer

router = GuardedRouter(prefix="/v1/orgs/{org}/wireguard", tags=["wireguard"])


class PeerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    network: str = Field(default="default", min_length=1, max_length=63)


class PeerOut(BaseModel):
    name: str
    network: str
    address: str
    public_key: str
    gateway: str
    created_by: str
    created_at: dt.datetime


class CreatedOut(PeerOut):
    config: str = Field(description="the device's WireGuard file, with its private key: shown once")


def _out(peer: WireguardPeer, gateway: str) -> PeerOut:
    return PeerOut(
        name=peer.name,
        network=peer.network,
        address=peer.address,
        public_key=peer.public_key,
        gateway=gateway,
        created_by=peer.created_by,
        created_at=peer.created_at,
    )


@router.post("", response_model=CreatedOut, status_code=201, summary="A device on the network")
def create(
    org: str,
    body: PeerIn,
    request: Request,
    access: Annotated[Access, requires(Permission.WIREGUARD_WRITE)],
) -> CreatedOut:
    assert access.org is not None
    with access.cp.db.write() as session:
        made = create_user_peer(
            session, access.org.id, body.name, body.network, actor=access.principal.email
        )
        gateway = session.get(Host, made.peer.gateway_host_id)
        assert gateway is not None
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="wireguard.create",
            target=body.name,
            detail={
                "address": made.peer.address,
                "public_key": made.peer.public_key,
                "gateway": gateway.name,
            },
        )
        out = CreatedOut(**_out(made.peer, gateway.name).model_dump(), config=made.config)
    wake_loops(request)
    return out


@router.get("", response_model=list[PeerOut], summary="The organization's devices")
def list_(
    org: str, access: Annotated[Access, requires(Permission.WIREGUARD_READ)]
) -> list[PeerOut]:
    assert access.org is not None
    with access.cp.db.read() as session:
        rows = session.execute(
            select(WireguardPeer, Host.name)
            .join(Host, Host.id == WireguardPeer.gateway_host_id)
            .where(WireguardPeer.org_id == access.org.id)
            .order_by(WireguardPeer.name)
        ).all()
        return [_out(peer, gateway) for peer, gateway in rows]


@router.delete("/{name}", status_code=204, summary="Revoke a device: its key stops working")
def remove(
    org: str,
    name: str,
    request: Request,
    access: Annotated[Access, requires(Permission.WIREGUARD_WRITE)],
) -> None:
    assert access.org is not None
    with access.cp.db.write() as session:
        peer = session.execute(
            select(WireguardPeer).where(
                WireguardPeer.org_id == access.org.id, WireguardPeer.name == name
            )
        ).scalar_one_or_none()
        if peer is None:
            raise NotFound(f"no peer named {name!r}", hint="hangar wireguard list")
        session.delete(peer)
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="wireguard.remove",
            target=name,
            detail={"public_key": peer.public_key},
        )
    wake_loops(request)

"""People's WireGuard peers on an organization's private network.

The private key of a new peer is in the one answer that creates it, and
nowhere else: not in the store, not in the audit trail.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane.wireguard import add_device, list_devices, remove_device
from hangar.store.tables import WireguardPeer

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
    org: str, body: PeerIn, access: Annotated[Access, requires(Permission.WIREGUARD_WRITE)]
) -> CreatedOut:
    assert access.org is not None
    made, gateway = add_device(access.cp, access.ctx, access.org.id, body.name, body.network)
    return CreatedOut(**_out(made.peer, gateway).model_dump(), config=made.config)


@router.get("", response_model=list[PeerOut], summary="The organization's devices")
def list_(
    org: str, access: Annotated[Access, requires(Permission.WIREGUARD_READ)]
) -> list[PeerOut]:
    assert access.org is not None
    return [_out(peer, gateway) for peer, gateway in list_devices(access.cp, access.org.id)]


@router.delete("/{name}", status_code=204, summary="Revoke a device: its key stops working")
def remove(
    org: str, name: str, access: Annotated[Access, requires(Permission.WIREGUARD_WRITE)]
) -> None:
    assert access.org is not None
    remove_device(access.cp, access.ctx, access.org.id, name)

"""People's devices on an organization's private network, over WireGuard.

The private key of a new device is in the one answer that creates it, and
nowhere else: not in the store, not in the audit trail.
"""

from __future__ import annotations

from sqlalchemy import select

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.mesh import PeerConfig, create_user_peer
from hangar.controlplane.state import ControlPlane
from hangar.errors import NotFound
from hangar.store.tables import Host, WireguardPeer

__all__ = ["add_device", "list_devices", "remove_device"]


def add_device(
    cp: ControlPlane, ctx: AuditContext, org_id: str, name: str, network: str
) -> tuple[PeerConfig, str]:
    """A device on ``network``: its peer and config, and the name of its gateway host."""
    with change(cp, ctx, org_id=org_id, action="wireguard.create", target=name) as (
        session,
        event,
    ):
        made = create_user_peer(session, org_id, name, network, actor=ctx.actor)
        gateway = session.get(Host, made.peer.gateway_host_id)
        assert gateway is not None
        event.detail = {
            "address": made.peer.address,
            "public_key": made.peer.public_key,
            "gateway": gateway.name,
        }
    return made, gateway.name


def list_devices(cp: ControlPlane, org_id: str) -> list[tuple[WireguardPeer, str]]:
    """The organization's devices, by name, with their gateway hosts' names."""
    with cp.db.read() as session:
        rows = session.execute(
            select(WireguardPeer, Host.name)
            .join(Host, Host.id == WireguardPeer.gateway_host_id)
            .where(WireguardPeer.org_id == org_id)
            .order_by(WireguardPeer.name)
        ).all()
    return [(peer, gateway) for peer, gateway in rows]


def remove_device(cp: ControlPlane, ctx: AuditContext, org_id: str, name: str) -> None:
    """Revoke a device: its key stops working at its gateway's next round."""
    with change(cp, ctx, org_id=org_id, action="wireguard.remove", target=name) as (
        session,
        event,
    ):
        peer = session.execute(
            select(WireguardPeer).where(WireguardPeer.org_id == org_id, WireguardPeer.name == name)
        ).scalar_one_or_none()
        if peer is None:
            raise NotFound(f"no peer named {name!r}", hint="hangar wireguard list")
        session.delete(peer)
        event.detail = {"public_key": peer.public_key}

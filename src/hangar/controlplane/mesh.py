"""The mesh's control-plane side: hosts' keys and endpoints in, peer lists out.

A host registers its WireGuard public key and endpoint; every host is told
its peers: each other active host with a key, and that host's slices of
every private network as the peer's allowed IPs. A removed or cordoned
host's machines are gone or going; a removed host is dropped from every
list at once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hangar.auth.tokens import new_id
from hangar.contract.mesh import Peer
from hangar.controlplane.machines import installation_prefix, org_network
from hangar.crypto.wgkeys import new_keypair
from hangar.domain import addressing
from hangar.domain.names import validate_dns_label
from hangar.errors import Conflict
from hangar.net.dns import resolver_address
from hangar.net.wireguard import validate_endpoint, validate_public_key
from hangar.store.tables import Host, Network, WireguardPeer

__all__ = ["PeerConfig", "create_user_peer", "mesh_peers", "register_mesh"]

# People's peers take addresses from the top of their gateway's slice, far
# above any machine's (machines count up from 2).
USER_PEER_BASE = 0xFFFF0000


def register_mesh(session: Session, host: Host, public_key: str, endpoint: str) -> bool:
    """Record the host's key and endpoint (validated first); True if they changed."""
    public_key = validate_public_key(public_key)
    endpoint = validate_endpoint(endpoint)
    if (host.mesh_public_key, host.mesh_endpoint) == (public_key, endpoint):
        return False
    host.mesh_public_key = public_key
    host.mesh_endpoint = endpoint
    return True


def mesh_peers(session: Session, host_id: str) -> list[Peer]:
    """The peers of ``host_id``: every other host in the mesh, with its slices."""
    prefix = installation_prefix(session)
    numbers = sorted(session.execute(select(Network.number)).scalars())
    peers = []
    for other in session.execute(
        select(Host).where(
            Host.id != host_id,
            Host.state != "removed",
            Host.mesh_public_key.is_not(None),
            Host.mesh_endpoint.is_not(None),
        )
    ).scalars():
        slices = tuple(
            str(addressing.host_slice(addressing.network_prefix(prefix, n), other.number))
            for n in numbers
        )
        assert other.mesh_public_key is not None and other.mesh_endpoint is not None
        peers.append(Peer(other.name, other.mesh_public_key, other.mesh_endpoint, slices))
    # People's devices come in through their gateway host only.
    for user in session.execute(
        select(WireguardPeer).where(WireguardPeer.gateway_host_id == host_id)
    ).scalars():
        peers.append(Peer(f"peer:{user.name}", user.public_key, "", (f"{user.address}/128",)))
    return peers


@dataclass(frozen=True)
class PeerConfig:
    peer: WireguardPeer
    config: str  # the device's wg-quick file, with its private key: shown once


def create_user_peer(
    session: Session, org_id: str, name: str, network_name: str, *, actor: str
) -> PeerConfig:
    """A person's device on the org's network; the private key exists only in the answer."""
    validate_dns_label(name, what="peer name")
    validate_dns_label(network_name, what="network name")
    if session.execute(
        select(WireguardPeer.id).where(WireguardPeer.org_id == org_id, WireguardPeer.name == name)
    ).first():
        raise Conflict(f"a peer named {name!r} already exists", hint="hangar wireguard list")
    gateway = session.execute(
        select(Host)
        .where(
            Host.state == "active",
            Host.mesh_public_key.is_not(None),
            Host.mesh_endpoint.is_not(None),
        )
        .order_by(Host.number)
        .limit(1)
    ).scalar_one_or_none()
    if gateway is None:
        raise Conflict(
            "no host is in the mesh to take a peer",
            hint="run `hangar server run --mesh-endpoint ADDRESS:PORT` (or a host's "
            "`hangar agent run --mesh-endpoint ADDRESS:PORT`): the address people's devices reach",
        )
    prefix = installation_prefix(session)
    network = org_network(session, org_id, network_name)
    net = addressing.network_prefix(prefix, network.number)
    slice_ = addressing.host_slice(net, gateway.number)
    used = session.execute(
        select(func.count())
        .select_from(WireguardPeer)
        .where(WireguardPeer.gateway_host_id == gateway.id)
    ).scalar_one()
    address = ipaddress.IPv6Address(int(slice_.network_address) | (USER_PEER_BASE + used + 1))
    private, public = new_keypair()
    peer = WireguardPeer(
        id=new_id("wgp"),
        org_id=org_id,
        name=name,
        network=network_name,
        public_key=public,
        address=str(address),
        gateway_host_id=gateway.id,
        created_by=actor,
        created_at=dt.datetime.now(dt.UTC),
    )
    session.add(peer)
    session.flush()
    dns = resolver_address(prefix)
    assert gateway.mesh_public_key is not None and gateway.mesh_endpoint is not None
    config = "\n".join(
        [
            f"# Hangar: {name} on network {network_name} (through host {gateway.name})",
            "[Interface]",
            f"PrivateKey = {private}",
            f"Address = {address}/128",
            f"DNS = {dns}, internal",
            "",
            "[Peer]",
            f"PublicKey = {gateway.mesh_public_key}",
            f"Endpoint = {gateway.mesh_endpoint}",
            f"AllowedIPs = {net}, {dns}/128",
            "PersistentKeepalive = 25",
            "",
        ]
    )
    return PeerConfig(peer, config)

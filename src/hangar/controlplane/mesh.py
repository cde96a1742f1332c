"""The mesh's control-plane side: hosts' keys and endpoints in, peer lists out.

A host registers its WireGuard public key and endpoint; every host is told
its peers: each other active host with a key, and that host's slices of
every private network as the peer's allowed IPs. A removed or cordoned
host's machines are gone or going; a removed host is dropped from every
list at once.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.controlplane.machines import installation_prefix
from hangar.net import addressing
from hangar.net.wireguard import Peer, validate_endpoint, validate_public_key
from hangar.store.tables import Host, Network

__all__ = ["mesh_peers", "register_mesh"]


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
    return peers

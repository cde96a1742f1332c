"""The private network's address layout (pure): the one module that owns it.

::

    installation prefix   fdXX:XXXX::/32     chosen at random at `server init` (RFC 4193)
    network               <prefix>:NNNN::/48 one per private network (an org's default
                                             network and each named one), N = 1..65535
    host slice            <network>:HHHH::/64 one per host in each network, H = 1..65535
    machine               <slice>::<index>/128 one per machine, index = 2..2^32-1

Inside a slice, ``::1`` is reserved for the host itself. A machine's packets
leave through a point-to-point veth whose host end answers at ``fe80::1``, so
a machine needs no knowledge of the layout beyond its own /128.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable

from hangar.errors import Conflict, ValidationError

__all__ = [
    "GATEWAY_LINK_LOCAL",
    "host_slice",
    "machine_address",
    "network_prefix",
    "new_installation_prefix",
    "next_machine_address",
    "parse_installation_prefix",
]

GATEWAY_LINK_LOCAL = ipaddress.IPv6Address("fe80::1")
MAX_NETWORKS = 0xFFFF
MAX_HOSTS = 0xFFFF
FIRST_MACHINE = 2
MAX_MACHINE_INDEX = 0xFFFFFFFF


def new_installation_prefix() -> ipaddress.IPv6Network:
    """A random /32 inside fd00::/8 (the locally assigned half of the ULA range)."""
    bits = (0xFD << 120) | (secrets.randbits(24) << 96)
    return ipaddress.IPv6Network((bits, 32))


def parse_installation_prefix(text: str) -> ipaddress.IPv6Network:
    try:
        prefix = ipaddress.IPv6Network(text)
    except ValueError as exc:
        raise ValidationError(f"{text!r} is not an IPv6 prefix") from exc
    if prefix.prefixlen != 32 or not prefix.subnet_of(ipaddress.IPv6Network("fd00::/8")):
        raise ValidationError(f"{text!r} must be a /32 inside fd00::/8")
    return prefix


def network_prefix(installation: ipaddress.IPv6Network, network: int) -> ipaddress.IPv6Network:
    if not 1 <= network <= MAX_NETWORKS:
        raise Conflict(
            f"network number {network} is outside 1..{MAX_NETWORKS}: the "
            "installation's address space for networks is exhausted"
        )
    base = int(installation.network_address) | (network << 80)
    return ipaddress.IPv6Network((base, 48))


def host_slice(network: ipaddress.IPv6Network, host: int) -> ipaddress.IPv6Network:
    if network.prefixlen != 48:
        raise ValidationError("a host slice is cut from a /48 network")
    if not 1 <= host <= MAX_HOSTS:
        raise Conflict(f"host number {host} is outside 1..{MAX_HOSTS}")
    return ipaddress.IPv6Network((int(network.network_address) | (host << 64), 64))


def machine_address(slice_: ipaddress.IPv6Network, index: int) -> ipaddress.IPv6Address:
    if slice_.prefixlen != 64:
        raise ValidationError("a machine address is cut from a /64 host slice")
    if not FIRST_MACHINE <= index <= MAX_MACHINE_INDEX:
        raise Conflict(
            f"machine index {index} is outside {FIRST_MACHINE}..{MAX_MACHINE_INDEX}: "
            "the host's address slice is exhausted"
        )
    return ipaddress.IPv6Address(int(slice_.network_address) | index)


def next_machine_address(
    slice_: ipaddress.IPv6Network, taken: Iterable[ipaddress.IPv6Address]
) -> ipaddress.IPv6Address:
    """The address for a new machine in a host's slice: one past the highest taken there.

    Addresses outside the slice are ignored. Indexes are handed out in
    order (a freed one below the highest is not reused); Conflict once the
    slice's last index is taken.
    """
    indexes = {int(address) & MAX_MACHINE_INDEX for address in taken if address in slice_}
    return machine_address(slice_, max(indexes, default=FIRST_MACHINE - 1) + 1)

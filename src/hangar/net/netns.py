"""A machine's network: the veth that joins its namespace to its host.

runc creates each machine's network namespace (so it belongs to the machine's
user namespace, and ``runc exec`` can join it). Before the machine's process
starts, runc's ``createRuntime`` hook (``hangar.net.hook``) calls ``attach``,
which makes a veth pair: ``eth0`` inside with the machine's /128 and a default
route to ``fe80::1``; the host end (``hv<hash>``) answers at ``fe80::1`` and
carries a /128 route to the machine. A failure part-way removes what this
call made, and the hook's failure stops the machine from starting.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
from dataclasses import dataclass

from hangar import hostcmd
from hangar.domain.addressing import GATEWAY_LINK_LOCAL
from hangar.errors import CommandError, Conflict, ValidationError

__all__ = ["MachineNetwork", "attach", "detach", "host_interface", "link_exists", "names"]


@dataclass(frozen=True)
class MachineNetwork:
    machine_id: str
    host_interface: str
    address: ipaddress.IPv6Address


def names(machine_id: str) -> tuple[str, str]:
    """Host-side and temporary peer interface names (each at most 15 bytes)."""
    if not machine_id or len(machine_id) > 60 or "/" in machine_id:
        raise ValidationError(f"bad machine id {machine_id!r}")
    digest = hashlib.sha256(machine_id.encode()).hexdigest()[:12]
    return f"hv{digest}", f"hp{digest}"


def link_exists(name: str) -> bool:
    """Whether this network namespace has interface ``name`` (asked over netlink, not
    /sys, which shows the namespace it was mounted in)."""
    return hostcmd.run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def host_interface(machine_id: str) -> str:
    return names(machine_id)[0]


def attach(machine_id: str, address: ipaddress.IPv6Address, pid: int) -> MachineNetwork:
    """Plumb the machine whose init is ``pid`` (in its own network namespace)."""
    address = ipaddress.IPv6Address(address)
    host_if, peer_if = names(machine_id)
    if link_exists(host_interface(machine_id)):
        raise Conflict(f"machine {machine_id} already has a network on this host")
    gateway = str(GATEWAY_LINK_LOCAL)
    inside = ["nsenter", "-t", str(pid), "-n", "--"]
    hostcmd.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if], timeout=15)
    steps = [
        ["ip", "link", "set", peer_if, "netns", str(pid)],
        [*inside, "ip", "link", "set", peer_if, "name", "eth0"],
        [*inside, "ip", "link", "set", "lo", "up"],
        [*inside, "ip", "-6", "addr", "add", f"{address}/128", "dev", "eth0", "nodad"],
        [*inside, "ip", "link", "set", "eth0", "up"],
        [*inside, "ip", "-6", "route", "add", "default", "via", gateway, "dev", "eth0"],
        ["ip", "-6", "addr", "add", f"{gateway}/64", "dev", host_if, "nodad"],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-6", "route", "add", f"{address}/128", "dev", host_if],
    ]
    try:
        for argv in steps:
            hostcmd.run(argv, timeout=15)
    except CommandError:
        detach(machine_id)
        raise
    return MachineNetwork(machine_id, host_if, address)


def detach(machine_id: str) -> None:
    """Remove the machine's veth (its peer goes with it); a no-op if already gone."""
    host_if, peer_if = names(machine_id)
    for name in (host_if, peer_if):
        with contextlib.suppress(CommandError):
            hostcmd.run(["ip", "link", "del", name], timeout=15)

"""Isolation with nftables: one table, ``inet hangar``, replaced whole and atomically.

``render`` is pure: a ``FirewallSpec`` (the machines on this host, their
interfaces, addresses, networks and egress) becomes the text of the table.
``Firewall.apply`` checks it with ``nft -c`` and loads it with ``nft -f``; the
file deletes and re-creates the table inside one transaction, so there is
never a moment without rules, and a ruleset the kernel refuses changes
nothing. Connection tracking survives a reload, so established flows of
healthy machines are not dropped when the agent restarts and re-applies.

What the table enforces, for traffic of this host's machines' interfaces
(the host ends of their veths, see ``net.netns``; the table is this agent's
own, named after its host, and touches no other interface):

* **anti-spoofing** (prerouting): a packet from a machine's interface must
  carry that machine's address, or a link-local one (never forwarded);
  anything else is counted (``spoofed``) and dropped, as is IPv4. A
  reverse-path check drops what the routing table would not send back there.
* **isolation** (forward, default drop): a machine reaches machines of its
  own private network only (counted: ``cross_network``); the world only if
  its app allows egress (NAT); nothing reaches a machine unless it answers a
  flow the machine may have, comes from a machine of its network, or from the
  host itself (health checks, the edge).
* **the host** (input): machines reach only the DNS resolver's address and
  neighbour discovery; everything else is counted (``to_host``) and dropped.

Other traffic of the host is left alone: the base chains accept what is not
a machine's. A machine's interface is in the table before the machine starts
(the table follows the host's assignments), so it never runs unfiltered.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hangar import hostcmd
from hangar.errors import CommandError

__all__ = [
    "Firewall",
    "FirewallSpec",
    "MachineRule",
    "Traffic",
    "counter_values",
    "counters",
    "render",
    "table_name",
    "traffic",
]

log = logging.getLogger("hangar.net")

ND_TYPES = "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert"


def table_name(host_id: str) -> str:
    """This host's table: one per agent, so two agents never rewrite each other's."""
    safe = "".join(c if c.isalnum() else "_" for c in host_id)[-40:]
    return f"hangar_{safe}"


@dataclass(frozen=True)
class MachineRule:
    interface: str
    address: ipaddress.IPv6Address
    egress: bool = True

    @property
    def network(self) -> ipaddress.IPv6Network:
        """The machine's private network: the /48 its address is in."""
        return ipaddress.IPv6Network((int(self.address) >> 80 << 80, 48))


@dataclass(frozen=True)
class FirewallSpec:
    table: str
    installation: ipaddress.IPv6Network  # the /32 every private address is in
    machines: tuple[MachineRule, ...] = ()
    dns: ipaddress.IPv6Address | None = None  # the resolver machines may ask
    # Interfaces that carry other hosts' machines (the WireGuard mesh).
    mesh_interfaces: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Traffic:
    """A machine's traffic through this host since its interface was first filtered."""

    rx_bytes: int  # to the machine (delivered to its interface)
    rx_packets: int
    tx_bytes: int  # from the machine (past the spoofing checks)
    tx_packets: int


def _rx(interface: str) -> str:
    return f"rx_{interface}"


def _tx(interface: str) -> str:
    return f"tx_{interface}"


def _counter(name: str, carry: dict[str, tuple[int, int]]) -> str:
    packets, octets = carry.get(name, (0, 0))
    return f"    counter {name} {{ packets {packets} bytes {octets} }}"


def _elements(items: list[str]) -> str:
    return "elements = { " + ", ".join(items) + " }" if items else ""


def render(spec: FirewallSpec, carry: dict[str, tuple[int, int]] | None = None) -> str:
    """The whole ``inet hangar`` table, as one atomic ``nft -f`` transaction.

    Each machine has two named counters, ``rx_<interface>`` (to it) and
    ``tx_<interface>`` (from it); ``carry`` gives their (packets, bytes) to
    start from, so replacing the table does not set them back to zero.
    """
    carry = carry or {}
    machines = sorted(spec.machines, key=lambda m: m.interface)
    ifaces = [f'"{m.interface}"' for m in machines]
    sources = [f'"{m.interface}" . {m.address}' for m in machines]
    networks = sorted({m.network for m in machines}, key=lambda n: int(n.network_address))
    same = [f"{n} . {n}" for n in networks]
    egress = [f'"{m.interface}"' for m in machines if m.egress]
    prefix = spec.installation
    mesh = ", ".join(f'"{i}"' for i in spec.mesh_interfaces)
    dns_rules = []
    if spec.dns is not None:
        dns_rules = [
            f"        ip6 daddr {spec.dns} udp dport 53 accept",
            f"        ip6 daddr {spec.dns} tcp dport 53 accept",
        ]
    lines = [
        "# Written by the Hangar agent; replaced whole on every change.",
        f"table inet {spec.table} {{}}",
        f"delete table inet {spec.table}",
        f"table inet {spec.table} {{",
        "    counter spoofed {}",
        "    counter cross_network {}",
        "    counter to_host {}",
        "    counter no_egress {}",
        *(_counter(f(m.interface), carry) for m in machines for f in (_rx, _tx)),
        "    set ifaces {",
        "        type ifname",
        f"        {_elements(ifaces)}",
        "    }",
        "    set machines {",
        "        type ifname . ipv6_addr",
        f"        {_elements(sources)}",
        "    }",
        "    set same_network {",
        "        type ipv6_addr . ipv6_addr",
        "        flags interval",
        f"        {_elements(same)}",
        "    }",
        "    set egress {",
        "        type ifname",
        f"        {_elements(egress)}",
        "    }",
        "",
        "    chain prerouting {",
        "        type filter hook prerouting priority raw; policy accept;",
        "        iifname != @ifaces accept",
        "        meta nfproto ipv4 counter name spoofed drop",
        # A link-local source names no one beyond this point-to-point link and
        # is never forwarded; what it may reach on the host is decided in input.
        "        ip6 saddr fe80::/10 accept",
        "        iifname . ip6 saddr != @machines counter name spoofed drop",
        "        fib saddr . iif oif missing counter name spoofed drop",
        *(f'        iifname "{m.interface}" counter name {_tx(m.interface)}' for m in machines),
        "    }",
        "",
        # What reaches a machine's interface: after every filter, so nothing
        # dropped on its way is counted as delivered.
        "    chain accounting {",
        "        type filter hook postrouting priority filter; policy accept;",
        *(f'        oifname "{m.interface}" counter name {_rx(m.interface)}' for m in machines),
        "    }",
        "",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        "        iifname @ifaces jump from_machine",
        "        oifname @ifaces jump to_machine",
        "    }",
        "",
        "    chain from_machine {",
        "        ct state established,related accept",
        "        ct state invalid drop",
        f"        ip6 daddr {prefix} jump private",
        "        iifname @egress accept",
        "        counter name no_egress drop",
        "    }",
        "",
        "    chain private {",
        "        ip6 saddr . ip6 daddr @same_network accept",
        "        counter name cross_network drop",
        "    }",
        "",
        "    chain to_machine {",
        "        ct state established,related accept",
    ]
    if mesh:
        lines.append(f"        iifname {{ {mesh} }} ip6 saddr . ip6 daddr @same_network accept")
    lines += [
        "        counter name cross_network drop",
        "    }",
        "",
        "    chain input {",
        "        type filter hook input priority filter; policy accept;",
        "        iifname @ifaces jump machine_to_host",
        "    }",
        "",
        "    chain machine_to_host {",
        "        ct state established,related accept",
        f"        icmpv6 type {{ {ND_TYPES}, echo-request }} accept",
        "        ip6 daddr ff02::/16 meta l4proto ipv6-icmp accept",
        *dns_rules,
        "        counter name to_host drop",
        "    }",
        "",
        "    chain postrouting {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        f"        ip6 saddr {prefix} ip6 daddr != {prefix} oifname != @ifaces masquerade",
        "    }",
        "}",
    ]
    return "\n".join(line for line in lines if line.strip() or line == "") + "\n"


class Firewall:
    """This host's ``inet hangar`` table; applied only when what it says changes."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._applied: str | None = None
        self._forwarding_on = False
        self._gone = False  # known to have no table loaded

    def check(self, ruleset: str) -> None:
        """``nft -c``: CommandError with nft's own words if the kernel would refuse it."""
        self._nft(ruleset, check=True)

    def apply(self, spec: FirewallSpec) -> bool:
        """Load the table for ``spec`` (checked first); True if it changed."""
        if not spec.machines:
            # No machine here: no interface to guard, and no table left behind.
            # The kernel is asked once; after that this object knows it is gone.
            if self._gone:
                return False
            changed = self._applied is not None or self._present(spec.table)
            if changed:
                self.remove(spec.table)
            self._gone = True
            return changed
        ruleset = render(spec)
        if ruleset == self._applied:
            return False
        self._forwarding()
        # The machines' traffic counters go on from where they are: the new
        # table starts them at the old one's values (what passes between the
        # read and the swap, a few packets at most, goes uncounted).
        carry = counter_values(spec.table) if not self._gone else {}
        loaded = render(spec, carry)
        self._nft(loaded, check=True)
        self._nft(loaded, check=False)
        self._applied = ruleset
        self._gone = False
        log.info(
            "nftables: %d machines, %d networks",
            len(spec.machines),
            len({m.network for m in spec.machines}),
        )
        return True

    def _forwarding(self) -> None:
        """Machines reach each other through the host: it must forward IPv6."""
        if self._forwarding_on:
            return
        hostcmd.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"], timeout=15)
        self._forwarding_on = True

    def _nft(self, ruleset: str, *, check: bool) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.work_dir, prefix="ruleset.", suffix=".nft", delete=True
        ) as handle:
            handle.write(ruleset)
            handle.flush()
            argv = ["nft", *(["-c"] if check else []), "-f", handle.name]
            try:
                hostcmd.run(argv, timeout=60)
            except CommandError:
                if not check:
                    self._applied = None
                raise

    def _present(self, table: str) -> bool:
        found = hostcmd.run(["nft", "list", "table", "inet", table], check=False)
        return found.returncode == 0

    def remove(self, table: str) -> None:
        """Drop the table (the host stops running machines)."""
        hostcmd.run(["nft", "delete", "table", "inet", table], check=False)
        self._applied = None


def counter_values(table: str) -> dict[str, tuple[int, int]]:
    """(packets, bytes) of each of the table's named counters (empty if it is not loaded)."""
    result = hostcmd.run(["nft", "-j", "list", "counters", "table", "inet", table], check=False)
    if result.returncode != 0:
        return {}
    out: dict[str, tuple[int, int]] = {}
    try:
        items = json.loads(result.stdout).get("nftables", [])
        for item in items:
            counter = item.get("counter")
            if counter:
                out[str(counter["name"])] = (int(counter["packets"]), int(counter["bytes"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CommandError(["nft", "-j", "list", "counters"], 0, f"unreadable: {exc}") from exc
    return out


def counters(table: str) -> dict[str, int]:
    """Packets each of the table's named counters has seen (empty if it is not loaded)."""
    return {name: packets for name, (packets, _) in counter_values(table).items()}


def traffic(table: str) -> dict[str, Traffic]:
    """Each filtered interface's traffic, by interface name (empty if no table is loaded)."""
    values = counter_values(table)
    out = {}
    for name, (rx_packets, rx_bytes) in values.items():
        if not name.startswith("rx_"):
            continue
        interface = name[3:]
        tx_packets, tx_bytes = values.get(_tx(interface), (0, 0))
        out[interface] = Traffic(rx_bytes, rx_packets, tx_bytes, tx_packets)
    return out

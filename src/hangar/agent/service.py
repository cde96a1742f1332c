"""The agent's loop: assignments down, observations up, through a ``Link``.

Each ``tick`` asks the link for the machines assigned to this host (with
their release's image and configuration), reconciles them through the
``Reconciler``, runs due health checks, and reports what it observed:
lifecycle state, the version running, health, exit code. Desired state flows
down and observed state flows up; the agent never changes what is desired.

Two links exist. ``StoreLink`` is the all-in-one host's: it reads and
writes the store in-process. ``agent.remote.ApiLink`` is every other
host's: it long-polls the control plane over mutual TLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hangar.agent.reconciler import Assignment, Reconciler
from hangar.controlplane.hostlink import apply_report, dns_records, host_assignments
from hangar.controlplane.mesh import mesh_peers, register_mesh
from hangar.domain.routing import RoutingTable
from hangar.errors import ConfigError, HangarError
from hangar.net.dns import InternalDns, Record, resolver_address
from hangar.store.db import Database
from hangar.store.tables import Host

if TYPE_CHECKING:
    from hangar.edge.haproxy import Edge
    from hangar.net.nftables import Firewall
    from hangar.net.wireguard import Mesh, Peer

__all__ = ["Agent", "Link", "LocalAgent", "StoreLink", "host_memory_mb"]

log = logging.getLogger("hangar.agent")


def host_memory_mb() -> int:
    """This host's memory, MB, as placement counts it (0 if it cannot tell)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Link(Protocol):
    """How an agent hears its assignments and reports back."""

    def assignments(self, wait: float) -> list[Assignment]:
        """This host's assignments; may wait up to ``wait`` seconds for a change."""
        ...

    def report(self, infos: Mapping[str, Mapping[str, Any]], errors: Mapping[str, str]) -> None: ...


class StoreLink:
    """The control plane's own host: the store, in-process."""

    def __init__(self, db: Database, host_id: str) -> None:
        self.db = db
        self.host_id = host_id

    def assignments(self, wait: float) -> list[Assignment]:
        # The server's loop thread is woken on every change; no need to wait here.
        with self.db.read() as session:
            return host_assignments(session, self.host_id)

    def report(self, infos: Mapping[str, Mapping[str, Any]], errors: Mapping[str, str]) -> None:
        with self.db.write() as session:
            apply_report(session, self.host_id, infos, errors)


class Agent:
    def __init__(
        self,
        link: Link,
        reconciler: Reconciler,
        host_id: str,
        *,
        edge: Edge | None = None,
        routes: Callable[[], RoutingTable] | None = None,
        firewall: Firewall | None = None,
        dns_records: Callable[[], list[Record]] | None = None,
        mesh: Mesh | None = None,
        mesh_peers: Callable[[], list[Peer]] | None = None,
        mesh_report: Callable[[int], None] | None = None,
    ) -> None:
        self.mesh = mesh
        self.mesh_peers = mesh_peers
        self.mesh_report = mesh_report
        self._mesh_reported_at = 0.0
        self.link = link
        self.reconciler = reconciler
        self.host_id = host_id
        self.edge = edge
        self.routes = routes
        self.firewall = firewall
        self.dns_records = dns_records
        self.dns: InternalDns | None = None
        self._dns_retry_at = 0.0
        self._dns_refreshed_at = 0.0
        self._installation: ipaddress.IPv6Network | None = None

    def apply_mesh(self) -> None:
        """Bring this host's WireGuard interface to the control plane's peer list."""
        if self.mesh is None or self.mesh_peers is None:
            return
        try:
            self.mesh.apply(self.mesh_peers())
            if self.mesh_report is not None and time.time() - self._mesh_reported_at >= 10:
                self.mesh_report(max(self.mesh.peers().values(), default=0))
                self._mesh_reported_at = time.time()
        except HangarError as exc:
            log.error("mesh: %s", exc.message)

    def serve_dns(self) -> None:
        """Start (once) and refresh this host's .internal resolver; a failure is logged."""
        if self.dns_records is None or self._installation is None:
            return
        if self.dns is None:
            self.dns = InternalDns(self._installation)
        # Names change with machines starting anywhere; once a second is soon
        # enough for answers that live 5 s, and keeps the query off every round.
        if self.dns.running and time.monotonic() - self._dns_refreshed_at < 1.0:
            return
        try:
            self.dns.update(self.dns_records())
            self._dns_refreshed_at = time.monotonic()
            if not self.dns.running and time.time() >= self._dns_retry_at:
                self.dns.start()
                self.reconciler.nameservers = [self.dns.address]
        except (HangarError, OSError) as exc:
            self._dns_retry_at = time.time() + 30
            log.error("internal DNS: %s; trying again in 30 s", getattr(exc, "message", exc))

    def apply_firewall(self, assignments: list[Assignment]) -> None:
        """This host's nftables table for the machines it should run; raises if refused.

        Applied before the reconciler starts anything, so a machine's interface
        is filtered from its first packet.
        """
        for want in assignments:
            if want.address is not None and self._installation is None:
                first = int(ipaddress.IPv6Address(want.address))
                self._installation = ipaddress.IPv6Network((first >> 96 << 96, 32))
        if self.firewall is None:
            return
        from hangar.net.netns import names
        from hangar.net.nftables import FirewallSpec, MachineRule, table_name

        rules = []
        for want in assignments:
            if want.address is None or want.state == "destroyed":
                continue
            address = ipaddress.IPv6Address(want.address)
            rules.append(MachineRule(names(want.machine_id)[0], address, want.egress))
        if self._installation is None:
            return  # no machine has ever been assigned here: nothing to protect
        dns = resolver_address(self._installation) if self.dns_records is not None else None
        self.firewall.apply(
            FirewallSpec(
                table=table_name(self.host_id),
                installation=self._installation,
                machines=tuple(rules),
                dns=dns,
                mesh_interfaces=(self.mesh.interface,) if self.mesh is not None else (),
            )
        )

    def apply_edge(self) -> None:
        """Bring this host's edge up to the routing table; a failure keeps the old one."""
        if self.edge is None or self.routes is None:
            return
        try:
            self.edge.apply(self.routes())
        except HangarError as exc:
            log.error("edge: %s", exc.message)

    def tick(self, now: float, wait: float = 0.0) -> float | None:
        """One round; returns when something is next due (a check, a restart), if known."""
        assignments = self.link.assignments(wait)
        if wait > 0:
            now = time.time()  # the link may have waited for a change
        # A machine's filter exists before the machine does; a ruleset the kernel
        # refuses leaves the old one in force and starts nothing new this round.
        self.apply_firewall(assignments)
        self.apply_mesh()
        self.serve_dns()
        # The edge next: a machine about to be replaced leaves rotation before
        # the reconciler stops it.
        self.apply_edge()
        outcomes = self.reconciler.reconcile(assignments, now)
        waits = [o.action.at for o in outcomes if o.action.at is not None]
        errors = {o.action.machine_id: o.error for o in outcomes if not o.ok}
        for machine_id, error in errors.items():
            log.warning("machine %s: %s", machine_id, error)
        self.reconciler.health.tick(now)
        # Read the runtime's files before the report takes any lock, so API
        # writes and the deployer never wait on this host's disk.
        infos = {a.machine_id: self.reconciler.describe(a.machine_id) for a in assignments}
        self.link.report(infos, errors)
        due = [t for t in (*waits, self.reconciler.health.next_due()) if t is not None]
        return min(due) if due else None


class LocalAgent(Agent):
    """The all-in-one host's agent: ``Agent`` over a ``StoreLink``."""

    def __init__(
        self,
        db: Database,
        reconciler: Reconciler,
        host_id: str,
        *,
        edge: Edge | None = None,
        routes: Callable[[], RoutingTable] | None = None,
        firewall: Firewall | None = None,
        dns: bool = False,
        mesh: Mesh | None = None,
        mesh_endpoint: str | None = None,
    ) -> None:
        def records() -> list[Record]:
            with db.read() as session:
                return dns_records(session)

        def peers() -> list[Peer]:
            with db.read() as session:
                return mesh_peers(session, host_id)

        def report(latest: int) -> None:
            with db.write() as session:
                host = session.get(Host, host_id)
                if host is not None:
                    host.mesh_handshake_at = (
                        dt.datetime.fromtimestamp(latest, dt.UTC) if latest else None
                    )

        if mesh is not None:
            if mesh_endpoint is None:
                raise ConfigError("this host's mesh needs an endpoint", hint="set mesh_endpoint")
            # The control plane's own host registers in-process, as joined hosts do over mTLS.
            with db.write() as session:
                host = session.get(Host, host_id)
                assert host is not None
                register_mesh(session, host, mesh.public_key(), mesh_endpoint)
        super().__init__(
            StoreLink(db, host_id),
            reconciler,
            host_id,
            edge=edge,
            routes=routes,
            firewall=firewall,
            dns_records=records if dns else None,
            mesh=mesh,
            mesh_peers=peers if mesh is not None else None,
            mesh_report=report if mesh is not None else None,
        )

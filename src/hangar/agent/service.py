"""The agent's loop: assignments down, observations up, through a ``ControlPlaneLink``.

Each ``tick`` asks the link for the machines assigned to this host (with
their release's image and configuration), reconciles them through the
``Reconciler``, runs due health checks, and reports what it observed:
lifecycle state, the version running, health, exit code. Desired state flows
down and observed state flows up; the agent never changes what is desired.

The agent knows the control plane only through the link
(``hangar.contract.links.ControlPlaneLink``): the all-in-one server hands it
an in-process link, a joined host one over mutual TLS. The same agent runs
on both.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hangar.agent.appmetrics import AppMetrics
from hangar.agent.edgemetrics import EdgeMetrics
from hangar.agent.offload import Offload
from hangar.agent.reconciler import Reconciler
from hangar.agent.volumejobs import VolumeJobs
from hangar.contract.assignments import Assignment, MachineStatus
from hangar.contract.links import ControlPlaneLink
from hangar.errors import HangarError
from hangar.net.dns import InternalDns, resolver_address

if TYPE_CHECKING:
    from hangar.edge.haproxy import Edge
    from hangar.net.nftables import Firewall, Traffic
    from hangar.net.wireguard import Mesh

__all__ = ["Agent", "host_memory_mb"]

log = logging.getLogger("hangar.agent")

_STATUS_FIELDS = frozenset(f.name for f in dataclasses.fields(MachineStatus))


def host_memory_mb() -> int:
    """This host's memory, MB, as placement counts it (0 if it cannot tell)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def machine_status(info: Mapping[str, Any]) -> MachineStatus:
    """The contract's view of what the reconciler knows of a machine."""
    return MachineStatus.from_json({k: v for k, v in info.items() if k in _STATUS_FIELDS})


class Agent:
    """One host's machines, firewall, mesh, resolver and edge, kept as the link says.

    The optional parts are on when given: ``edge`` (an edge host), ``firewall``
    (nftables isolation), ``dns`` (this host's .internal resolver), ``mesh``
    with ``mesh_endpoint`` (WireGuard to other hosts).
    """

    def __init__(
        self,
        link: ControlPlaneLink,
        reconciler: Reconciler,
        host_id: str,
        *,
        edge: Edge | None = None,
        firewall: Firewall | None = None,
        dns: bool = False,
        mesh: Mesh | None = None,
        mesh_endpoint: str | None = None,
        app_metrics: AppMetrics | None = None,
        edge_metrics: EdgeMetrics | None = None,
    ) -> None:
        if mesh is not None and not mesh_endpoint:
            raise HangarError("this host's mesh needs an endpoint", hint="set mesh_endpoint")
        self.link = link
        self.reconciler = reconciler
        # Snapshots, backups and drills of this host's volumes, off the loop.
        self.volume_jobs: VolumeJobs | None = None
        self.host_id = host_id
        self.edge = edge
        self.firewall = firewall
        self.serves_dns = dns
        self.mesh = mesh
        self.mesh_endpoint = mesh_endpoint
        self.app_metrics = app_metrics
        self.edge_metrics = edge_metrics
        if app_metrics is not None and firewall is not None and app_metrics.network is None:
            app_metrics.network = self._traffic
        self._mesh_registered = False
        self._mesh_reported_at = 0.0
        # Each mesh peer's latest handshake (unix time), as last read; None: no mesh.
        self.mesh_handshakes: dict[str, int] | None = None
        self.dns: InternalDns | None = None
        self._dns_retry_at = 0.0
        self._dns_refreshed_at = 0.0
        self._installation: ipaddress.IPv6Network | None = None

    def apply_mesh(self) -> None:
        """Bring this host's WireGuard interface to the control plane's peer list."""
        if self.mesh is None or self.mesh_endpoint is None:
            return
        try:
            if not self._mesh_registered:
                self.link.register_mesh(self.mesh.public_key(), self.mesh_endpoint)
                self._mesh_registered = True
            self.mesh.apply(self.link.peers())
            if time.time() - self._mesh_reported_at >= 10:
                self.mesh_handshakes = self.mesh.peers()
                self.link.report_mesh(max(self.mesh_handshakes.values(), default=0))
                self._mesh_reported_at = time.time()
        except HangarError as exc:
            log.error("mesh: %s", exc.message)

    def serve_dns(self) -> None:
        """Start (once) and refresh this host's .internal resolver; a failure is logged."""
        if not self.serves_dns or self._installation is None:
            return
        if self.dns is None:
            self.dns = InternalDns(self._installation)
        # Names change with machines starting anywhere; once a second is soon
        # enough for answers that live 5 s, and keeps the query off every round.
        if self.dns.running and time.monotonic() - self._dns_refreshed_at < 1.0:
            return
        try:
            self.dns.update(self.link.names())
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
        dns = resolver_address(self._installation) if self.serves_dns else None
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
        if self.edge is None:
            return
        try:
            self.edge.apply(self.link.routes())
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
        self.sync_volumes()
        waits = [o.action.at for o in outcomes if o.action.at is not None]
        errors = {o.action.machine_id: o.error for o in outcomes if not o.ok}
        for machine_id, error in errors.items():
            log.warning("machine %s: %s", machine_id, error)
        self.reconciler.health.tick(now)
        # Read the runtime's files before the report takes any lock, so API
        # writes and the deployer never wait on this host's disk.
        statuses = {
            a.machine_id: machine_status(self.reconciler.describe(a.machine_id))
            for a in assignments
        }
        self.link.report(statuses, errors)
        self.ship_metrics(assignments, statuses)
        due = [t for t in (*waits, self.reconciler.health.next_due()) if t is not None]
        if any(pool.pending() for pool in self._pools()):
            due.append(time.time() + 0.5)  # collect what runs off the loop soon
        return min(due) if due else None

    def sync_volumes(self) -> None:
        """Say this host's backend; destroy the volumes no longer listed, grow the others."""
        volumes = self.reconciler.volumes
        if volumes is None:
            return
        try:
            desired = self.link.volumes(volumes.backend, volumes.online_resize)
        except HangarError as exc:
            log.warning("volumes: %s", exc.message)
            return
        in_use = self.reconciler.volumes_in_use()
        for error in volumes.sync(desired, in_use):
            log.warning("%s", error)
        stale = volumes.stale(in_use)
        if stale:
            try:
                killed = self.reconciler.kill_holders(stale)
            except HangarError as exc:
                log.warning("volumes %s lost their mounts: %s", ", ".join(stale), exc.message)
                killed = []
            if killed:
                log.warning(
                    "volumes %s lost their mounts: machines %s killed, to start again "
                    "with them mounted anew",
                    ", ".join(stale),
                    ", ".join(killed),
                )
        if self.volume_jobs is None:
            self.volume_jobs = VolumeJobs(self.link, volumes)
        try:
            self.volume_jobs.poll()
        except HangarError as exc:
            log.warning("volume jobs: %s", exc.message)

    def ship_metrics(
        self, assignments: list[Assignment], statuses: Mapping[str, MachineStatus]
    ) -> None:
        """Collect running machines' figures when due, and send up what is ready."""
        self.ship_edge_metrics()
        if self.app_metrics is None:
            return
        running = [
            a
            for a in assignments
            if a.state == "started" and statuses[a.machine_id].status == "running"
        ]
        self.app_metrics.tick(running)
        ready = self.app_metrics.take()
        if not ready:
            return
        try:
            self.link.report_metrics(ready)
        except HangarError as exc:
            log.warning("machines' metrics not sent: %s", exc.message)

    def _traffic(self) -> dict[str, Traffic]:
        """Each machine interface's traffic from this host's nftables counters."""
        from hangar.net.nftables import table_name, traffic

        return traffic(table_name(self.host_id))

    def ship_edge_metrics(self) -> None:
        """Read each app's figures at this host's edge when due, and send them up."""
        if self.edge_metrics is None or self.edge is None or not self.edge.running():
            return
        ready = self.edge_metrics.take()
        if not ready:
            return
        try:
            self.link.report_edge_metrics(ready)
        except HangarError as exc:
            log.warning("the edge's metrics not sent: %s", exc.message)

    def _pools(self) -> list[Offload]:
        scrapes = self.app_metrics.offload if self.app_metrics is not None else None
        pools = (self.reconciler.offload, self.reconciler.health.offload, scrapes)
        return [pool for pool in pools if pool is not None]

    def wake_on_finished_work(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when work running off the loop (a check, a stop) finishes."""
        for pool in self._pools():
            pool.on_done = wake

    def stop(self) -> None:
        """Stop what this agent serves in-process (machines and the edge keep running)."""
        if self.dns is not None:
            self.dns.stop()
        for pool in self._pools():
            pool.shutdown()

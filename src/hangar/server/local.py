"""The control plane's own host: its agent, linked to the control plane in-process.

``StoreLink`` is this host's ``ControlPlaneLink``: it calls the same
``AgentService`` that the agents' mutual-TLS API calls for joined hosts, so
the local agent is served exactly as a remote one. ``LocalMachines`` is the
other direction: the API reaching this host's machines (exec, logs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hangar.agent.assemble import AgentOptions, build_agent
from hangar.agent.service import Agent, host_memory_mb
from hangar.audit.log import AuditContext
from hangar.contract.assignments import Assignment, MachineStatus
from hangar.contract.execs import ExecResult
from hangar.contract.mesh import Peer
from hangar.contract.names import Record
from hangar.contract.volumejobs import VolumeJob, VolumeJobResult
from hangar.contract.volumes import HostVolume
from hangar.controlplane.agents import AgentService
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.domain.routing import RoutingTable
from hangar.edge.haproxy import EdgeConfig
from hangar.store.tables import Host
from hangar.telemetry.logfiles import read_since

__all__ = ["LocalMachines", "StoreLink", "local_agent"]


class StoreLink:
    """This host's link to the control plane: the agent service, in-process."""

    def __init__(self, service: AgentService) -> None:
        self.service = service

    @classmethod
    def for_host(cls, cp: ControlPlane, host_id: str, host_name: str = "") -> StoreLink:
        """The link of host ``host_id``, acting in the audit trail as that host."""
        actor = f"host:{host_name or host_id}"
        ctx = AuditContext(actor=actor, token_id=None, request_id=None, client_addr=None)
        return cls(AgentService(cp, host_id, ctx))

    def assignments(self, wait: float) -> list[Assignment]:
        # The server's loop thread is woken on every change; no need to wait here.
        return self.service.assignments()

    def report(self, statuses: Mapping[str, MachineStatus], errors: Mapping[str, str]) -> None:
        self.service.report(statuses, errors)

    def image(self, want: Assignment) -> str:
        return want.image  # the release's layout is on this host's disk

    def secrets(self, want: Assignment) -> dict[str, str]:
        return self.service.secrets(want.machine_id)

    def volume_keys(self, want: Assignment) -> dict[str, bytes]:
        return self.service.volume_keys(want.machine_id)

    def volumes(self, backend: str, grows_online: bool) -> list[HostVolume]:
        return self.service.volumes(backend, grows_online)

    def volume_jobs(self, recipient: str) -> list[tuple[VolumeJob, dict[str, str] | None]]:
        return self.service.volume_jobs(recipient)

    def volume_job_done(self, done: VolumeJobResult) -> None:
        self.service.volume_job_done(done)

    def volume_export(self, job_id: str, chunks: Iterator[bytes]) -> None:
        self.service.volume_export(job_id, chunks)

    def routes(self) -> RoutingTable:
        return self.service.routes()

    def names(self) -> list[Record]:
        return self.service.names()

    def peers(self) -> list[Peer]:
        return self.service.peers()

    def register_mesh(self, public_key: str, endpoint: str) -> None:
        self.service.register_mesh(public_key, endpoint)

    def report_mesh(self, latest_handshake: int) -> None:
        self.service.report_mesh(latest_handshake)

    def report_metrics(self, figures: Mapping[str, tuple[float, str]]) -> None:
        self.service.report_metrics(figures)

    def report_edge_metrics(self, figures: Mapping[str, tuple[float, str]]) -> None:
        self.service.report_edge_metrics(figures)


class LocalMachines:
    """The machines of the in-process agent, for the API (``HostMachines``)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.host_id = agent.host_id

    def exec(self, machine_id: str, argv: list[str], *, timeout: float) -> ExecResult:
        return self.agent.reconciler.runtime.exec(machine_id, argv, timeout=timeout)

    def logs(self, machine_id: str) -> list[dict[str, Any]]:
        return self.agent.reconciler.runtime.logs(machine_id)

    def logs_since(
        self, machine_id: str, cursor: dict[str, int] | None, budget: int
    ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
        return read_since(self.agent.reconciler.runtime.log_path(machine_id), cursor, budget)

    def edge(self) -> tuple[RoutingTable, Mapping[str, Any]] | None:
        if self.agent.edge is None:
            return None
        return self.agent.link.routes(), self.agent.edge.status()


def _edge_config(cp: ControlPlane) -> EdgeConfig:
    settings = cp.settings
    names = [n for n in settings.tls_hostnames if not n.replace(".", "").isdigit() and ":" not in n]
    return EdgeConfig(
        directory=settings.effective_edge_dir,
        bind_host=settings.edge_listen_host,
        http_port=settings.edge_http_port,
        https_port=settings.edge_https_port,
        metrics_port=settings.edge_metrics_port,
        acme_ca_file=settings.data_dir / "ca.crt",
        acme_verify_name="localhost" if "localhost" in names else (names or ["localhost"])[0],
    )


def local_agent(cp: ControlPlane) -> Agent:
    """The agent for this host, registered as host 1 on first start."""
    settings = cp.settings
    with cp.db.write() as session:
        host = register_local_host(
            session,
            name=settings.host_name or None,
            region=settings.region,
            memory_mb=host_memory_mb(),
        )
        # The host tells the truth about running the edge (`hosts list`), and
        # is served the routing table as any edge host is.
        row = session.get(Host, host.id)
        assert row is not None
        row.edge = settings.edge
    options = AgentOptions(
        agent_dir=settings.effective_agent_dir,
        host_id=host.id,
        edge=_edge_config(cp) if settings.edge else None,
        firewall=settings.firewall,
        dns=settings.dns,
        mesh_endpoint=settings.mesh_endpoint or None,
        mesh_port=settings.mesh_port,
        volume_backend=settings.volume_backend,
    )
    return build_agent(StoreLink.for_host(cp, host.id, host.name), options)

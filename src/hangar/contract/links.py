"""The two directions between the control plane and a host, as protocols.

``ControlPlaneLink`` is everything an agent asks of the control plane. The
all-in-one server implements it over the store, in-process; a joined host
implements it over the agents' mutual-TLS API. The agent is written against
this protocol alone, so both hosts run the same agent.

``HostMachines`` is what the control plane asks of the machines on its own
host (the in-process agent's runtime): a command's output, a machine's log.
Machines on other hosts are reached through their agents' long poll instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from hangar.contract.assignments import Assignment, MachineStatus
from hangar.contract.execs import ExecResult
from hangar.contract.mesh import Peer
from hangar.contract.names import Record
from hangar.contract.volumejobs import VolumeJob, VolumeJobResult
from hangar.contract.volumes import HostVolume
from hangar.domain.routing import RoutingTable

__all__ = ["ControlPlaneLink", "HostMachines"]


class ControlPlaneLink(Protocol):
    def assignments(self, wait: float) -> list[Assignment]:
        """This host's assignments; may wait up to ``wait`` seconds for a change."""
        ...

    def report(self, statuses: Mapping[str, MachineStatus], errors: Mapping[str, str]) -> None:
        """What this host observed of its machines, and the errors acting on them."""
        ...

    def image(self, want: Assignment) -> str:
        """The assignment's image as a layout on this host's disk (``oci:PATH[:TAG]``)."""
        ...

    def secrets(self, want: Assignment) -> dict[str, str]:
        """The secrets of a machine this host is starting (held only in memory)."""
        ...

    def volume_keys(self, want: Assignment) -> dict[str, bytes]:
        """The keys of the volumes a machine this host is starting mounts, by volume id
        (held only in memory; refused unless the machine is assigned to this host)."""
        ...

    def volumes(self, backend: str, grows_online: bool) -> list[HostVolume]:
        """The volumes that live on this host; says which backend the host encrypts with,
        and whether it can grow a volume while a machine uses it."""
        ...

    def volume_jobs(self, recipient: str) -> list[tuple[VolumeJob, dict[str, str] | None]]:
        """This host's pending volume jobs (now running); the repository's secrets of
        those that need it, sealed to ``recipient`` (a one-time X25519 public key)."""
        ...

    def volume_job_done(self, done: VolumeJobResult) -> None:
        """Report a job this host took as done or failed, with what it produced."""
        ...

    def volume_export(self, job_id: str, chunks: Iterator[bytes]) -> None:
        """Upload an export job's tar, relayed to the person who asked for it."""
        ...

    def routes(self) -> RoutingTable:
        """The edge's routing table, with the keys of its certificates (edge hosts only)."""
        ...

    def names(self) -> list[Record]:
        """Every started machine, for this host's .internal resolver."""
        ...

    def peers(self) -> list[Peer]:
        """This host's WireGuard peers."""
        ...

    def register_mesh(self, public_key: str, endpoint: str) -> None:
        """Tell the control plane this host's mesh key and endpoint."""
        ...

    def report_mesh(self, latest_handshake: int) -> None:
        """The newest handshake with any peer (unix time, 0 for none)."""
        ...

    def report_metrics(self, figures: Mapping[str, tuple[float, str]]) -> None:
        """Machines' figures for their organizations: (when collected, exposition text)."""
        ...

    def report_edge_metrics(self, figures: Mapping[str, tuple[float, str]]) -> None:
        """Apps' figures at this host's edge, by app name: (when read, exposition text)."""
        ...


class HostMachines(Protocol):
    """The machines on the control plane's own host, reached in-process."""

    host_id: str

    def exec(self, machine_id: str, argv: list[str], *, timeout: float) -> ExecResult: ...

    def logs(self, machine_id: str) -> list[dict[str, Any]]: ...

    def logs_since(
        self, machine_id: str, cursor: dict[str, int] | None, budget: int
    ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
        """Records after ``cursor`` (a position that survives rotation), about ``budget``
        bytes of them, and the cursor after them."""
        ...

    def edge(self) -> tuple[RoutingTable, Mapping[str, Any]] | None:
        """The table this host's edge serves and HAProxy's status; None without an edge."""
        ...

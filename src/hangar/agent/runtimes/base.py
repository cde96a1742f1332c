"""The runtime protocol every machine driver implements (runc now, microVMs later)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from pathlib import Path
from typing import Protocol

from hangar.contract.execs import ExecResult

__all__ = ["ExecResult", "MachineSpec", "Runtime", "RuntimeFactory", "RuntimeState"]


@dataclass(frozen=True)
class MachineSpec:
    """Everything a runtime needs to start one machine; nothing secret is logged from it."""

    id: str
    rootfs: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    cpus: int = 1
    memory_mb: int = 256
    pids_limit: int = 512
    address: IPv6Address | None = None  # private address; None: no network but loopback
    tmpfs_mb: int = 64
    hosts: dict[str, str] = field(default_factory=dict)
    nameservers: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # guest path -> content (secret)
    # Volumes: guest destination -> the host directory where its plaintext is mounted.
    volumes: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeState:
    """What the runtime observes of a machine."""

    status: str  # "running", "stopped" or "absent"
    pid: int | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    started: bool = True  # False: the runtime failed before the process ran


class Runtime(Protocol):
    """A machine driver: what the reconciler, the agent and the API ask of a host's machines.

    A driver keeps a handle per machine on disk (under the ``state_dir`` it
    was built with), so a driver built again after an agent restart lists,
    observes and stops the machines an earlier one started. Failures are
    HangarErrors: ``CommandError`` for a host command that failed, ``Conflict``
    and ``NotFound`` for a machine in the wrong state or not on this host.
    """

    name: str
    # The host uid a machine's root is (its user namespace's root): it owns
    # the top directory of each volume made for a machine.
    root_uid: int

    def start(self, spec: MachineSpec) -> RuntimeState:
        """Create and start a machine; on failure leave nothing behind."""
        ...

    def restart(self, spec: MachineSpec) -> RuntimeState:
        """Start a stopped machine again in place, keeping its handle and logs."""
        ...

    def state(self, machine_id: str) -> RuntimeState:
        """What runs now; ``absent`` for a machine this driver has no handle for."""
        ...

    def signal(self, machine_id: str, signal: str) -> None:
        """Send ``signal`` (e.g. ``"SIGTERM"``) to a running machine's process."""
        ...

    def stop(
        self, machine_id: str, *, signal: str = "SIGTERM", timeout: float = 10.0
    ) -> RuntimeState:
        """Send ``signal``, wait up to ``timeout``, then SIGKILL."""
        ...

    def exec(self, machine_id: str, argv: list[str], *, timeout: float = 60.0) -> ExecResult:
        """Run ``argv`` inside a running machine and wait for it."""
        ...

    def logs(self, machine_id: str) -> list[dict[str, str]]:
        """Every captured output record (``ts``, ``stream``, ``line``) still kept, oldest first."""
        ...

    def log_path(self, machine_id: str) -> Path:
        """The machine's current NDJSON output log (rotated ones lie beside it)."""
        ...

    def remove(self, machine_id: str) -> None:
        """Kill if running and remove every trace (bundle, cgroup, state, logs)."""
        ...

    def list(self) -> list[str]:
        """Machines this runtime has handles for, including ones started before a restart."""
        ...


RuntimeFactory = Callable[[Path, Path], Runtime]
"""Builds a driver from the agent's state directory and its bundles directory."""

"""The runtime protocol every machine driver implements (runc now, microVMs later)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv6Address
from pathlib import Path
from typing import Protocol

from hangar.contract.execs import ExecResult

__all__ = ["ExecResult", "MachineSpec", "Runtime", "RuntimeState"]


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


@dataclass(frozen=True)
class RuntimeState:
    """What the runtime observes of a machine."""

    status: str  # "running", "stopped" or "absent"
    pid: int | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    started: bool = True  # False: the runtime failed before the process ran


class Runtime(Protocol):
    name: str

    def start(self, spec: MachineSpec) -> RuntimeState:
        """Create and start a machine; on failure leave nothing behind."""
        ...

    def state(self, machine_id: str) -> RuntimeState: ...

    def signal(self, machine_id: str, signal: str) -> None: ...

    def stop(
        self, machine_id: str, *, signal: str = "SIGTERM", timeout: float = 10.0
    ) -> RuntimeState:
        """Send ``signal``, wait up to ``timeout``, then SIGKILL."""
        ...

    def exec(self, machine_id: str, argv: list[str], *, timeout: float = 60.0) -> ExecResult: ...

    def remove(self, machine_id: str) -> None:
        """Kill if running and remove every trace (bundle, cgroup, state, logs)."""
        ...

    def list(self) -> list[str]:
        """Machines this runtime has handles for, including ones started before a restart."""
        ...

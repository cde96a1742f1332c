"""What a host's agent shows Prometheus at scrape time: its machines and its mesh.

Counted as they happen (restarts, start latency, health checks) is in
``telemetry.metrics``; read here, when Prometheus asks, is what is a state
rather than an event: machines by state, each machine's CPU time, memory and
processes from its cgroup, and how long ago each mesh peer last shook hands.

Cgroups are read from cgroup v1 hierarchies (``cpuacct``, ``memory``,
``pids`` under ``hangar/<machine>``), or from the unified v2 hierarchy where
that is what the host has. A machine whose cgroup is gone (stopped, or never
started) has no usage series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hangar.agent.service import Agent

__all__ = ["AgentCollector", "CgroupUsage", "cgroup_usage"]

log = logging.getLogger("hangar.agent")

CGROUP_ROOT = Path("/sys/fs/cgroup")


class CgroupUsage:
    """A machine's CPU seconds, memory bytes and process count (None: not readable)."""

    def __init__(self, cpu_seconds: float | None, memory_bytes: int | None, pids: int | None):
        self.cpu_seconds = cpu_seconds
        self.memory_bytes = memory_bytes
        self.pids = pids


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _v2_cpu(path: Path) -> float | None:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        return None
    return None


def cgroup_usage(machine_id: str, root: Path = CGROUP_ROOT) -> CgroupUsage | None:
    """The machine's usage from its cgroup, v1 where present, else v2; None if it has none."""
    v1 = root / "cpuacct" / "hangar" / machine_id
    if v1.is_dir():
        nanoseconds = _read_int(v1 / "cpuacct.usage")
        return CgroupUsage(
            nanoseconds / 1e9 if nanoseconds is not None else None,
            _read_int(root / "memory" / "hangar" / machine_id / "memory.usage_in_bytes"),
            _read_int(root / "pids" / "hangar" / machine_id / "pids.current"),
        )
    v2 = root / "hangar" / machine_id
    if (v2 / "cgroup.procs").exists():
        return CgroupUsage(
            _v2_cpu(v2 / "cpu.stat"),
            _read_int(v2 / "memory.current"),
            _read_int(v2 / "pids.current"),
        )
    return None


class AgentCollector(Collector):
    """Machines by state, per-machine cgroup usage and mesh handshakes of one agent."""

    def __init__(self, agent: Agent, cgroup_root: Path = CGROUP_ROOT) -> None:
        self.agent = agent
        self.cgroup_root = cgroup_root

    def collect(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "hangar_machines",
            "Machines on this host, by organization and state (running, stopped, failed).",
            labels=["org", "state"],
        )
        cpu = CounterMetricFamily(
            "hangar_machine_cpu_seconds",
            "CPU time a machine's processes have used, from its cgroup.",
            labels=["org", "app", "machine"],
        )
        memory = GaugeMetricFamily(
            "hangar_machine_memory_bytes",
            "Memory a machine uses now, page cache included, from its cgroup.",
            labels=["org", "app", "machine"],
        )
        pids = GaugeMetricFamily(
            "hangar_machine_pids",
            "Processes (and threads) in a machine, from its cgroup.",
            labels=["org", "app", "machine"],
        )
        counts: dict[tuple[str, str], int] = {}
        for machine in self.agent.reconciler.machines():
            key = (machine.org, machine.state)
            counts[key] = counts.get(key, 0) + 1
            usage = cgroup_usage(machine.machine_id, self.cgroup_root)
            if usage is None:
                continue
            labels = [machine.org, machine.app, machine.machine_id]
            if usage.cpu_seconds is not None:
                cpu.add_metric(labels, usage.cpu_seconds)
            if usage.memory_bytes is not None:
                memory.add_metric(labels, usage.memory_bytes)
            if usage.pids is not None:
                pids.add_metric(labels, usage.pids)
        for (org, state), count in sorted(counts.items()):
            by_state.add_metric([org, state], count)
        yield by_state
        yield cpu
        yield memory
        yield pids
        handshakes = self.agent.mesh_handshakes
        if handshakes is not None:
            last = GaugeMetricFamily(
                "hangar_mesh_peer_last_handshake_seconds",
                "When this host last completed a WireGuard handshake with a peer "
                "(unix time; 0: never).",
                labels=["peer"],
            )
            age = GaugeMetricFamily(
                "hangar_mesh_peer_handshake_age_seconds",
                "Seconds since this host's last WireGuard handshake with a peer (+Inf: never).",
                labels=["peer"],
            )
            now = time.time()
            for peer, when in sorted(handshakes.items()):
                last.add_metric([peer], when)
                age.add_metric([peer], now - when if when else float("inf"))
            yield last
            yield age

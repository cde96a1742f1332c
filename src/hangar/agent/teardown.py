"""Taking a host's agent down for good: what ``hangar server stop`` does.

A stopped agent leaves its machines, its edge and their plumbing in place on
purpose, so a restart adopts them without dropping a request. This is the
other way out, for an operator who wants the host back as it was: every
machine stopped (its signal, then SIGKILL) and removed, its volumes unmounted
(their files stay: ciphertext, for the next start), HAProxy stopped, and
what the agent put on the host removed with them: the nftables table, the
machines' veths, the mesh interface, the resolver's address on the loopback
and the tmpfs mounts under the agent directory. The desired state in the
control plane is untouched: the next start of the agent runs it all again.

Each step is idempotent and runs even if an earlier one failed, so running
it twice (or after a half-finished start) is safe; the failures are reported
together at the end.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hangar import hostcmd
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.volumes import _mounts, registry
from hangar.agent.volumes.base import VolumeLayout
from hangar.edge.haproxy import Edge
from hangar.edge.render import EdgeConfig
from hangar.errors import CommandError, HangarError
from hangar.net import netns
from hangar.net.dns import resolver_address
from hangar.net.nftables import Firewall, table_name
from hangar.net.wireguard import interface_name

__all__ = ["Holdings", "Teardown", "agent_mounts", "teardown"]

log = logging.getLogger("hangar.agent")


@dataclass(frozen=True)
class Holdings:
    """What one agent may hold on this host, named as the agent names it."""

    agent_dir: Path
    host_id: str
    installation: ipaddress.IPv6Network | None = None  # None: no resolver address to remove
    stop_timeout: float = 10.0  # seconds each machine gets after its signal

    @property
    def table(self) -> str:
        return table_name(self.host_id)

    @property
    def mesh_interface(self) -> str:
        return interface_name(self.host_id)

    @property
    def resolver(self) -> ipaddress.IPv6Address | None:
        return resolver_address(self.installation) if self.installation else None


@dataclass
class Teardown:
    """What was removed, and what could not be."""

    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _unescape(path: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def agent_mounts(agent_dir: Path, table: Path = Path("/proc/self/mounts")) -> list[Path]:
    """Mount points at or under ``agent_dir``, deepest first (the order to unmount)."""
    root = agent_dir.resolve()
    found: list[Path] = []
    with open(table) as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 2:
                continue
            point = Path(_unescape(fields[1]))
            if point == root or root in point.parents:
                found.append(point)
    return sorted(set(found), key=lambda p: (-len(p.parts), str(p)))


def _machine_ids(runtime: RuncRuntime) -> list[str]:
    """Machines with a handle on disk, and any container runc still knows of."""
    ids = set(runtime.list())
    if runtime.runc_root.exists():
        listed = hostcmd.run(
            ["runc", "--root", str(runtime.runc_root), "list", "-q"], check=False, timeout=30
        )
        ids.update(line for line in listed.stdout.decode().split() if line)
    return sorted(ids)


def teardown(holdings: Holdings) -> Teardown:
    """Stop and remove everything ``holdings`` names on this host (needs root)."""
    done = Teardown()
    root = holdings.agent_dir

    def step(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except (HangarError, OSError) as exc:
            log.warning("teardown: %s: %s", what, exc)
            done.failed.append(f"{what}: {exc}")
        else:
            done.removed.append(what)

    state = root / "state"
    if state.exists():
        runtime = RuncRuntime(state, root / "bundles", mount_tmpfs=False)
        for machine_id in _machine_ids(runtime):

            def stop_machine(machine_id: str = machine_id) -> None:
                with contextlib.suppress(HangarError):
                    runtime.stop(machine_id, timeout=holdings.stop_timeout)
                runtime.remove(machine_id)  # SIGKILL if still running; veth, cgroup, files

            step(f"machine {machine_id}", stop_machine)
    # Volumes before the mounts under the agent directory: a FUSE daemon must
    # exit before the ext4 under it can be unmounted (unmount_all waits for it).
    layout = VolumeLayout.for_agent(root)
    for volume_id in layout.on_disk():
        if _mounts.mounts_under(layout.mount_dir(volume_id)):

            def unmount_volume(volume_id: str = volume_id) -> None:
                handle = layout.read_handle(volume_id) or {}
                registry.create(str(handle.get("driver", "gocryptfs")), layout).unmount(volume_id)

            step(f"volume {volume_id}", unmount_volume)
    edge = Edge(EdgeConfig(directory=root / "edge"))
    if edge.master_pid() is not None:
        step("the edge (HAProxy)", edge.stop)
    if _present_table(holdings.table):
        step(
            f"nftables table inet {holdings.table}",
            lambda: Firewall(state / "nftables").remove(holdings.table),
        )
    if netns.link_exists(holdings.mesh_interface):
        step(
            f"mesh interface {holdings.mesh_interface}",
            lambda: hostcmd.run(["ip", "link", "del", holdings.mesh_interface], timeout=15),
        )
    resolver = holdings.resolver
    if resolver is not None and _on_loopback(resolver):
        step(
            f"resolver address {resolver} on lo",
            lambda: hostcmd.run(
                ["ip", "-6", "addr", "del", f"{resolver}/128", "dev", "lo"], timeout=15
            ),
        )
    if root.exists():
        for mount in agent_mounts(root):

            def unmount(mount: Path = mount) -> None:
                hostcmd.run(["umount", str(mount)], timeout=30)

            step(f"mount {mount}", unmount)
    return done


def _present_table(table: str) -> bool:
    try:
        found = hostcmd.run(["nft", "list", "table", "inet", table], check=False, timeout=15)
    except CommandError:
        return False
    return found.returncode == 0


def _on_loopback(address: ipaddress.IPv6Address) -> bool:
    shown = hostcmd.run(["ip", "-6", "-o", "addr", "show", "dev", "lo"], check=False, timeout=15)
    return f" {address}/128 " in shown.stdout.decode()

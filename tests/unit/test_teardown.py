"""What ``hangar server stop`` finds to remove, read the way the kernel writes it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hangar.agent.teardown import Holdings, agent_mounts


def test_mounts_under_the_agent_dir_deepest_first(tmp_path: Path) -> None:
    agent = tmp_path / "my agent"
    table = tmp_path / "mounts"
    escaped = str(agent).replace(" ", "\\040")
    table.write_text(
        f"tmpfs {escaped}/bundles tmpfs rw,nosuid 0 0\n"
        f"overlay {escaped}/bundles/m_1/rootfs overlay rw 0 0\n"
        f"tmpfs {escaped}/edge tmpfs rw 0 0\n"
        f"tmpfs {escaped}-other/edge tmpfs rw 0 0\n"  # a neighbour's, not ours
        "proc /proc proc rw 0 0\n"
    )
    assert agent_mounts(agent, table) == [
        agent / "bundles" / "m_1" / "rootfs",
        agent / "bundles",
        agent / "edge",
    ]


def test_holdings_name_what_the_agent_made() -> None:
    held = Holdings(Path("/a"), "host_1234", ipaddress.IPv6Network("fd12:3456::/32"))
    assert held.table == "hangar_host_1234"
    assert held.mesh_interface.startswith("hwg") and len(held.mesh_interface) <= 15
    assert held.resolver == ipaddress.IPv6Address("fd12:3456::53")
    assert Holdings(Path("/a"), "host_1").resolver is None

"""`make demo`'s script brings up a working installation and exits cleanly in one-shot mode."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.teardown import Holdings, agent_mounts, teardown
from hangar.net.dns import resolver_address
from hangar.net.netns import host_interface

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """Where machines can reach their images (pytest's temporary dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="hangar-demo-", dir="/var/tmp"))
    base.chmod(0o711)
    yield base / "demo"
    database = base / "demo/data/hangar.db"
    if database.exists():  # a test that failed half-way leaves no table or address behind
        with sqlite3.connect(database) as db:
            hosts = db.execute("SELECT id FROM hosts").fetchall()
            prefix = db.execute(
                "SELECT value FROM settings WHERE key = 'private_prefix'"
            ).fetchone()
        for (host_id,) in hosts:
            installation = ipaddress.IPv6Network(prefix[0]) if prefix else None
            teardown(Holdings(base / "demo/agent", host_id, installation))
    state = base / "demo/agent/state"
    if state.exists():
        runtime = RuncRuntime(state, base / "demo/agent/bundles", mount_tmpfs=False)
        for machine_id in runtime.list():
            runtime.remove(machine_id)
    pidfile = base / "demo/agent/edge/haproxy.pid"
    if pidfile.exists():
        subprocess.run(["kill", pidfile.read_text().split()[0]], capture_output=True)
        time.sleep(0.5)
    for mount in ("bundles", "edge"):
        subprocess.run(["umount", str(base / "demo/agent" / mount)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the demo's agent runs machines as root")
def test_demo_script_runs_end_to_end(demo_dir: Path) -> None:
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    port, edge_http, edge_https = ports
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env.update(
        DEMO_ONESHOT="1",
        DEMO_DIR=str(demo_dir),
        DEMO_PORT=str(port),
        DEMO_EDGE_HTTP_PORT=str(edge_http),
        DEMO_EDGE_HTTPS_PORT=str(edge_https),
    )
    first = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Created app hello in demo." in first.stdout
    assert "Release v1 is live." in first.stdout
    assert "served by a machine" in first.stdout  # the page, fetched from the machine
    # ...and through the edge: HTTPS with HSTS, and HTTP redirected to it.
    assert f"https://hello.apps.localhost:{edge_https}/ -> 200, TLSv1.3" in first.stdout
    assert "HSTS: max-age=63072000; includeSubDomains" in first.stdout
    assert f"-> 301 https://hello.apps.localhost:{edge_https}/" in first.stdout
    assert f"Hangar is running at https://127.0.0.1:{port}" in first.stdout
    assert "\nok      chain org_" in first.stdout
    # A second run reuses the installation instead of failing on it.
    again = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "Created app" not in again.stdout and "Release v2 is live." in again.stdout
    assert "make demo-clean" in again.stdout  # the tour says how to get out
    _clean_demo_leaves_nothing(demo_dir, env, port)


def _lines(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def _clean_demo_leaves_nothing(demo_dir: Path, env: dict[str, str], port: int) -> None:
    """`make demo-clean` stops the machine and the edge and removes all the host held."""
    with sqlite3.connect(demo_dir / "data" / "hangar.db") as db:
        (host_id, edge), *_ = db.execute("SELECT id, edge FROM hosts").fetchall()
        (prefix,) = db.execute("SELECT value FROM settings WHERE key = 'private_prefix'").fetchone()
        machines = [row[0] for row in db.execute("SELECT id FROM machines")]
    assert edge, "the all-in-one host runs the edge: `hosts list` must say so"
    agent = demo_dir / "agent"
    runc_root = agent / "state" / "runc"
    table = f"hangar_{host_id}"
    resolver = resolver_address(ipaddress.IPv6Network(prefix))
    haproxy_pid = int((agent / "edge" / "haproxy.pid").read_text().split()[0])
    # Before: the demo left all of it behind, as a restart would want.
    assert _lines(["runc", "--root", str(runc_root), "list", "-q"]).split()
    assert _lines(["nft", "list", "table", "inet", table])
    assert agent_mounts(agent)
    assert machines and any(
        host_interface(m) in _lines(["ip", "-o", "link", "show"]) for m in machines
    )

    clean = subprocess.run(
        [str(ROOT / "scripts" / "demo-clean.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"removed nftables table inet {table}" in clean.stdout
    assert not demo_dir.exists()
    assert not (runc_root.exists() and _lines(["runc", "--root", str(runc_root), "list", "-q"]))
    assert subprocess.run(["nft", "list", "table", "inet", table], capture_output=True).returncode
    assert agent_mounts(demo_dir) == []
    links = _lines(["ip", "-o", "link", "show"])
    assert not [m for m in machines if host_interface(m) in links]
    assert f" {resolver}/128 " not in _lines(["ip", "-6", "-o", "addr", "show", "dev", "lo"])
    status = Path(f"/proc/{haproxy_pid}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text()  # gone, or a zombie

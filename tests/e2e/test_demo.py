"""`make demo`'s script brings up a working installation and exits cleanly in one-shot mode."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangar.agent.runtimes.runc import RuncRuntime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """Where machines can reach their images (pytest's temporary dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="hangar-demo-", dir="/var/tmp"))
    base.chmod(0o711)
    yield base / "demo"
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

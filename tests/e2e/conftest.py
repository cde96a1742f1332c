"""What the end-to-end tests share: a real server with its agent on this host, app ``hello``
created, and a teardown that leaves no machine, mount or HAProxy behind (a test that failed
half-way included); and, for signing in, an API served over its TLS with a real provider."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import uvicorn

from hangar.api.app import create_app
from hangar.controlplane.state import ControlPlane
from tests.conftest import make_installation
from tests.e2e.test_cli_flow import Server, free_port, init, login, start, stop
from tests.e2e.test_deploy_flow import build_example_image


@contextlib.contextmanager
def running_server(
    tmp_path: Path,
    prefix: str,
    *options: str,
    server_env: Mapping[str, str] | None = None,
    server_toml: str = "",
    apps: tuple[str, ...] = ("hello",),
    agent: str = "agent",
) -> Iterator[tuple[Server, Path]]:
    """`hangar server run` with its agent in ``AGENT`` under a fresh
    ``/var/tmp/hangar-PREFIX-*``: (the server, that directory). ``server_env`` is
    added to the server's environment only (the CLI's stays clean); ``apps`` are
    destroyed at the end."""
    agent_root = Path(tempfile.mkdtemp(prefix=f"hangar-{prefix}-", dir="/var/tmp"))
    agent_root.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env["HANGAR_CONFIG_DIR"] = str(tmp_path / "cli")
    data_dir, token_file = tmp_path / "data", tmp_path / "admin.token"
    init(data_dir, token_file, env)
    if server_toml:
        (data_dir / "server.toml").write_text(server_toml)
    port = free_port()
    proc = start(
        data_dir,
        {**env, **(server_env or {})},
        port,
        "--agent-dir",
        str(agent_root / agent),
        *options,
    )
    srv = Server(data_dir, f"https://127.0.0.1:{port}", token_file.read_text().strip(), env, proc)
    try:
        build_example_image(tmp_path / "image")
        login(srv)
        srv.cli("apps", "create", "hello")
        yield srv, agent_root
    finally:
        _teardown(srv, agent_root / agent, apps)
        shutil.rmtree(agent_root, ignore_errors=True)


def _teardown(srv: Server, agent_dir: Path, apps: tuple[str, ...]) -> None:
    for app in apps:
        srv.cli("apps", "destroy", app, "--yes", check=False)
    machines = agent_dir / "state/machines"
    deadline = time.monotonic() + 30
    while machines.exists() and any(machines.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop(srv.process)
    # What a test that failed half-way left running goes too.
    runc_root = agent_dir / "state/runc"
    for left in machines.iterdir() if machines.exists() else []:
        subprocess.run(
            ["runc", "--root", str(runc_root), "delete", "--force", left.name], capture_output=True
        )
    pidfile = agent_dir / "edge/haproxy.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        time.sleep(0.5)
    # Volumes' mounts (FUSE over an ext4 loop file) go before the tmpfs they are on.
    volumes = str(agent_dir / "bundles/.volumes") + "/"
    points = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(volumes)
    ]
    for point in sorted(points, key=lambda p: -p.count("/")):
        subprocess.run(["umount", "-l", point], capture_output=True)
    for mount in ("edge", "bundles"):
        subprocess.run(["umount", str(agent_dir / mount)], capture_output=True)


@pytest.fixture
def server_env() -> dict[str, str]:
    """Extra environment of the ``deployed`` server; a module overrides it to add settings."""
    return {}


@pytest.fixture
def deployed(tmp_path: Path, server_env: dict[str, str]) -> Iterator[tuple[Server, Path, Path]]:
    """A server with its agent and no edge, app hello created: (server, tmp dir, agent root)."""
    with running_server(tmp_path, "e2e", "--no-edge", server_env=server_env) as (srv, root):
        yield srv, tmp_path, root


# (public URL, a TLS context trusting the installation's CA, the admin's headers, the parts)
Served = tuple[str, ssl.SSLContext, dict[str, str], ControlPlane]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = _free_port()
    public = f"https://localhost:{port}"
    inst = make_installation(tmp_path / "data", public_url=public, listen_port=port)
    cp = ControlPlane.open(inst.settings)
    config = uvicorn.Config(
        create_app(cp),
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(inst.settings.data_dir / "api.crt"),
        ssl_keyfile=str(inst.settings.data_dir / "api.key"),
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    ca = ssl.create_default_context(cafile=str(inst.settings.data_dir / "ca.crt"))
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    # Imported here, under the test run's warning filters (it imports deprecated authlib parts).
    from oidc_provider_mock import run_server_in_thread

    with run_server_in_thread(require_nonce=True) as provider:
        issuer = f"http://localhost:{provider.server_port}"
        with httpx.Client(base_url=public, verify=ca, headers=inst.headers) as api:
            api.post(
                "/v1/idps",
                json={
                    "name": "corp",
                    "issuer": issuer,
                    "client_id": "hangar",
                    "client_secret": "s",
                },
            ).raise_for_status()
            api.post("/v1/orgs/acme/members", json={"email": "bob@example.com"}).raise_for_status()
        httpx.put(f"{issuer}/users/bob", json={"email": "bob@example.com"}).raise_for_status()
        try:
            yield public, ca, inst.headers, cp
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            cp.close()

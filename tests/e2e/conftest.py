"""Fixtures for the end-to-end tests of signing in: an API served over TLS, a real provider."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from hangar.api.app import create_app
from hangar.controlplane.state import ControlPlane
from tests.conftest import make_installation

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

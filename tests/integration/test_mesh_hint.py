"""A device needs a host in the mesh; the refusal names a flag the all-in-one server has."""

from __future__ import annotations

import typer
from fastapi.testclient import TestClient

from hangar.cli.main import app
from tests.conftest import Installation


def test_a_device_without_a_mesh_host_is_told_the_servers_flag(
    api: TestClient, installation: Installation
) -> None:
    r = api.post(
        f"/v1/orgs/{installation.init.org}/wireguard",
        headers=installation.headers,
        json={"name": "laptop"},
    )
    assert r.status_code == 409
    hint = r.json()["hint"]
    assert "hangar server run --mesh-endpoint" in hint
    server_run = typer.main.get_command(app).commands["server"].commands["run"]  # type: ignore[attr-defined]
    assert "--mesh-endpoint" in {opt for p in server_run.params for opt in p.opts}

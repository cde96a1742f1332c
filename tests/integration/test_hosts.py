"""Hosts: operators list and cordon them; a cordoned host gets no new machines."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from hangar.agent.oci import build_layout, layer_tar
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from tests.conftest import Installation, bearer, mint_token


def test_cordon_keeps_new_machines_off_a_host(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    assert [x["name"] for x in api.get("/v1/hosts", headers=h).json()] == ["h1"]
    build_layout(tmp_path / "img", [layer_tar([])])
    api.post("/v1/apps", headers=h, json={"name": "web"})
    one_off = {"image": f"oci:{tmp_path / 'img'}:latest", "cmd": ["true"]}

    cordoned = api.post("/v1/hosts/h1/cordon", headers=h)
    assert cordoned.status_code == 200 and cordoned.json()["state"] == "cordoned"
    refused = api.post("/v1/apps/web/machines", headers=h, json=one_off)
    assert refused.status_code == 409 and "no active host" in refused.json()["detail"]

    assert api.post("/v1/hosts/h1/uncordon", headers=h).json()["state"] == "active"
    made = api.post("/v1/apps/web/machines", headers=h, json=one_off)
    assert made.status_code == 201 and made.json()["one_off"] is True
    assert api.get("/v1/hosts/h1", headers=h).json()["machines"] == 1
    assert api.get("/v1/hosts/nope", headers=h).status_code == 404


def test_hosts_are_for_operators(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/orgs/acme/members", headers=h, json={"email": "m@example.com", "role": "admin"})
    org_admin = bearer(mint_token(control_plane, "m@example.com", kind="org", org="acme"))
    assert api.get("/v1/hosts", headers=org_admin).status_code == 403
    org_token = api.post("/v1/tokens", headers=h, json={"kind": "org", "org": "acme"}).json()
    # Even the operator's own token, narrowed to one organization, may not.
    assert api.get("/v1/hosts", headers=bearer(org_token["token"])).status_code == 403
    assert api.get("/v1/hosts").status_code == 401

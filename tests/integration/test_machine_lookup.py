"""A machine found by its id alone: its app for its own organization, 404 for everyone else."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.controlplane.machines import create_machine, register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import App
from tests.conftest import Installation, bearer, mint_token


def _machine_of(cp: ControlPlane, app_name: str) -> str:
    with cp.db.write() as s:
        app = s.execute(select(App).where(App.name == app_name)).scalar_one()
        return create_machine(s, app, 1, "local").id


def test_a_machine_id_names_its_app_only_to_those_who_may_see_it(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    cp, h = control_plane, installation.headers
    assert api.post("/v1/apps", headers=h, json={"name": "web"}).status_code == 201
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    assert (
        api.post("/v1/apps", headers=h, json={"name": "secret-app", "org": "globex"}).status_code
        == 201
    )
    with cp.db.write() as s:
        register_local_host(s, name="h1", region="local", memory_mb=4096)
    ours, theirs = _machine_of(cp, "web"), _machine_of(cp, "secret-app")
    assert api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    ).is_success
    eve = bearer(mint_token(cp, "eve@example.com", kind="org", org="globex"))

    found = api.get(f"/v1/machines/{ours}", headers=h)
    assert found.status_code == 200
    assert found.json() == {"id": ours, "app": "web", "org": installation.init.org}
    assert api.get(f"/v1/machines/{theirs}", headers=eve).json()["app"] == "secret-app"

    # Another organization's machine is indistinguishable from one that does not exist.
    refused = api.get(f"/v1/machines/{ours}", headers=eve)
    missing = api.get("/v1/machines/m_0000000000000000", headers=eve)
    assert refused.status_code == missing.status_code == 404
    assert refused.json()["detail"] == f"machine {ours!r} not found"
    assert missing.json()["detail"] == "machine 'm_0000000000000000' not found"
    assert "web" not in refused.text

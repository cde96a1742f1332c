"""Volumes bounded per app and per organization; an app destroyed with its volumes says
which in the audit trail."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.controlplane import volumes as cp_volumes
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import Volume
from tests.conftest import Installation
from tests.integration.test_volumes_api import _create, _events, hosts  # noqa: F401


def _count(cp: ControlPlane) -> int:
    with cp.db.read() as session:
        return len(session.execute(select(Volume.id)).all())


def test_an_app_and_an_organization_have_a_bounded_number_of_volumes(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, TestClient],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cp_volumes, "MAX_VOLUMES_PER_APP", 2)
    monkeypatch.setattr(cp_volumes, "MAX_VOLUMES_PER_ORG", 3)
    h = installation.headers
    for app in ("web", "api"):
        api.post("/v1/apps", headers=h, json={"name": app})
    first = _create(api, h, "web", name="data", size="64mb")
    _create(api, h, "web", name="data", size="64mb")
    refused = api.post("/v1/apps/web/volumes", headers=h, json={"name": "data", "size": "64mb"})
    assert refused.status_code == 409, refused.text
    assert "at most 2" in refused.json()["detail"] and _count(control_plane) == 2
    # A destroyed volume no longer counts.
    assert api.delete(f"/v1/apps/web/volumes/{first['id']}", headers=h).status_code == 200
    _create(api, h, "web", name="data", size="64mb")
    # The organization's bound holds across its apps.
    _create(api, h, "api", name="data", size="64mb")
    refused = api.post("/v1/apps/api/volumes", headers=h, json={"name": "data", "size": "64mb"})
    assert refused.status_code == 409 and "at most 3" in refused.json()["detail"]
    assert _count(control_plane) == 4  # three live, one destroyed


def test_destroying_an_app_names_the_volumes_it_shreds(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, TestClient],  # noqa: F811
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    kept = _create(api, h, "web", name="data", size="64mb")
    logs = _create(api, h, "web", name="logs", size="64mb")
    assert api.delete(f"/v1/apps/web/volumes/{logs['id']}", headers=h).status_code == 200
    assert api.delete("/v1/apps/web", headers=h).status_code == 204
    (event,) = _events(control_plane, "app.destroy")
    assert json.loads(event.detail) == {"volumes_shredded": [f"data/{kept['id']}"]}
    # Its host is told to delete the files.
    assert hosts["host-b"].get("/agent/v1/volumes", params={"backend": "gocryptfs"}).json() == []
    assert hosts["host-c"].get("/agent/v1/volumes", params={"backend": "gocryptfs"}).json() == []


def test_a_host_keeping_volumes_is_not_removed_under_them(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, TestClient],  # noqa: F811
) -> None:
    """A volume's data lives only on its host: removing the host would strand the volume
    (listed, keyed, and taken by new machines that can never run)."""
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    vol = _create(api, h, "web", name="data", size="64mb", host="host-c")
    refused = api.delete("/v1/hosts/host-c", headers=h)
    assert refused.status_code == 409 and "volume" in refused.json()["detail"], refused.text
    assert api.get("/v1/hosts/host-c", headers=h).json()["state"] == "active"
    assert api.delete(f"/v1/apps/web/volumes/{vol['id']}", headers=h).status_code == 200
    assert api.delete("/v1/hosts/host-c", headers=h).status_code == 204

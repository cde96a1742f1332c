"""Volumes bounded per app and per organization; an app destroyed with its volumes says
which in the audit trail."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from hangar.config.appconfig import parse_app_config
from hangar.controlplane import volumes as cp_volumes
from hangar.controlplane.machines import create_machine, create_release
from hangar.controlplane.state import ControlPlane
from hangar.errors import Conflict
from hangar.store.tables import App, Volume
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


def test_two_machines_made_at_once_never_take_the_same_volume(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    database_url: str,
    hosts: dict[str, TestClient],  # noqa: F811
) -> None:
    """A deploy and a scale (or two API replicas) making a machine of the app at once:
    the second must see the volume the first took, not take it too (on PostgreSQL,
    whose writers run side by side until they touch the same row)."""
    if not database_url:
        pytest.skip("SQLite runs one writer at a time")
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    vol = _create(api, h, "web", name="data", size="64mb")
    cfg = parse_app_config('app = "web"\n[[mounts]]\nsource = "data"\ndestination = "/data"\n')
    with control_plane.db.write() as session:
        app = session.execute(select(App).where(App.name == "web")).scalar_one()
        version = create_release(session, app, image="img", config=cfg, strategy=None, actor="t")
        version_number = version.version
        # The installation's and the app's address space exist before the race.
        create_machine(session, app, 0, None, image="oci:/x", args=["true"])
    outcome: dict[str, object] = {}

    def second() -> None:
        try:
            with control_plane.db.write() as other:
                app2 = other.execute(select(App).where(App.name == "web")).scalar_one()
                outcome["machine"] = create_machine(
                    other, app2, version_number, None, mounts=["data"]
                ).id
        except Conflict as exc:
            outcome["refused"] = exc

    with control_plane.db.write() as session:
        app = session.execute(select(App).where(App.name == "web")).scalar_one()
        first = create_machine(session, app, version_number, None, mounts=["data"]).id
        thread = threading.Thread(target=second)
        thread.start()
        # Commit only once the second writer waits on a lock the first holds.
        with control_plane.db.engine.connect() as probe:
            for _ in range(600):
                waiting = probe.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                ).scalar_one()
                if waiting:
                    break
                time.sleep(0.05)
            assert waiting, "the second writer never waited for the first"
    thread.join(timeout=60)
    assert "refused" in outcome, outcome
    assert "all held" in str(outcome["refused"]), outcome
    with control_plane.db.read() as session:
        row = session.get(Volume, vol["id"])
        assert row is not None and row.machine_id == first


def test_a_new_machine_takes_a_free_volume_on_a_host_that_takes_machines(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, TestClient],  # noqa: F811
) -> None:
    """The oldest free volume is on a cordoned host, another one is free elsewhere: the
    machine takes that one instead of being refused."""
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    _create(api, h, "web", name="data", size="64mb", host="host-b")
    elsewhere = _create(api, h, "web", name="data", size="64mb", host="host-c")
    assert api.post("/v1/hosts/host-b/cordon", headers=h).status_code == 200
    cfg = parse_app_config('app = "web"\n[[mounts]]\nsource = "data"\ndestination = "/data"\n')
    with control_plane.db.write() as session:
        app = session.execute(select(App).where(App.name == "web")).scalar_one()
        release = create_release(session, app, image="img", config=cfg, strategy=None, actor="t")
        machine = create_machine(session, app, release.version, None, mounts=["data"])
        machine_id = machine.id
    with control_plane.db.read() as session:
        row = session.get(Volume, elsewhere["id"])
        assert row is not None and row.machine_id == machine_id

"""Volumes through the API and the agents' API, tried as another tenant or host would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.api.app import create_agent_app
from hangar.audit.log import AuditContext
from hangar.config.appconfig import parse_app_config
from hangar.controlplane.hostlink import apply_report, host_assignments
from hangar.controlplane.keys import rotate_kek
from hangar.controlplane.machines import create_machine, create_release
from hangar.controlplane.state import ControlPlane
from hangar.crypto.secretbox import Opener
from hangar.crypto.volumekeys import open_sealed_keys, open_volume_key
from hangar.errors import Conflict, HangarError, ValidationError
from hangar.store.tables import App, AuditEvent, Host, Machine, Volume
from tests.conftest import Installation, bearer, mint_token
from tests.integration.test_hosts import _as_host, _join, _join_token

CTX = AuditContext(actor="test", token_id=None, request_id=None, client_addr=None)


@pytest.fixture
def hosts(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> Iterator[dict[str, TestClient]]:
    """Two joined hosts, each having reported gocryptfs as its backend, as its agent does."""
    h = installation.headers
    clients: dict[str, TestClient] = {}
    agents = create_agent_app(control_plane)
    for name in ("host-b", "host-c"):
        joined = _join(api, _join_token(api, h), name=name).json()
        client = TestClient(_as_host(agents, joined["certificate"]), raise_server_exceptions=False)
        client.__enter__()
        clients[name] = client
        listed = client.get("/agent/v1/volumes", params={"backend": "gocryptfs"})
        assert listed.status_code == 200 and listed.json() == []
    yield clients
    for client in clients.values():
        client.__exit__(None, None, None)


def _events(cp: ControlPlane, action: str) -> list[AuditEvent]:
    with cp.db.read() as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars()
        )


def _create(api: TestClient, h: dict[str, str], app: str, **body: Any) -> dict[str, Any]:
    made = api.post(f"/v1/apps/{app}/volumes", headers=h, json=body)
    assert made.status_code == 201, made.text
    return dict(made.json())


def test_create_list_show_extend_destroy(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, TestClient],
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    vol = _create(api, h, "web", name="data", size="1gb", host="host-c")
    assert (vol["host"], vol["size_mb"], vol["encryption"], vol["state"]) == (
        "host-c",
        1024,
        "gocryptfs",
        "created",
    )
    assert vol["machine"] is None and "key" not in json.dumps(vol)
    with control_plane.db.read() as session:
        row = session.get(Volume, vol["id"])
        assert row is not None and row.key_wrapped is not None
        key = open_volume_key(control_plane.keyring, row.id, row.key_wrapped)
        assert len(key) == 32 and key not in row.key_wrapped
    # The host it lives on is told of it; the other is not.
    assert hosts["host-c"].get("/agent/v1/volumes", params={"backend": "gocryptfs"}).json() == [
        {"volume_id": vol["id"], "size_mb": 1024, "encryption": "gocryptfs"}
    ]
    assert hosts["host-b"].get("/agent/v1/volumes", params={"backend": "gocryptfs"}).json() == []
    listed = api.get("/v1/apps/web/volumes", headers=h).json()
    assert [v["id"] for v in listed] == [vol["id"]]
    assert api.get("/v1/apps/web/volumes/data", headers=h).json()["id"] == vol["id"]
    assert api.get(f"/v1/apps/web/volumes/{vol['id']}", headers=h).json()["name"] == "data"
    # Bad input changes nothing.
    for size in ("0gb", "abc", "600gb", "10mb", "-1"):
        bad = api.post("/v1/apps/web/volumes", headers=h, json={"name": "x", "size": size})
        assert bad.status_code in (400, 422), (size, bad.text)
    for name in ("Data", "../x", "a" * 40, "1x"):
        bad = api.post("/v1/apps/web/volumes", headers=h, json={"name": name})
        assert bad.status_code in (400, 422), (name, bad.text)
    smaller = api.post(f"/v1/apps/web/volumes/{vol['id']}/extend", headers=h, json={"size": "1gb"})
    assert smaller.status_code == 422 and "only grows" in smaller.json()["detail"]
    grown = api.post("/v1/apps/web/volumes/data/extend", headers=h, json={"size": "2gb"})
    assert grown.status_code == 200 and grown.json()["size_mb"] == 2048
    assert grown.json()["online"] is True  # free: it is made at its new size
    assert len(api.get("/v1/apps/web/volumes", headers=h).json()) == 1
    gone = api.delete("/v1/apps/web/volumes/data", headers=h)
    assert gone.status_code == 200 and gone.json()["state"] == "destroyed"
    with control_plane.db.read() as session:
        row = session.get(Volume, vol["id"])
        assert row is not None and row.key_wrapped is None  # crypto-shredded
    assert api.get("/v1/apps/web/volumes", headers=h).json() == []
    assert len(api.get("/v1/apps/web/volumes", headers=h, params={"all": "true"}).json()) == 1
    assert hosts["host-c"].get("/agent/v1/volumes", params={"backend": "gocryptfs"}).json() == []
    for action in ("volume.create", "volume.extend", "volume.destroy"):
        assert [e.target for e in _events(control_plane, action)] == [f"web/{vol['id']}"]
    # A host's backend is shown to operators.
    shown = api.get("/v1/hosts/host-c", headers=h).json()
    assert shown["volume_backend"] == "gocryptfs"


def test_no_host_with_a_backend_means_no_volume(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    _join(api, _join_token(api, h), name="host-b")
    refused = api.post("/v1/apps/web/volumes", headers=h, json={"name": "data"})
    assert refused.status_code == 409 and "encrypts volumes" in refused.json()["detail"]
    with control_plane.db.read() as session:
        assert session.execute(select(Volume)).first() is None


def test_another_app_or_organization_cannot_reach_a_volume(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, TestClient],
) -> None:
    h = installation.headers
    for app in ("web", "billing"):
        api.post("/v1/apps", headers=h, json={"name": app})
    vol = _create(api, h, "web", name="data", size="1gb")
    billing_only = bearer(
        mint_token(control_plane, "admin@example.com", kind="app", org="acme", app="billing")
    )
    assert api.get("/v1/apps/web/volumes", headers=billing_only).status_code == 403
    assert api.delete(f"/v1/apps/web/volumes/{vol['id']}", headers=billing_only).status_code == 403
    # Through its own app, another app's volume does not exist.
    assert api.get(f"/v1/apps/billing/volumes/{vol['id']}", headers=billing_only).status_code == 404
    assert (
        api.delete(f"/v1/apps/billing/volumes/{vol['id']}", headers=billing_only).status_code == 404
    )
    # Another organization's admin sees nothing of it.
    api.post("/v1/orgs", headers=h, json={"name": "globex"})
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    api.post("/v1/apps", headers=h, json={"name": "evil", "org": "globex"})
    eve = bearer(mint_token(control_plane, "eve@example.com", kind="org", org="globex"))
    assert api.get("/v1/apps/web/volumes", headers=eve).status_code in (403, 404)
    assert api.get(f"/v1/apps/evil/volumes/{vol['id']}", headers=eve).status_code == 404
    # A viewer reads, but neither creates nor destroys.
    api.post("/v1/orgs/acme/members", headers=h, json={"email": "v@example.com", "role": "viewer"})
    viewer = bearer(mint_token(control_plane, "v@example.com", kind="org", org="acme"))
    assert api.get("/v1/apps/web/volumes", headers=viewer).status_code == 200
    assert api.post("/v1/apps/web/volumes", headers=viewer, json={"name": "x"}).status_code == 403
    assert api.delete("/v1/apps/web/volumes/data", headers=viewer).status_code == 403
    # hangar.toml of another app (or org) naming the volume gets none of it.
    for app_name in ("billing", "evil"):
        cfg = parse_app_config(
            f'app = "{app_name}"\n[[mounts]]\nsource = "data"\ndestination = "/data"\n'
        )
        with control_plane.db.write() as session:
            app = session.execute(select(App).where(App.name == app_name)).scalar_one()
            with pytest.raises(Conflict, match="has no volume named 'data'"):
                create_release(session, app, image="img", config=cfg, strategy=None, actor="t")
            with pytest.raises(Conflict, match="has no volume named 'data'"):
                create_machine(session, app, 1, None, mounts=["data"])
    with control_plane.db.read() as session:
        row = session.get(Volume, vol["id"])
        assert row is not None and row.machine_id is None and row.state == "created"
        assert session.execute(select(Machine)).first() is None


def test_keys_go_sealed_only_to_the_host_running_the_machine(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, TestClient],
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    vol = _create(api, h, "web", name="data", size="1gb", host="host-b")
    cfg = parse_app_config('app = "web"\n[[mounts]]\nsource = "data"\ndestination = "/data"\n')
    with control_plane.db.write() as session:
        app = session.execute(select(App).where(App.name == "web")).scalar_one()
        release = create_release(session, app, image="img", config=cfg, strategy=None, actor="t")
        # host-c has fewer machines, but the volume lives on host-b: the machine goes there.
        for _ in range(2):
            create_machine(
                session,
                app,
                0,
                None,
                image="oci:/x",
                args=["true"],
            )  # one-offs take no volume and fill nothing
        machine = create_machine(session, app, release.version, None, mounts=["data"])
        machine_id = machine.id
        host_b = session.execute(select(Host).where(Host.name == "host-b")).scalar_one()
        assert machine.host_id == host_b.id
        # One machine holds a volume at a time: a second one is refused, with a way out.
        with pytest.raises(Conflict, match="all held") as refused:
            create_machine(session, app, release.version, None, mounts=["data"])
        assert "hangar volumes create data --app web" in (refused.value.hint or "")
        wanted = [a for a in host_assignments(session, host_b.id) if a.machine_id == machine_id]
        assert [(m.volume_id, m.destination) for m in wanted[0].mounts] == [(vol["id"], "/data")]
    opener = Opener()
    got = hosts["host-b"].post(
        f"/agent/v1/machines/{machine_id}/volume-keys", json={"public_key": opener.public_b64()}
    )
    assert got.status_code == 200, got.text
    keys = open_sealed_keys(opener, got.json(), machine_id)
    with control_plane.db.read() as session:
        row = session.get(Volume, vol["id"])
        assert row is not None and row.key_wrapped is not None and row.machine_id == machine_id
        expected = open_volume_key(control_plane.keyring, row.id, row.key_wrapped)
    assert keys == {vol["id"]: expected}
    assert expected.hex() not in got.text
    # The same sealed bundle does not open as the machine's secrets.
    with pytest.raises(HangarError):
        opener.open(got.json(), machine_id)
    # Another host asking for the machine's keys gets nothing, and it is recorded.
    refused_c = hosts["host-c"].post(
        f"/agent/v1/machines/{machine_id}/volume-keys", json={"public_key": Opener().public_b64()}
    )
    assert refused_c.status_code == 403 and expected.hex() not in refused_c.text
    # Destroying a held volume is refused while its machine exists.
    assert api.delete(f"/v1/apps/web/volumes/{vol['id']}", headers=h).status_code == 409
    api.post(f"/v1/apps/web/machines/{machine_id}/stop", headers=h)
    stopped = hosts["host-b"].post(
        f"/agent/v1/machines/{machine_id}/volume-keys", json={"public_key": Opener().public_b64()}
    )
    assert stopped.status_code == 403
    denied = [e for e in _events(control_plane, "volume.deliver_keys") if e.outcome == "denied"]
    assert sorted(e.target for e in denied) == [machine_id, machine_id]
    delivered = [e for e in _events(control_plane, "volume.deliver_keys") if e.outcome != "denied"]
    assert [json.loads(e.detail)["volumes"] for e in delivered] == [[vol["id"]]]
    # Once the machine is gone from its host, the volume is free again.
    with control_plane.db.write() as session:
        row_m = session.get(Machine, machine_id)
        assert row_m is not None
        row_m.desired = "destroyed"
        apply_report(session, host_b.id, {machine_id: {"status": "absent"}}, {})
    with control_plane.db.read() as session:
        row = session.get(Volume, vol["id"])
        assert row is not None and row.machine_id is None
    # KEK rotation re-wraps it; the key stays the same.
    rotate_kek(control_plane)
    with control_plane.db.read() as session:
        row = session.get(Volume, vol["id"])
        assert row is not None and row.key_wrapped is not None
        assert open_volume_key(control_plane.keyring, row.id, row.key_wrapped) == expected


def test_a_release_whose_mounts_cannot_be_met_is_refused(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, TestClient],
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    _create(api, h, "web", name="data", size="1gb", host="host-b")
    _create(api, h, "web", name="logs", size="1gb", host="host-c")
    text = 'app = "web"\n[[mounts]]\nsource = "data"\ndestination = "/data"\n'
    with control_plane.db.write() as session:
        app = session.execute(select(App).where(App.name == "web")).scalar_one()
        with pytest.raises(ValidationError, match="blue-green"):
            create_release(
                session,
                app,
                image="img",
                config=parse_app_config(text),
                strategy="bluegreen",
                actor="t",
            )
        # Two volumes on two hosts: no one machine can mount both.
        both = text + '[[mounts]]\nsource = "logs"\ndestination = "/logs"\n'
        with pytest.raises(Conflict, match="'logs'"):
            create_release(
                session, app, image="img", config=parse_app_config(both), strategy=None, actor="t"
            )

"""PATCH a machine: validated first, lease-guarded, audited; a new config replaces it."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.images.oci import build_layout, layer_tar
from hangar.store.tables import AuditEvent, Machine
from tests.conftest import Installation
from tests.uploads import upload_layout


def _generation(cp: ControlPlane, machine_id: str) -> int:
    with cp.db.read() as session:
        row = session.get(Machine, machine_id)
        assert row is not None
        return row.generation


def test_update_a_machine(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    first = build_layout(tmp_path / "img", [layer_tar([])], tag="one")
    second = build_layout(tmp_path / "img", [layer_tar([]), layer_tar([])], tag="two")
    api.post("/v1/apps", headers=h, json={"name": "web"})
    made = api.post(
        "/v1/apps/web/machines",
        headers=h,
        json={
            "image": upload_layout(api, h, "web", tmp_path / "img", "one"),
            "cmd": ["sleep", "1"],
        },
    ).json()
    url = f"/v1/apps/web/machines/{made['id']}"
    before = _generation(control_plane, made["id"])

    # Bad input changes nothing.
    for body, status, words in (
        ({}, 422, "nothing to update"),
        ({"version": 7}, 422, "one-off machine runs its own image"),
        ({"image": "oci:relative/path:one"}, 422, "neither a registry reference nor an uploaded"),
        ({"image": f"oci:{tmp_path / 'nope'}:x"}, 422, "does not read images from host paths"),
        ({"image": "sha256:" + "0" * 64}, 404, "no image sha256:0000"),
        ({"stop_signal": "SIGWINCH"}, 422, ""),
        ({"surprise": 1}, 422, ""),
    ):
        refused = api.patch(url, headers=h, json=body)
        assert refused.status_code == status, (body, refused.text)
        assert words in refused.text
    assert _generation(control_plane, made["id"]) == before

    # Stop settings apply in place; a new image or command replaces the machine.
    assert api.patch(url, headers=h, json={"stop_signal": "SIGTERM"}).status_code == 200
    assert _generation(control_plane, made["id"]) == before
    updated = api.patch(
        url,
        headers=h,
        json={"image": upload_layout(api, h, "web", tmp_path / "img", "two"), "cmd": ["true"]},
    )
    assert updated.status_code == 200, updated.text
    assert _generation(control_plane, made["id"]) == before + 1
    with control_plane.db.read() as session:
        row = session.get(Machine, made["id"])
        assert row is not None
        assert (row.image_digest, row.args, row.stop_signal) == (second, '["true"]', "SIGTERM")
        assert first != second
        actions = (
            session.execute(select(AuditEvent.action).where(AuditEvent.target == made["id"]))
            .scalars()
            .all()
        )
    assert actions.count("machine.update") == 2
    events = [e["kind"] for e in api.get(f"{url}/events", headers=h).json()]
    assert events.count("update") == 2

    # Someone else's lease: refused.
    lease = api.post(f"{url}/lease", headers=h, json={"ttl": 60})
    assert lease.status_code == 201, lease.text
    blocked = api.patch(url, headers=h, json={"cmd": ["false"]})
    assert blocked.status_code == 409 and "leased" in blocked.json()["detail"]
    nonce = lease.json()["nonce"]
    allowed = api.patch(url, headers={**h, "Hangar-Lease-Nonce": nonce}, json={"cmd": ["false"]})
    assert allowed.status_code == 200

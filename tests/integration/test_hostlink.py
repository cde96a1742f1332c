"""What a host's report makes of its machines' rows."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from hangar.controlplane.hostlink import apply_report
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.images.oci import build_layout, layer_tar
from hangar.store.tables import Machine
from tests.conftest import Installation
from tests.uploads import upload_layout

ABSENT = {"status": "absent", "healthy": None, "exit_code": None, "checks": []}


def test_a_machine_absent_from_its_host_is_stopped_if_meant_to_be(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    with control_plane.db.write() as session:
        host = register_local_host(session, name="h1", region="local")
    build_layout(tmp_path / "img", [layer_tar([])])
    api.post("/v1/apps", headers=h, json={"name": "web"})
    made = api.post(
        "/v1/apps/web/machines",
        headers=h,
        json={"image": upload_layout(api, h, "web", tmp_path / "img"), "cmd": ["true"]},
    ).json()

    def report(errors: dict[str, str]) -> str:
        with control_plane.db.write() as session:
            apply_report(session, host.id, {made["id"]: ABSENT}, errors)
        with control_plane.db.read() as session:
            row = session.get(Machine, made["id"])
            assert row is not None
            return row.state

    assert report({}) == "starting"  # meant to run, not there yet
    assert report({made["id"]: "start failed"}) == "failed"
    api.post(f"/v1/apps/web/machines/{made['id']}/stop", headers=h)
    # A start refused because a stop came in between: it is stopped, not stuck starting.
    assert report({}) == "stopped"

"""A TCP service's edge port is checked when the release is made, not found broken at the edge.

Tried as a tenant would: a port outside the operator's range, the edge's own,
a port something on the host already listens on, a value HAProxy refuses. Each is refused with a 4xx
and no release; a free port in the range is accepted, and the app's own port
is accepted again on its next deploy (the edge itself holds it then).
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.config.appconfig import parse_app_config
from hangar.controlplane.edgecheck import check_edge_accepts
from hangar.controlplane.state import ControlPlane
from hangar.errors import ValidationError
from hangar.images.oci import build_layout, layer_tar
from hangar.store.tables import App, Release
from tests.conftest import Installation
from tests.uploads import upload_layout

SERVICE = """
app = "db"
[[services]]
  internal_port = 5432
  [[services.ports]]
    port = {port}
"""


def _free_in_range() -> tuple[socket.socket, int]:
    """A listener on a port in the default service range (10000-19999), and that port."""
    for port in range(15000, 19999):
        sock = socket.socket(socket.AF_INET6)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind(("::", port))
        except OSError:
            sock.close()
            continue
        sock.listen()
        return sock, port
    raise AssertionError("no free port in the range")


def test_service_ports_are_checked_at_deploy(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    build_layout(tmp_path / "img", [layer_tar([])])
    api.post("/v1/apps", headers=h, json={"name": "db"})
    image = upload_layout(api, h, "db", tmp_path / "img", "latest")

    def deploy(port: int) -> tuple[int, str]:
        got = api.post(
            "/v1/apps/db/releases",
            headers=h,
            json={"image": image, "config": SERVICE.format(port=port)},
        )
        return got.status_code, got.text

    status, text = deploy(22)
    assert status == 422 and "outside the range" in text and "10000-19999" in text
    status, text = deploy(installation.settings.edge_https_port)
    assert status == 409 and "the edge's own" in text
    squatter, port = _free_in_range()
    with squatter:
        status, text = deploy(port)
        assert status == 409 and "in use on the edge host" in text
    with control_plane.db.read() as s:
        app = s.execute(select(App).where(App.name == "db")).scalar_one()
        assert s.execute(select(Release).where(Release.app_id == app.id)).first() is None
    # Freed: accepted; and the app may keep its own port on its next deploy
    # even while the edge listens on it.
    status, text = deploy(port)
    assert status == 201, text
    with control_plane.db.write() as s:
        for release in s.execute(select(Release)).scalars():
            release.status = "complete"
    with socket.socket(socket.AF_INET6) as edge_holds:
        edge_holds.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        edge_holds.bind(("::", port))
        edge_holds.listen()
        status, text = deploy(port)
        assert status == 201, text


HUGE_RATE = """
app = "web"
[http_service]
  internal_port = 8080
  rate_limit = 9223372036854775807
"""


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")
def test_a_route_haproxy_refuses_fails_its_deploy(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """rate_limit = 2^63-1 used to stop every new edge configuration; now its deploy fails."""
    h = installation.headers
    build_layout(tmp_path / "img", [layer_tar([])])
    api.post("/v1/apps", headers=h, json={"name": "web"})
    image = upload_layout(api, h, "web", tmp_path / "img", "latest")
    got = api.post(
        "/v1/apps/web/releases",
        headers=h,
        json={"image": image, "config": HUGE_RATE},
    )
    # Refused before any release: the bound on rate_limit catches it first now.
    assert got.status_code == 400, got.text
    assert "rate_limit" in got.text
    with control_plane.db.read() as s:
        assert s.execute(select(Release)).first() is None
    # The check itself, whatever bounds the configuration's parser sets.
    with control_plane.db.read() as s:
        app = s.execute(select(App).where(App.name == "web")).scalar_one()
    config = parse_app_config(HUGE_RATE.replace("9223372036854775807", "5"))
    assert config.http_service is not None
    refused = config.model_copy(
        update={"http_service": config.http_service.model_copy(update={"rate_limit": 2**63 - 1})}
    )
    with pytest.raises(ValidationError, match="the edge cannot serve this configuration"):
        check_edge_accepts(app, refused)
    check_edge_accepts(app, config)  # a sane one passes

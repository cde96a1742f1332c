"""Default deny on routes; keys and files that `server init` makes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import make_url

from hangar.api.app import create_agent_app, create_app
from hangar.api.guard import (
    Guard,
    GuardedRouter,
    HostGuard,
    Public,
    WebGuard,
    assert_routes_guarded,
    iter_routes,
)
from hangar.controlplane.state import ControlPlane
from hangar.errors import ConfigError, KeyMaterialError
from tests.conftest import Installation, make_installation


def _markers(route: APIRoute) -> list[object]:
    out: list[object] = []
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Guard | HostGuard | Public | WebGuard):
            out.append(dep.call)
        stack.extend(dep.dependencies)
    return out


def test_every_route_declares_exactly_one_permission(control_plane: ControlPlane) -> None:
    app = create_app(control_plane)
    api_routes = [r for r in iter_routes(app.routes) if isinstance(r, APIRoute)]
    assert len(api_routes) >= 18
    public = []
    for route in api_routes:
        markers = _markers(route)
        assert len(markers) == 1, route.path
        assert not isinstance(markers[0], HostGuard), f"agents' route on the public API: {route}"
        if isinstance(markers[0], Public):
            public.append(route.path)
        if isinstance(markers[0], WebGuard):
            # A browser's page: its cookie is checked, and it lives under /web/.
            assert route.path.startswith("/web/"), route.path
    # The join route's credential is the join token in its body; ACME answers
    # are public by design (the ACME server fetches them through the edge);
    # signing in happens before anyone has credentials. Public web pages check
    # their own one-time cookie (a pending sign-in, a page's link) themselves.
    assert sorted(p for p in public if not p.startswith("/web/")) == [
        "/.well-known/acme-challenge/{token}",
        "/v1/auth/cli/token",
        "/v1/auth/device",
        "/v1/auth/device/token",
        "/v1/auth/idps",
        "/v1/ca",
        "/v1/healthz",
        "/v1/hosts/join",
    ]
    assert {p.split("/")[2] for p in public if p.startswith("/web/")} == {
        "callback",
        "factors",
        "signin",
        "static",
    }


def test_the_agents_api_has_only_host_guarded_routes(control_plane: ControlPlane) -> None:
    app = create_agent_app(control_plane)
    routes = list(iter_routes(app.routes))
    assert len(routes) >= 5
    for route in routes:
        assert isinstance(route, APIRoute), route  # no docs, no schema on this listener
        markers = _markers(route)
        assert len(markers) == 1 and isinstance(markers[0], HostGuard), route.path


def test_a_route_without_a_permission_cannot_be_registered() -> None:
    router = GuardedRouter()
    with pytest.raises(RuntimeError, match="must declare exactly one permission"):

        @router.get("/v1/leak")
        def leak() -> dict[str, str]:
            return {}


def test_an_app_with_an_unguarded_route_is_refused() -> None:
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.get("/v1/leak")
    def leak() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="/v1/leak"):
        assert_routes_guarded(app)


def test_framework_docs_routes_are_not_exempt() -> None:
    with pytest.raises(RuntimeError, match="/docs"):
        assert_routes_guarded(FastAPI())


def test_init_makes_private_files(installation: Installation) -> None:
    data = installation.settings.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("kek.key", "api.key", "ca.key.wrapped", "audit-signing.key.wrapped"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert b"PRIVATE KEY" not in (data / "ca.key.wrapped").read_bytes()


def test_init_refuses_an_existing_installation(installation: Installation) -> None:
    with pytest.raises(ConfigError, match="already holds") as info:
        make_installation(installation.settings.data_dir, installation.settings.database_url)
    assert info.value.hint and "--force" in info.value.hint


def test_server_refuses_a_loose_kek(installation: Installation) -> None:
    os.chmod(installation.settings.effective_kek_file, 0o644)
    with pytest.raises(KeyMaterialError, match="readable by its owner only"):
        ControlPlane.open(installation.settings)


def test_server_refuses_the_wrong_kek(installation: Installation) -> None:
    kek = installation.settings.effective_kek_file
    kek.write_text(os.urandom(32).hex())
    with pytest.raises(KeyMaterialError, match="another key-encryption key"):
        ControlPlane.open(installation.settings)


def test_nothing_secret_is_stored_unwrapped(
    installation: Installation, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The token, the KEK and the CA key appear nowhere in the database."""
    cp = ControlPlane.open(installation.settings)
    kek_hex = installation.settings.effective_kek_file.read_text().strip()
    needles = [
        installation.token.encode(),
        kek_hex.encode(),
        bytes.fromhex(kek_hex),
        installation.token.split("_", 1)[1][:40].encode(),
    ]
    if cp.db.is_sqlite:
        cp.close()
        data = installation.settings.data_dir
        blobs = [p.read_bytes() for p in data.glob("hangar.db*")]
    else:
        pg = request.getfixturevalue("postgres")
        blobs = [pg.dump(str(make_url(installation.settings.database_url).database))]
        cp.close()
    assert blobs
    for blob in blobs:
        for needle in needles:
            assert needle not in blob


def test_open_refuses_an_uninitialised_dir(tmp_path: Path) -> None:
    from hangar.config.settings import ServerSettings

    with pytest.raises(ConfigError, match="not an initialised"):
        ControlPlane.open(ServerSettings(data_dir=tmp_path))


def test_force_reinitialises(tmp_path: Path) -> None:
    first = make_installation(tmp_path / "d")
    from hangar.controlplane.bootstrap import init_server

    second = init_server(
        first.settings, org_name="acme", admin_email="admin@example.com", token_ttl=None, force=True
    )
    assert second.token != first.token

"""Private networks through the API: an app joins one; addresses say which."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.agent.runtimes.runc import RuncRuntime
from hangar.controlplane.machines import create_machine, register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import App, Host, Network
from tests.conftest import Installation, bearer, mint_token
from tests.integration.test_hosts import _join, _join_token


def _network_of(cp: ControlPlane, app_name: str) -> ipaddress.IPv6Network:
    with cp.db.write() as s:
        app = s.execute(select(App).where(App.name == app_name)).scalar_one()
        machine = create_machine(s, app, 1, "local")
        address = ipaddress.IPv6Address(machine.address)
    return ipaddress.IPv6Network((int(address) >> 80 << 80, 48))


def test_apps_join_named_networks_and_each_is_its_own_slash_48(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    with control_plane.db.write() as s:
        register_local_host(s, name="h1", region="local", memory_mb=8192)
    made = api.post("/v1/apps", headers=h, json={"name": "clinic-api"})
    assert made.status_code == 201 and made.json()["network"] == "default"
    made = api.post("/v1/apps", headers=h, json={"name": "billing-db", "network": "billing"})
    assert made.status_code == 201 and made.json()["network"] == "billing"
    api.post("/v1/apps", headers=h, json={"name": "billing-api", "network": "billing"})
    assert api.get("/v1/apps/billing-db", headers=h).json()["network"] == "billing"
    listed = {a["name"]: a["network"] for a in api.get("/v1/apps", headers=h).json()["items"]}
    assert listed == {"clinic-api": "default", "billing-db": "billing", "billing-api": "billing"}

    default, billing = (
        _network_of(control_plane, "clinic-api"),
        _network_of(control_plane, "billing-db"),
    )
    assert default != billing
    assert _network_of(control_plane, "billing-api") == billing

    # Another organization's "billing" is another network.
    api.post("/v1/orgs", headers=h, json={"name": "globex"})
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    eve = bearer(mint_token(control_plane, "eve@example.com", org="globex"))
    assert (
        api.post("/v1/apps", headers=eve, json={"name": "evil", "network": "billing"}).status_code
        == 201
    )
    assert _network_of(control_plane, "evil") not in (default, billing)
    with control_plane.db.read() as s:
        assert len(s.execute(select(Network)).scalars().all()) == 3

    for bad in ("Billing", "bad_name", "-x", "a" * 64):
        refused = api.post("/v1/apps", headers=h, json={"name": "x1", "network": bad})
        assert refused.status_code == 422, bad
    assert api.get("/v1/apps/x1", headers=h).status_code == 404  # nothing made


def test_mesh_registration_checks_input_and_peers_list_each_others_slices(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    from fastapi import FastAPI

    from hangar.api.app import create_agent_app
    from hangar.crypto.wgkeys import new_keypair
    from tests.integration.test_hosts import _as_host

    h = installation.headers
    one = _join(api, _join_token(api, h), name="one").json()
    two = _join(api, _join_token(api, h), name="two").json()
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.post("/v1/apps", headers=h, json={"name": "db", "network": "private"})
    agents: FastAPI = create_agent_app(control_plane)
    _, key_one = new_keypair()
    _, key_two = new_keypair()
    with (
        TestClient(_as_host(agents, one["certificate"]), raise_server_exceptions=False) as c1,
        TestClient(_as_host(agents, two["certificate"]), raise_server_exceptions=False) as c2,
    ):
        for bad in (
            {"public_key": "nope", "endpoint": "10.0.0.1:51820"},
            {"public_key": key_one, "endpoint": "10.0.0.1"},
        ):
            refused = c1.put("/agent/v1/mesh", json=bad)
            assert refused.status_code == 422, refused.text
        assert c2.get("/agent/v1/mesh/peers").json() == []  # nothing was stored
        assert (
            c1.put(
                "/agent/v1/mesh", json={"public_key": key_one, "endpoint": "10.0.0.1:51820"}
            ).status_code
            == 204
        )
        assert (
            c2.put(
                "/agent/v1/mesh", json={"public_key": key_two, "endpoint": "10.0.0.2:51820"}
            ).status_code
            == 204
        )
        (peer,) = c2.get("/agent/v1/mesh/peers").json()
        assert peer["public_key"] == key_one and peer["endpoint"] == "10.0.0.1:51820"
        slices = [ipaddress.IPv6Network(s) for s in peer["allowed_ips"]]
        assert len(slices) == 2 and all(s.prefixlen == 64 for s in slices)  # two networks
        # Each slice is host one's: its number in the fourth group.
        assert all((int(s.network_address) >> 64) & 0xFFFF == 1 for s in slices)
    api.delete("/v1/hosts/one", headers=h)
    with TestClient(_as_host(agents, two["certificate"]), raise_server_exceptions=False) as c2:
        assert c2.get("/agent/v1/mesh/peers").json() == []  # a removed host is no one's peer


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wireguard-go") is None or shutil.which("wg") is None,
    reason="needs wireguard-tools and wireguard-go (`make deps`)",
)
def test_the_control_planes_own_host_joins_the_mesh(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    runtime: RuncRuntime,
    base_dir: Path,
    tmp_path: Path,
) -> None:
    """`server run` with mesh_endpoint: registered in-process, peers applied to a real interface."""
    from hangar.agent.reconciler import Reconciler
    from hangar.agent.service import Agent
    from hangar.crypto.wgkeys import new_keypair
    from hangar.images.store import ImageStore
    from hangar.net.netns import link_exists
    from hangar.net.wireguard import Mesh
    from hangar.server.local import StoreLink

    h = installation.headers
    with control_plane.db.write() as s:
        local = register_local_host(s, name="cp", region="local", memory_mb=4096)
        local_id = local.id
    api.post("/v1/apps", headers=h, json={"name": "web"})
    worker = _join(api, _join_token(api, h), name="worker").json()
    _, worker_key = new_keypair()
    with control_plane.db.write() as s:
        row = s.get(Host, worker["host_id"])
        assert row is not None
        row.mesh_public_key, row.mesh_endpoint = worker_key, "127.0.0.1:51999"
    reconciler = Reconciler(runtime, ImageStore(base_dir / "images"), tmp_path / "agent")
    mesh = Mesh(local_id, tmp_path / "identity", listen_port=51998)
    try:
        agent = Agent(
            StoreLink.for_host(control_plane, local_id),
            reconciler,
            local_id,
            mesh=mesh,
            mesh_endpoint="127.0.0.1:51998",
        )
        agent.apply_mesh()
        assert link_exists(mesh.interface)
        assert set(mesh.peers()) == {worker_key}
        routes = subprocess.run(
            ["ip", "-6", "route", "show", "dev", mesh.interface], capture_output=True, text=True
        ).stdout
        assert "/64" in routes  # the worker's slice of the network, through the mesh
        hosts = {x["name"]: x for x in api.get("/v1/hosts", headers=h).json()}
        assert hosts["cp"]["mesh_public_key"] == mesh.public_key()
        assert hosts["cp"]["mesh_endpoint"] == "127.0.0.1:51998"
        # The worker now has the control plane's host as its peer.
        with control_plane.db.read() as s:
            from hangar.controlplane.mesh import mesh_peers

            assert [p.host for p in mesh_peers(s, worker["host_id"])] == ["cp"]
    finally:
        mesh.remove()

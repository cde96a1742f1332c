"""Organizations' metrics: members read their own organization's machines, never another's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from hangar.api.app import create_agent_app
from hangar.controlplane.appmetrics import receive
from hangar.controlplane.machines import create_machine, register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.images.oci import build_layout, layer_tar
from hangar.store.tables import App, Org
from tests.conftest import Installation, bearer
from tests.integration.test_api_boundaries import two_orgs
from tests.integration.test_hosts import _as_host, _join, _join_token
from tests.uploads import upload_layout

__all__ = ["two_orgs"]  # the fixture, shared with test_api_boundaries


def shipped(org: str, app: str, machine: str, value: float) -> str:
    """What an agent sends: its labels, and an app's own series (which may lie about its org)."""
    return (
        "# TYPE hangar_machine_memory_bytes gauge\n"
        f'hangar_machine_memory_bytes{{org="{org}",app="{app}",machine="{machine}"}} {value}\n'
        "# TYPE hangar_scrape_ok gauge\n"
        f'hangar_scrape_ok{{org="{org}",app="{app}",machine="{machine}"}} 1\n'
        "# TYPE hangar_machine_network_transmit_bytes counter\n"
        "hangar_machine_network_transmit_bytes_total"
        f'{{org="{org}",app="{app}",machine="{machine}"}} {value * 10}\n'
        "# TYPE app_requests counter\n"
        f'app_requests_total{{org="{org}",app="{app}",machine="{machine}",path="/"}} {value}\n'
    )


@pytest.fixture
def machines(control_plane: ControlPlane, two_orgs: dict[str, str]) -> dict[str, str]:
    """One machine each of clinic-api (acme) and secret-app (globex) on host h1, figures shipped."""
    with control_plane.db.write() as session:
        host = register_local_host(session, name="h1", region="local").id
        ids = {}
        for name in ("clinic-api", "secret-app"):
            app = session.execute(select(App).where(App.name == name)).scalar_one()
            ids[name] = create_machine(session, app, 1, "local").id
        orgs = dict(session.execute(select(Org.name, Org.id)).all())
    ids["host"] = host
    figures = {
        ids["clinic-api"]: (time.time(), shipped("whatever", "x", "y", 111)),
        # The other organization's app claims to be acme's: its labels are not believed.
        ids["secret-app"]: (time.time(), shipped(orgs["acme"], "clinic-api", "z", 222)),
    }
    assert receive(control_plane, host, figures) == 2
    ids.update(acme=orgs["acme"], globex=orgs["globex"])
    return ids


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
    ]


def test_members_read_their_own_organizations_machines_only(
    api: TestClient,
    installation: Installation,
    machines: dict[str, str],
    two_orgs: dict[str, str],
) -> None:
    acme = api.get("/v1/orgs/acme/metrics", headers=installation.headers)
    assert acme.status_code == 200 and acme.headers["content-type"].startswith("text/plain")
    got = samples(acme.text)
    assert got and {s[1]["org"] for s in got} == {machines["acme"]}
    assert {s[1]["machine"] for s in got} == {machines["clinic-api"]}
    assert {s[1]["app"] for s in got} == {"clinic-api"}
    assert 222 not in {s[2] for s in got}  # globex's machine, whatever its labels said
    memory = [s for s in got if s[0] == "hangar_machine_memory_bytes"]
    assert [s[2] for s in memory] == [111]
    sent = [s for s in got if s[0] == "hangar_machine_network_transmit_bytes_total"]
    assert [s[2] for s in sent] == [1110]  # globex's machine's traffic is not here

    eve = bearer(two_orgs["eve"])
    globex = samples(api.get("/v1/orgs/globex/metrics", headers=eve).text)
    assert {s[1]["org"] for s in globex} == {machines["globex"]}
    assert {s[2] for s in globex if s[0] == "hangar_machine_memory_bytes"} == {222}
    assert {s[2] for s in globex if s[0] == "hangar_machine_network_transmit_bytes_total"} == {2220}
    # Each one's view of the other's: refused, as every other object of it is.
    assert api.get("/v1/orgs/acme/metrics", headers=eve).status_code in (403, 404)
    assert api.get("/v1/apps/clinic-api/metrics", headers=eve).status_code in (403, 404)
    assert api.get("/v1/orgs/globex/metrics", headers=installation.headers).status_code in (
        403,
        404,
    )
    assert api.get("/v1/orgs/acme/metrics").status_code == 401


def test_an_app_token_reads_its_own_apps_machines_only(
    api: TestClient, installation: Installation, machines: dict[str, str]
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "other"})
    made = api.post("/v1/tokens", headers=h, json={"kind": "app", "org": "acme", "app": "other"})
    token = bearer(made.json()["token"])
    whole = api.get("/v1/orgs/acme/metrics", headers=token)
    assert whole.status_code == 200 and samples(whole.text) == []  # clinic-api's left out
    assert api.get("/v1/apps/clinic-api/metrics", headers=token).status_code == 403
    assert api.get("/v1/apps/other/metrics", headers=token).status_code == 200
    clinic = api.post(
        "/v1/tokens", headers=h, json={"kind": "app", "org": "acme", "app": "clinic-api"}
    )
    got = samples(api.get("/v1/orgs/acme/metrics", headers=bearer(clinic.json()["token"])).text)
    assert {s[1]["app"] for s in got} == {"clinic-api"}


def test_key_figures_for_one_app(
    api: TestClient, installation: Installation, machines: dict[str, str]
) -> None:
    got = api.get(
        "/v1/apps/clinic-api/metrics", headers=installation.headers, params={"format": "json"}
    )
    assert got.status_code == 200
    (figures,) = got.json()["machines"]
    assert figures["machine"] == machines["clinic-api"]
    assert figures["memory_bytes"] == 111 and figures["scrape_ok"] is True
    assert figures["app_series"] == 1 and 0 <= figures["age_seconds"] < 300
    # Its traffic, from its host's counters; only what was counted is shown.
    assert figures["tx_bytes"] == 1110 and figures["rx_bytes"] is None
    assert got.json()["edge"] == []  # no edge has served it
    text = api.get("/v1/apps/clinic-api/metrics", headers=installation.headers).text
    assert {s[1]["app"] for s in samples(text)} == {"clinic-api"}


def test_a_host_cannot_ship_figures_for_a_machine_it_does_not_run(
    control_plane: ControlPlane, machines: dict[str, str]
) -> None:
    forged = {machines["secret-app"]: (time.time(), shipped("o", "a", "m", 999))}
    assert receive(control_plane, "host_elsewhere", forged) == 0
    assert receive(control_plane, machines["host"], {"m_nosuch": (time.time(), "x 1\n")}) == 0
    oversized = {machines["clinic-api"]: (time.time(), "x 1\n" * 200_000)}
    assert receive(control_plane, machines["host"], oversized) == 0


def test_stale_figures_are_not_served(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    machines: dict[str, str],
) -> None:
    old = {machines["clinic-api"]: (time.time() - 3600, shipped("o", "a", "m", 5))}
    assert receive(control_plane, machines["host"], old) == 1
    assert samples(api.get("/v1/orgs/acme/metrics", headers=installation.headers).text) == []


def test_a_joined_host_ships_figures_for_its_own_machines_only(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Through the agents' (mutual-TLS) API, as a joined host's agent sends them."""
    h = installation.headers
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    joined = _join(api, _join_token(api, h)).json()
    build_layout(tmp_path / "img", [layer_tar([])])
    api.post("/v1/apps", headers=h, json={"name": "web"})
    one_off = {"image": upload_layout(api, h, "web", tmp_path / "img"), "cmd": ["true"]}
    api.post("/v1/hosts/h1/cordon", headers=h)
    mine = api.post("/v1/apps/web/machines", headers=h, json=one_off).json()["id"]
    api.post("/v1/hosts/h1/uncordon", headers=h)
    api.post("/v1/hosts/host-b/cordon", headers=h)
    theirs = api.post("/v1/apps/web/machines", headers=h, json=one_off).json()["id"]

    agents = create_agent_app(control_plane)
    body = {
        "machines": {
            mine: {"at": time.time(), "text": shipped("x", "x", "x", 1)},
            theirs: {"at": time.time(), "text": shipped("x", "x", "x", 2)},
        }
    }
    with TestClient(_as_host(agents, None), raise_server_exceptions=False) as anonymous:
        assert anonymous.post("/agent/v1/metrics", json=body).status_code == 401
    with TestClient(_as_host(agents, joined["certificate"]), raise_server_exceptions=False) as b:
        assert b.post("/agent/v1/metrics", json=body).status_code == 204
        huge = {"machines": {mine: {"at": time.time(), "text": "x 1\n" * 200_000}}}
        assert b.post("/agent/v1/metrics", json=huge).status_code in (413, 422)
    got = samples(api.get("/v1/apps/web/metrics", headers=h).text)
    memory = [s for s in got if s[0] == "hangar_machine_memory_bytes"]
    assert [(s[1]["machine"], s[2]) for s in memory] == [(mine, 1)]


EDGE_TEXT = (
    "# TYPE hangar_edge_http_requests counter\n"
    'hangar_edge_http_requests_total{app="web"} 9\n'
    "# TYPE hangar_machine_memory_bytes gauge\n"
    'hangar_machine_memory_bytes{app="web"} 4\n'
)


def test_only_a_joined_edge_host_ships_apps_edge_figures(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    """Through the agents' API: a machine host's edge figures are ignored; an edge host's
    are kept, and only their ``hangar_edge_*`` families."""
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    plain = _join(api, _join_token(api, h), name="host-b").json()
    edge = _join(api, _join_token(api, h, edge=True), name="edge-b").json()
    agents = create_agent_app(control_plane)
    body = {"machines": {}, "edge": {"web": {"at": time.time(), "text": EDGE_TEXT}}}
    with TestClient(_as_host(agents, plain["certificate"]), raise_server_exceptions=False) as b:
        assert b.post("/agent/v1/metrics", json=body).status_code == 204
    assert samples(api.get("/v1/apps/web/metrics", headers=h).text) == []
    with TestClient(_as_host(agents, edge["certificate"]), raise_server_exceptions=False) as e:
        assert e.post("/agent/v1/metrics", json=body).status_code == 204
        unknown = {"machines": {}, "edge": {"x" * 64: {"at": 0, "text": ""}}}
        assert e.post("/agent/v1/metrics", json=unknown).status_code == 422
    got = samples(api.get("/v1/apps/web/metrics", headers=h).text)
    assert [(s[0], s[1]["app"], s[2]) for s in got] == [
        ("hangar_edge_http_requests_total", "web", 9)
    ]
    assert got[0][1]["edge"] == edge["host_id"]


EDGE_FIGURES = (
    "# TYPE hangar_edge_http_requests counter\n"
    'hangar_edge_http_requests_total{app="web"} 12\n'
    "# TYPE hangar_edge_http_responses counter\n"
    'hangar_edge_http_responses_total{app="web",code="2xx"} 9\n'
    'hangar_edge_http_responses_total{app="web",code="4xx"} 2\n'
    'hangar_edge_http_responses_total{app="web",code="5xx"} 1\n'
    "# TYPE hangar_edge_response_time_average_seconds gauge\n"
    'hangar_edge_response_time_average_seconds{app="web"} 0.042\n'
    "# TYPE hangar_edge_current_sessions gauge\n"
    'hangar_edge_current_sessions{app="web"} 3\n'
)


def test_key_figures_show_each_edges_requests_and_response_time(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.post("/v1/apps", headers=h, json={"name": "other"})
    edge = _join(api, _join_token(api, h, edge=True), name="edge-b").json()
    agents = create_agent_app(control_plane)
    body = {"machines": {}, "edge": {"web": {"at": time.time(), "text": EDGE_FIGURES}}}
    with TestClient(_as_host(agents, edge["certificate"]), raise_server_exceptions=False) as e:
        assert e.post("/agent/v1/metrics", json=body).status_code == 204
    got = api.get("/v1/apps/web/metrics", headers=h, params={"format": "json"})
    assert got.status_code == 200, got.text
    (figures,) = got.json()["edge"]
    assert figures["edge"] == "edge-b" and 0 <= figures["age_seconds"] < 300
    assert figures["requests"] == 12 and figures["current_sessions"] == 3
    assert figures["responses"] == {"2xx": 9, "4xx": 2, "5xx": 1}
    assert figures["response_time_seconds"] == pytest.approx(0.042)
    assert figures["bytes_in"] is None
    # Another app's view has none of them.
    other = api.get("/v1/apps/other/metrics", headers=h, params={"format": "json"})
    assert other.json() == {"machines": [], "edge": []}

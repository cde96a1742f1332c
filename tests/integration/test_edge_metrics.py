"""Each app's figures at the edge: read from the real HAProxy's exporter, served to its own org.

A real HAProxy routes plain HTTP for two organizations' apps to small HTTP
servers on ``::1``; the agent's reader takes the exporter's backend figures,
the control plane keeps them from an edge host only, and each organization's
members read their own apps' figures through the API, never the other's.
"""

from __future__ import annotations

import http.client
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from hangar.agent.edgemetrics import EdgeMetrics, edge_texts, read_exporter
from hangar.controlplane.appmetrics import receive_edge
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.domain.routing import HttpRoute, RoutingTable, Server
from hangar.edge.haproxy import Edge
from hangar.store.tables import Org
from tests.conftest import Installation, bearer
from tests.integration.test_api_boundaries import two_orgs
from tests.integration.test_edge import Backend, running_edge

__all__ = ["two_orgs"]

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="needs haproxy (`make deps` installs it)"
)

HOSTS = {"clinic-api": "clinic.edge-metrics.test", "secret-app": "secret.edge-metrics.test"}


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    with running_edge(tmp_path) as e:
        yield e


def request(edge: Edge, host: str, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", edge.cfg.http_port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def values(text: str) -> dict[tuple[str, str, str], float]:
    """(sample name, app, code) -> value, for the hangar_edge_* samples."""
    return {
        (s.name, s.labels["app"], s.labels.get("code", "")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("hangar_edge_")
    }


def test_each_org_reads_its_own_apps_figures_at_the_edge(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    two_orgs: dict[str, str],
    edge: Edge,
) -> None:
    backends = {app: Backend(app) for app in HOSTS}
    try:
        table = RoutingTable(
            http=tuple(
                HttpRoute(
                    app=app,
                    hostnames=(HOSTS[app],),
                    servers=(Server(f"m_{app}", "::1", backends[app].port, True),),
                    force_https=False,
                )
                for app in HOSTS
            )
        )
        assert edge.apply(table)
        # clinic-api: 3 answered, 2 not found; secret-app: 7 answered.
        assert [request(edge, HOSTS["clinic-api"]) for _ in range(3)] == [200] * 3
        assert [request(edge, HOSTS["clinic-api"], "/missing") for _ in range(2)] == [404] * 2
        assert [request(edge, HOSTS["secret-app"]) for _ in range(7)] == [200] * 7

        figures = EdgeMetrics(edge.cfg.metrics_port).take()
    finally:
        for backend in backends.values():
            backend.shutdown()
            backend.server_close()
    assert set(figures) == set(HOSTS)  # the apps' backends only, not acme's or the frontends
    clinic = values(figures["clinic-api"][1])
    assert clinic[("hangar_edge_http_responses_total", "clinic-api", "2xx")] == 3
    assert clinic[("hangar_edge_http_responses_total", "clinic-api", "4xx")] == 2
    assert clinic[("hangar_edge_http_requests_total", "clinic-api", "")] == 5
    assert clinic[("hangar_edge_bytes_out_total", "clinic-api", "")] > 0
    assert ("hangar_edge_current_sessions", "clinic-api", "") in clinic
    assert ("hangar_edge_response_time_average_seconds", "clinic-api", "") in clinic

    with control_plane.db.write() as session:
        machine_host = register_local_host(session, name="h1").id
        edge_host = register_local_host(session, name="e1")
        edge_host.edge = True
        edge_host_id = edge_host.id
        orgs = dict(session.execute(select(Org.name, Org.id)).all())
    # A host that is not an edge keeps nothing; an edge host, its apps' figures.
    assert receive_edge(control_plane, machine_host, figures) == 0
    # A name the store does not know is ignored; and the text's own labels are not believed.
    lying = figures["secret-app"][1].replace('app="secret-app"', 'app="clinic-api"')
    sent = {
        **figures,
        "no-such-app": figures["clinic-api"],
        "secret-app": (figures["secret-app"][0], lying),
    }
    assert receive_edge(control_plane, edge_host_id, sent) == 2

    acme = api.get("/v1/orgs/acme/metrics", headers=installation.headers)
    assert acme.status_code == 200
    got = values(acme.text)
    assert got[("hangar_edge_http_responses_total", "clinic-api", "2xx")] == 3
    assert {app for _, app, _ in got} == {"clinic-api"}
    samples = [
        s
        for f in text_string_to_metric_families(acme.text)
        for s in f.samples
        if s.name.startswith("hangar_edge_")
    ]
    assert {s.labels["org"] for s in samples} == {orgs["acme"]}
    assert {s.labels["edge"] for s in samples} == {edge_host_id}
    assert 7 not in {s.value for s in samples}  # secret-app's requests, whatever its labels said

    eve = bearer(two_orgs["eve"])
    globex = values(api.get("/v1/orgs/globex/metrics", headers=eve).text)
    assert globex[("hangar_edge_http_responses_total", "secret-app", "2xx")] == 7
    assert {app for _, app, _ in globex} == {"secret-app"}
    one_app = values(api.get("/v1/apps/secret-app/metrics", headers=eve).text)
    assert one_app == globex
    assert api.get("/v1/apps/clinic-api/metrics", headers=eve).status_code in (403, 404)


def test_only_the_apps_backends_and_known_figures_are_kept(edge: Edge) -> None:
    """The exporter's other proxies (the frontends, acme, a TCP route) never become an app's."""
    assert edge.apply(RoutingTable())
    text = read_exporter(edge.cfg.metrics_port)
    assert 'proxy="acme"' in text and "haproxy_backend_" in text
    assert edge_texts(text) == {}
    crafted = (
        'haproxy_backend_http_requests_total{proxy="tcp_x_5432"} 4\n'
        'haproxy_backend_http_requests_total{proxy="app_"} 4\n'
        'haproxy_backend_weight{proxy="app_x"} 4\n'
        'haproxy_frontend_http_requests_total{proxy="app_x"} 4\n'
        'haproxy_backend_http_requests_total{proxy="app_x"} 4\n'
    )
    assert edge_texts(crafted) == {
        "x": "# HELP hangar_edge_http_requests HTTP requests the edge passed to the app.\n"
        "# TYPE hangar_edge_http_requests counter\n"
        'hangar_edge_http_requests_total{app="x"} 4.0\n'
    }

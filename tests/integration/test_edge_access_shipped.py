"""Access lines of an edge on another host: shipped up with its reports, kept only for apps
its routing table serves, without query strings, and sent to the app's organization's sinks.

The edge host speaks to the agents' API as the mutual-TLS listener presents
it (its client certificate in the request's scope); the sinks are fake Lokis.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pytest_httpserver import HTTPServer
from sqlalchemy import select

from hangar.agent.apilink import ACCESS, LogShipper
from hangar.api.app import create_agent_app
from hangar.contract.reports import MAX_ACCESS_LINE
from hangar.controlplane.logs import edge_source_name
from hangar.controlplane.logshipper import LogShipper as SinkShipper
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import AuditEvent
from tests.conftest import Installation, make_installation
from tests.integration.test_certs_api import WITH_SERVICE, _app_with_release
from tests.integration.test_edge_access_log import Sink
from tests.integration.test_hosts import _as_host, _join, _join_token

SSN = "123-45-6789"


@pytest.fixture
def installation(tmp_path: Path, database_url: str) -> Installation:
    return make_installation(tmp_path / "data", database_url, allowed_log_sink_hosts=["localhost"])


def _line(path: str) -> dict[str, str]:
    return {"ts": "2026-01-01T00:00:00+00:00", "line": f"10.0.0.9 GET {path} 200 12 3ms"}


def _joined(api: TestClient, h: dict[str, str], name: str, *, edge: bool) -> tuple[str, str]:
    """A joined host's client certificate (PEM) and id."""
    joined = _join(api, _join_token(api, h, name=name, edge=edge), name)
    assert joined.status_code == 201, joined.text
    return str(joined.json()["certificate"]), str(joined.json()["host_id"])


def _report(client: TestClient, access: dict[str, list[dict[str, str]]], **extra: Any) -> int:
    body = {"machines": {}, "access": access, **extra}
    return client.post("/agent/v1/report", json=body).status_code


def test_an_edge_host_ships_lines_only_of_apps_it_serves(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    httpserver: HTTPServer,
) -> None:
    cp, h = control_plane, installation.headers
    with cp.db.write() as session:
        register_local_host(session, name="h1", region="local")
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    assert api.post("/v1/apps", headers=h, json={"name": "web", "org": "acme"}).status_code == 201
    made = api.post("/v1/apps", headers=h, json={"name": "hidden", "org": "globex"})
    assert made.status_code == 201, made.text
    assert api.post("/v1/apps", headers=h, json={"name": "api", "org": "acme"}).status_code == 201
    _app_with_release(cp, "web", WITH_SERVICE.format(app="web", port=8080))
    _app_with_release(cp, "api", WITH_SERVICE.format(app="api", port=8080))
    _app_with_release(cp, "hidden", 'app = "hidden"\n')  # no service: no edge serves it
    acme, globex = Sink(httpserver, "/acme"), Sink(httpserver, "/globex")
    for org, sink in (("acme", acme), ("globex", globex)):
        added = api.post(
            f"/v1/orgs/{org}/log-sinks", headers=h, json={"kind": "loki", "url": sink.url}
        )
        assert added.status_code == 201, added.text
    edge_pem, edge_id = _joined(api, h, "edge-b", edge=True)
    plain_pem, _ = _joined(api, h, "plain-c", edge=False)

    agents = create_agent_app(cp)
    with (
        TestClient(_as_host(agents, edge_pem), raise_server_exceptions=False) as edge,
        TestClient(_as_host(agents, plain_pem), raise_server_exceptions=False) as plain,
    ):
        sent = {
            "web": [_line(f"/records/7?ssn={SSN}"), _line("/plain#frag"), _line("/ok")],
            "api": [_line("/v2/ping")],  # a second app of acme's: its own cursor at the sink
            "hidden": [_line("/forged-into-globex")],  # globex's app, which no edge serves
            "ghost": [_line("/no-such-app")],
        }
        assert _report(edge, sent) == 204
        # A host that is no edge serves no app: nothing it sends is kept, and it is audited.
        assert _report(plain, {"web": [_line("/forged-by-plain")]}) == 204
        # The contract bounds what a report carries, and names its version.
        too_long = {"ts": "t", "line": "x" * (MAX_ACCESS_LINE + 1)}
        assert _report(edge, {"web": [too_long]}) == 422
        assert _report(edge, {"Web/../x": [_line("/a")]}) == 422
        assert _report(edge, {"web": [_line("/a")]}, contract=1) == 422

    listed = api.get("/v1/apps/web/logs", headers=h, params={"stream": "access"})
    assert listed.status_code == 200, listed.text
    shown = [json.loads(line) for line in listed.text.splitlines()]
    assert [r["line"].split()[2] for r in shown] == ["/records/7", "/plain", "/ok"]
    assert {r["machine"] for r in shown} == {edge_source_name(edge_id)}
    hidden = api.get(
        "/v1/apps/hidden/logs", headers=h, params={"stream": "access", "org": "globex"}
    )
    assert hidden.status_code == 200 and hidden.text.strip() == ""

    with cp.db.read() as session:
        refused = list(
            session.execute(select(AuditEvent).where(AuditEvent.action == "edge.access")).scalars()
        )
    assert [(e.target, e.outcome) for e in refused] == [("plain-c", "denied")]

    shipper = SinkShipper(cp)
    try:
        shipper.round()
        shipper.round()  # a second round sends nothing again
    finally:
        shipper.close()
    # Each line once, though two rounds ran and two apps' edge lines share the sink.
    shipped = sorted((labels["app"], line.split()[2]) for labels, line in acme.access())
    assert shipped == [
        ("api", "/v2/ping"),
        ("web", "/ok"),
        ("web", "/plain"),
        ("web", "/records/7"),
    ]
    assert {labels.get("machine") for labels, _ in acme.access()} == {edge_source_name(edge_id)}
    assert globex.access() == []
    for body in acme.raw + globex.raw:
        assert SSN.encode() not in body and b"forged" not in body and b"frag" not in body
    found = subprocess.run(
        ["grep", "-rlE", "--", f"{SSN}|forged", str(installation.settings.data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.stdout == "", found.stdout


class _NoMachines:
    def log_path(self, machine_id: str) -> Path:
        return Path("/nonexistent") / machine_id / "output.log"


def test_the_agent_sends_each_apps_new_access_lines_once(tmp_path: Path) -> None:
    access = tmp_path / "access"
    access.mkdir()
    for app, paths in (("web", ["/a", "/b"]), ("api", ["/c"])):
        with open(access / f"{app}.log", "w") as handle:
            for path in paths:
                handle.write(json.dumps({**_line(path), "stream": "access"}) + "\n")
    (access / "NotAnApp.log").write_text(json.dumps(_line("/x")) + "\n")
    cursors = tmp_path / "cursors.json"
    shipper = LogShipper(_NoMachines(), cursors, access_dir=access)  # type: ignore[arg-type]
    shipper.collect([])
    first = shipper.collect_access()
    assert {app: [r["line"].split()[2] for r in rs] for app, rs in first.items()} == {
        "api": ["/c"],
        "web": ["/a", "/b"],
    }
    # Not committed (the control plane did not take them): sent again.
    shipper.collect([])
    assert shipper.collect_access() == first
    shipper.commit([])
    with open(access / "web.log", "a") as handle:
        handle.write(json.dumps({**_line("/d"), "stream": "access"}) + "\n")
    # A restarted agent resumes from the saved cursors.
    again = LogShipper(_NoMachines(), cursors, access_dir=access)  # type: ignore[arg-type]
    again.collect([])
    assert {a: [r["line"].split()[2] for r in rs] for a, rs in again.collect_access().items()} == {
        "web": ["/d"]
    }
    assert set(json.loads(cursors.read_text())) == {ACCESS + "web", ACCESS + "api"}

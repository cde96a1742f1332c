"""The edge's access logs, through the real HAProxy: per app, to its organization's sinks only,
and never with a query string (it may carry health or personal data).

Sinks are fake Lokis (pytest-httpserver); the control plane is real, with the
edge's host as its own (``cp.local``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from hangar.controlplane.logs import EDGE, log_sources
from hangar.controlplane.logshipper import LogShipper
from hangar.controlplane.state import ControlPlane
from hangar.crypto.ca import InternalCA
from hangar.domain.routing import HttpRoute, RoutingTable, Server
from hangar.edge.accesslog import access_log_path, parse
from hangar.edge.haproxy import Edge, EdgeConfig
from hangar.store.tables import App
from tests.conftest import Installation, make_installation
from tests.integration.test_changes import FakeHost, one_machine
from tests.integration.test_edge import DOMAIN, Backend, free_port, get, wildcard

__all__ = ["one_machine"]

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="needs haproxy (`make deps` installs it)"
)

SSN = "123-45-6789"
PUSH = "/loki/api/v1/push"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The agent's directory: short (the edge's sockets live in it), under /run."""
    path = Path("/run") / f"hangar-shiplogs-{tmp_path.name[-20:]}"
    path.mkdir(mode=0o700)
    yield path
    subprocess.run(["umount", str(path / "edge")], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def installation(tmp_path: Path, database_url: str, root: Path) -> Installation:
    return make_installation(
        tmp_path / "data", database_url, allowed_log_sink_hosts=["localhost"], agent_dir=root
    )


@pytest.fixture
def edge(root: Path) -> Iterator[Edge]:
    cfg = EdgeConfig(
        directory=root / "edge",
        bind_host="127.0.0.1",
        http_port=free_port(),
        https_port=free_port(),
    )
    running = Edge(cfg)
    yield running
    running.stop()


@pytest.fixture
def backend() -> Iterator[Backend]:
    made = Backend("one")
    yield made
    made.shutdown()
    made.server_close()


class Sink:
    def __init__(self, server: HTTPServer, path: str) -> None:
        self.records: list[tuple[dict[str, str], str]] = []
        self.raw: list[bytes] = []
        server.expect_request(path + PUSH, method="POST").respond_with_handler(self.take)
        self.url = server.url_for(path)

    def take(self, request: Request) -> Response:
        self.raw.append(request.get_data())
        for stream in json.loads(request.get_data())["streams"]:
            self.records += [(stream["stream"], line) for _, line in stream["values"]]
        return Response("", status=204)

    def access(self) -> list[tuple[dict[str, str], str]]:
        return [(labels, line) for labels, line in self.records if labels["stream"] == "access"]


class Quiet(FakeHost):
    """This host, whose machine wrote nothing: only the edge's lines are shipped."""

    def logs(self, machine_id: str) -> list[dict[str, Any]]:
        return []

    def logs_since(
        self, machine_id: str, cursor: dict[str, int] | None, budget: int
    ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
        return [], cursor


def wait_for(path: Path, count: int) -> list[str]:
    """The file's lines once it has ``count`` (HAProxy logs after the response is sent)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= count:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path} never had {count} lines")


def test_access_lines_reach_only_the_apps_org_without_query_strings(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    one_machine: tuple[App, str, str],
    edge: Edge,
    backend: Backend,
    root: Path,
    httpserver: HTTPServer,
) -> None:
    _, _, host_id = one_machine  # app "web" of organization acme, on this host
    control_plane.local = Quiet(host_id)
    h = installation.headers
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    acme, globex = Sink(httpserver, "/acme"), Sink(httpserver, "/globex")
    for org, sink in (("acme", acme), ("globex", globex)):
        made = api.post(
            f"/v1/orgs/{org}/log-sinks", headers=h, json={"kind": "loki", "url": sink.url}
        )
        assert made.status_code == 201, made.text

    ca = InternalCA.create("access-test")
    server = (Server("m_one", "::1", backend.port, True),)
    table = RoutingTable(
        http=(
            HttpRoute("web", (f"web.{DOMAIN}",), server, force_https=False, org="acme"),
            HttpRoute("other", (f"other.{DOMAIN}",), server, force_https=False, org="globex"),
        ),
        certs=(wildcard(ca),),
    )
    assert edge.apply(table) is True
    assert get(edge, f"web.{DOMAIN}", f"/records/7?ssn={SSN}", ca=ca)[0] == 200
    assert get(edge, f"web.{DOMAIN}", f"/plain?ssn={SSN}&x=1", https=False)[0] == 200
    assert get(edge, f"web.{DOMAIN}", "/missing", ca=ca)[0] == 404
    assert get(edge, f"other.{DOMAIN}", "/theirs", ca=ca)[0] == 200
    assert get(edge, f"nobody.{DOMAIN}", f"/x?ssn={SSN}", https=False)[0] == 404

    lines = wait_for(access_log_path(root, "web"), 3)
    wait_for(access_log_path(root, "other"), 1)
    records = [json.loads(line) for line in lines]
    assert [r["stream"] for r in records] == ["access"] * 3
    paths = [r["line"].split()[2] for r in records]
    assert paths == ["/records/7", "/plain", "/missing"]
    assert [r["line"].split()[3] for r in records] == ["200", "200", "404"]

    # Through the API, as `hangar logs --stream access` reads them.
    listed = api.get("/v1/apps/web/logs", headers=h, params={"stream": "access"})
    assert listed.status_code == 200
    shown = [json.loads(line) for line in listed.text.splitlines()]
    assert [r["line"].split()[2] for r in shown] == paths
    assert {r["machine"] for r in shown} == {EDGE}

    shipper = LogShipper(control_plane)
    try:
        shipper.round()
    finally:
        shipper.close()
    assert [line.split()[2] for _, line in acme.access()] == paths
    assert {labels["app"] for labels, _ in acme.access()} == {"web"}
    assert globex.access() == []  # another organization never receives them
    assert "/theirs" not in repr(acme.raw)

    # The query string reached no sink and no stored log.
    for body in acme.raw + globex.raw:
        assert SSN.encode() not in body and b"ssn" not in body
    for path in (root, installation.settings.data_dir):
        found = subprocess.run(
            ["grep", "-rl", "--", SSN, str(path)], capture_output=True, text=True, check=False
        )
        assert found.stdout == "", found.stdout


def test_an_app_name_taken_again_does_not_inherit_old_lines(
    control_plane: ControlPlane, one_machine: tuple[App, str, str], root: Path
) -> None:
    app, _, host_id = one_machine
    control_plane.local = Quiet(host_id)
    path = access_log_path(root, "web")
    path.parent.mkdir(parents=True, exist_ok=True)
    before = {"ts": "2000-01-01T00:00:00+00:00", "stream": "access", "line": "old"}
    path.write_text(json.dumps(before) + "\n")
    sources = [s for s in log_sources(control_plane, app) if s.machine_id == EDGE]
    assert len(sources) == 1 and sources[0].read() == []


@pytest.mark.parametrize(
    "raw",
    [
        b"hangar-access 1.2.3.4 app_web 200 5 3 GET /a?ssn=123-45-6789",
        b"hangar-access 1.2.3.4 app_web 200 5 3 GET /a#ssn?x=1",
        b"hangar-access 1.2.3.4 app_web 200 5 3 GET /a?b c?ssn=123-45-6789",
    ],
)
def test_the_parser_cuts_any_query_haproxy_would_send(raw: bytes) -> None:
    parsed = parse(raw)
    assert parsed is not None
    app, record = parsed
    assert app == "web" and "?" not in record["line"] and "ssn" not in record["line"]


@pytest.mark.parametrize(
    "raw",
    [
        b"hangar-access 1.2.3.4 http-in 404 5 3 GET /x",  # no app served it
        b"hangar-access 1.2.3.4 app_../../etc 200 5 3 GET /x",
        b"something else",
    ],
)
def test_lines_of_no_app_are_not_kept(raw: bytes) -> None:
    assert parse(raw) is None

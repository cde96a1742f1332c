"""A real server ships a deployed app's output to Loki (faked with pytest-httpserver)."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.e2e.test_cli_flow import Server
from tests.e2e.test_deploy_flow import write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs machines as root"),
]


@pytest.fixture
def server_env() -> dict[str, str]:
    """The fake Loki (on localhost) is allowed as a sink."""
    return {"HANGAR_ALLOWED_LOG_SINK_HOSTS": '["localhost"]'}


def test_a_deployed_apps_output_reaches_loki(
    deployed: tuple[Server, Path, Path], httpserver: HTTPServer
) -> None:
    srv, tmp, _ = deployed
    pushes: list[dict[str, Any]] = []

    def push(request: Request) -> Response:
        pushes.append(json.loads(request.get_data()))
        return Response("", status=204)

    token, password = "hec-CANARY-" + secrets.token_hex(8), "pw-CANARY-" + secrets.token_hex(8)
    hec: list[dict[str, Any]] = []
    bulk: list[dict[str, Any]] = []

    def collector(request: Request) -> Response:
        if request.headers.get("Authorization") != f"Splunk {token}":
            return Response('{"text":"Invalid authorization","code":3}', status=401)
        decoder, raw, at = json.JSONDecoder(), request.get_data().decode(), 0
        while at < len(raw):
            event, at = decoder.raw_decode(raw, at)
            hec.append(event)
            at += len(raw[at:]) - len(raw[at:].lstrip())
        return Response('{"text":"Success","code":0}', content_type="application/json")

    def elastic(request: Request) -> Response:
        assert request.authorization is not None
        assert (request.authorization.username, request.authorization.password) == (
            "hangar",
            password,
        )
        lines = request.get_data().decode().splitlines()
        bulk.extend(json.loads(doc) for doc in lines[1::2])
        items = [{"create": {"status": 201}} for _ in lines[1::2]]
        return Response(
            json.dumps({"errors": False, "items": items}), content_type="application/json"
        )

    httpserver.expect_request("/loki/api/v1/push", method="POST").respond_with_handler(push)
    httpserver.expect_request("/services/collector/event", method="POST").respond_with_handler(
        collector
    )
    httpserver.expect_request("/_bulk", method="POST").respond_with_handler(elastic)
    url = httpserver.url_for("/").rstrip("/")
    refused = srv.cli("logs", "sinks", "add", "syslog", url, check=False)
    assert refused.returncode == 1 and "a syslog sink is tls://" in refused.stderr
    refused = srv.cli("logs", "sinks", "add", "splunk-hec", url, check=False)
    assert refused.returncode == 1 and "needs a credential" in refused.stderr
    added = srv.cli("logs", "sinks", "add", "loki", url)
    assert "Added log sink sink_" in added.stdout
    # Credentials come on stdin, never on the command line.
    srv.cli("logs", "sinks", "add", "splunk-hec", url, "--token", stdin=token + "\n")
    srv.cli("logs", "sinks", "add", "elasticsearch", url, "--user", "hangar", stdin=password)
    sinks = srv.json("logs", "sinks", "list")
    assert isinstance(sinks, list)
    assert [(s["kind"], s["auth"]) for s in sinks] == [
        ("loki", None),
        ("splunk-hec", "splunk"),
        ("elasticsearch", "basic"),
    ]
    listed = srv.cli("logs", "sinks", "list").stdout
    assert token not in listed and password not in listed and "splunk" in listed
    sink = sinks[0]

    srv.cli("deploy", "--config", str(write_config(tmp, "good.toml")))
    # busybox httpd -v logs every request (the health checks' too) to stderr.
    deadline = time.monotonic() + 60
    streams: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        streams = [
            s for p in list(pushes) for s in p["streams"] if s["stream"].get("app") == "hello"
        ]
        hello = [e for e in list(hec) if e["fields"]["app"] == "hello"]
        docs = [d for d in list(bulk) if d["app"] == "hello"]
        if streams and hello and docs:
            break
        time.sleep(0.5)
    assert streams, "no push reached the fake Loki"
    labels = streams[0]["stream"]
    assert labels["org"] == "acme" and labels["machine"].startswith("m_")
    assert all(line for s in streams for _, line in s["values"])
    shown = srv.cli("logs", "--app", "hello", "--json").stdout.splitlines()
    shipped = {line for s in streams for _, line in s["values"]}
    assert shipped <= {json.loads(row)["line"] for row in shown}  # what it shipped is the output
    assert {e["event"]["line"] for e in hello} <= {json.loads(row)["line"] for row in shown}
    assert {d["message"] for d in docs} <= {json.loads(row)["line"] for row in shown}
    assert any(e["event"]["stream"] == "audit" for e in hec)  # the audit trail went too
    # Write-only: not in the store, the buffers, the server's log.
    for path in [*srv.data_dir.rglob("*"), srv.data_dir.parent / "server.log"]:
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and password.encode() not in data, path
    for other in sinks[1:]:
        srv.cli("logs", "sinks", "remove", other["id"], "--yes")
    srv.cli("logs", "sinks", "remove", sink["id"], "--yes")
    assert srv.json("logs", "sinks", "list") == []

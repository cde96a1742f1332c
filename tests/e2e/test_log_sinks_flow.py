"""A real server ships a deployed app's output to Loki (faked with pytest-httpserver)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.e2e.test_cli_flow import Server, free_port, init, login, stop
from tests.e2e.test_deploy_flow import build_example_image, start_server, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs machines as root"),
]


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[tuple[Server, Path, Path]]:
    """A server with its agent, allowing the fake Loki (on localhost) as a sink, app hello."""
    agent_root = Path(tempfile.mkdtemp(prefix="hangar-sinks-", dir="/var/tmp"))
    agent_root.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env["HANGAR_CONFIG_DIR"] = str(tmp_path / "cli")
    data_dir, token_file = tmp_path / "data", tmp_path / "admin.token"
    init(data_dir, token_file, env)
    port = free_port()
    proc = start_server(
        data_dir,
        agent_root / "agent",
        {**env, "HANGAR_ALLOWED_LOG_SINK_HOSTS": '["localhost"]'},
        port,
    )
    srv = Server(data_dir, f"https://127.0.0.1:{port}", token_file.read_text().strip(), env, proc)
    build_example_image(tmp_path / "image")
    try:
        login(srv)
        srv.cli("apps", "create", "hello")
        yield srv, tmp_path, agent_root
    finally:
        srv.cli("apps", "destroy", "hello", "--yes", check=False)
        machines = agent_root / "agent/state/machines"
        deadline = time.monotonic() + 30
        while machines.exists() and any(machines.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop(srv.process)
        subprocess.run(["umount", str(agent_root / "agent/bundles")], capture_output=True)
        shutil.rmtree(agent_root, ignore_errors=True)


def test_a_deployed_apps_output_reaches_loki(
    deployed: tuple[Server, Path, Path], httpserver: HTTPServer
) -> None:
    srv, tmp, _ = deployed
    pushes: list[dict[str, Any]] = []

    def push(request: Request) -> Response:
        pushes.append(json.loads(request.get_data()))
        return Response("", status=204)

    httpserver.expect_request("/loki/api/v1/push", method="POST").respond_with_handler(push)
    url = httpserver.url_for("/").rstrip("/")
    for kind in ("elasticsearch", "splunk-hec", "syslog"):
        refused = srv.cli("logs", "sinks", "add", kind, url, check=False)
        assert refused.returncode == 1 and f"does not ship logs to {kind} yet" in refused.stderr
    added = srv.cli("logs", "sinks", "add", "loki", url)
    assert "Added log sink sink_" in added.stdout
    (sink,) = srv.json("logs", "sinks", "list")  # type: ignore[misc]
    assert sink["kind"] == "loki"

    srv.cli("deploy", "--config", str(write_config(tmp, "good.toml")))
    # busybox httpd -v logs every request (the health checks' too) to stderr.
    deadline = time.monotonic() + 60
    streams: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        streams = [s for p in list(pushes) for s in p["streams"] if s["stream"]["app"] == "hello"]
        if streams:
            break
        time.sleep(0.5)
    assert streams, "no push reached the fake Loki"
    labels = streams[0]["stream"]
    assert labels["org"] == "acme" and labels["machine"].startswith("m_")
    assert all(line for s in streams for _, line in s["values"])
    shown = srv.cli("logs", "--app", "hello", "--json").stdout.splitlines()
    shipped = {line for s in streams for _, line in s["values"]}
    assert shipped <= {json.loads(row)["line"] for row in shown}  # what it shipped is the output
    srv.cli("logs", "sinks", "remove", sink["id"], "--yes")
    assert srv.json("logs", "sinks", "list") == []

"""`hangar server run --log-format json` with the operator's sink: every line JSON, and shipped."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.e2e.test_cli_flow import free_port, init, start, stop

pytestmark = pytest.mark.slow


def test_server_logs_json_and_ships_them_to_the_operator(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    received: list[dict[str, Any]] = []

    def take(request: Request) -> Response:
        for stream in json.loads(request.get_data())["streams"]:
            received.extend(
                {"labels": stream["stream"], **json.loads(line)} for _, line in stream["values"]
            )
        return Response("", status=204)

    httpserver.expect_request("/loki/api/v1/push", method="POST").respond_with_handler(take)
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env["HANGAR_OWN_LOG_SINK_URL"] = httpserver.url_for("/").rstrip("/")
    init(data_dir, tmp_path / "token", env)
    proc = start(data_dir, env, free_port(), "--no-agent", "--log-format", "json")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            "Hangar API listening" in r["message"] for r in received
        ):
            time.sleep(0.1)
    finally:
        stop(proc)
    assert any("Hangar API listening" in r["message"] for r in received), received
    assert {r["labels"]["app"] for r in received} == {"hangar-server"}
    assert all("org" not in r["labels"] for r in received)
    lines = (tmp_path / "server.log").read_text().splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)  # every line, Uvicorn's too
        assert {"time", "level", "logger", "message"} <= set(record)
    assert any(json.loads(line)["logger"].startswith("uvicorn") for line in lines)

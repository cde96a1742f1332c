"""Hangar's own logs: JSON lines, and shipped to the operator's sink, never an organization's.

The operator's Loki is faked with pytest-httpserver, as in test_log_sinks.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from hangar.config.settings import ServerSettings
from hangar.errors import ConfigError
from hangar.server.serve import own_log_shipper
from hangar.telemetry.ownlogs import OwnLogShipper, OwnLogSink

PUSH = "/loki/api/v1/push"


class FakeLoki:
    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.pushes: list[dict[str, Any]] = []
        self.status = 204
        server.expect_request(PUSH, method="POST").respond_with_handler(self._take)

    def _take(self, request: Request) -> Response:
        if self.status != 204:
            return Response("down", status=self.status)
        self.pushes.append(json.loads(request.get_data()))
        return Response("", status=204)

    def streams(self) -> list[dict[str, Any]]:
        return [s for push in self.pushes for s in push["streams"]]

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(v[1]) for s in self.streams() for v in s["values"]]


@pytest.fixture
def loki(httpserver: HTTPServer) -> Iterator[FakeLoki]:
    # The fake runs in this process: its own request lines are not Hangar's.
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    yield FakeLoki(httpserver)
    werkzeug.setLevel(level)


@pytest.fixture
def shipper(loki: FakeLoki, tmp_path: Path) -> Iterator[OwnLogShipper]:
    sink = OwnLogSink("loki", loki.server.url_for("/").rstrip("/"))
    shipper = OwnLogShipper(
        sink, tmp_path / "own-logs", component="hangar-server", host="h1", interval=3600
    )
    shipper.start()
    yield shipper
    shipper.stop()


def test_json_format_is_one_object_a_line(tmp_path: Path) -> None:
    """Run as a process does: a multi-line message and a traceback stay one JSON line each."""
    program = (
        "import logging\n"
        "from hangar.telemetry.ownlogs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "log = logging.getLogger('hangar.test')\n"
        "log.debug('not at info')\n"
        "log.info('first\\nsecond %s', 'arg')\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    log.exception('failed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "info" and first["logger"] == "hangar.test"
    assert first["message"] == "first\nsecond arg"
    assert first["time"].endswith("+00:00")
    assert second["message"] == "failed" and "ValueError: boom" in second["exc"]


def test_own_logs_reach_the_operators_sink(
    loki: FakeLoki, shipper: OwnLogShipper, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # httpx logs each request at info
    logging.getLogger("hangar.deployer").warning("org acme: deploy of clinic-api failed")
    other = threading.Thread(target=lambda: logging.getLogger("hangar.api").error("from a thread"))
    other.start()
    other.join()
    shipper.round()
    lines = loki.lines()
    messages = [line["message"] for line in lines]
    assert "org acme: deploy of clinic-api failed" in messages
    assert "from a thread" in messages
    labels = {json.dumps(s["stream"], sort_keys=True) for s in loki.streams()}
    # The installation's logs carry no organization label: they belong to none.
    assert labels == {json.dumps({"app": "hangar-server", "machine": "h1", "stream": "hangar"})}
    # The push's own HTTP client lines were not shipped (each would make another).
    before = len(loki.pushes)
    shipper.round()
    assert len(loki.pushes) == before


def test_sink_down_loses_nothing(loki: FakeLoki, shipper: OwnLogShipper) -> None:
    loki.status = 503
    log = logging.getLogger("hangar.acme")
    for n in range(5):
        log.warning("line %d", n)
    shipper.round()
    assert loki.pushes == []
    assert shipper.failures == 1
    loki.status = 204
    shipper._retry_at = 0.0  # the backoff has passed
    shipper.round()
    assert [m["message"] for m in loki.lines() if m["logger"] == "hangar.acme"] == [
        f"line {n}" for n in range(5)
    ]


def test_restart_resumes_from_the_buffer(loki: FakeLoki, tmp_path: Path) -> None:
    sink = OwnLogSink("loki", loki.server.url_for("/").rstrip("/"))
    loki.status = 500
    first = OwnLogShipper(sink, tmp_path / "b", component="hangar-agent", interval=3600)
    first.start()
    logging.getLogger("hangar.agent").warning("kept across a restart")
    first.stop()
    assert loki.pushes == []
    loki.status = 204
    second = OwnLogShipper(sink, tmp_path / "b", component="hangar-agent", interval=3600)
    second.round()
    assert "kept across a restart" in [m["message"] for m in loki.lines()]


def test_settings_name_the_operators_sink(tmp_path: Path, loki: FakeLoki) -> None:
    url = loki.server.url_for("/").rstrip("/")
    assert own_log_shipper(ServerSettings(data_dir=tmp_path)) is None
    shipper = own_log_shipper(ServerSettings(data_dir=tmp_path, own_log_sink_url=url))
    assert shipper is not None and shipper.component == "hangar-server"
    with pytest.raises(ConfigError, match="token"):
        own_log_shipper(
            ServerSettings(data_dir=tmp_path, own_log_sink_kind="splunk-hec", own_log_sink_url=url)
        )
    with pytest.raises(ConfigError, match="without credentials"):
        own_log_shipper(ServerSettings(data_dir=tmp_path, own_log_sink_url="https://u:p@x.test"))
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        OwnLogSink("elasticsearch", "https://es.test", empty).driver()
    with pytest.raises(ConfigError, match="takes no credential"):
        OwnLogSink("loki", "https://loki.test", empty).driver()

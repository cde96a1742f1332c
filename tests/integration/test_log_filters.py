"""``GET /v1/apps/{app}/logs`` filters: stream, time window, text; bad filters refused."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hangar.cli.logs import _when
from hangar.controlplane.logs import LogFilter
from hangar.controlplane.state import ControlPlane
from hangar.errors import ValidationError
from hangar.store.tables import App
from tests.conftest import Installation
from tests.integration.test_changes import FakeHost, one_machine

__all__ = ["one_machine"]  # the fixture, shared with test_changes

T0 = dt.datetime(2026, 1, 31, 9, 0, tzinfo=dt.UTC)


def record(minute: int, stream: str, line: str) -> dict[str, Any]:
    ts = (T0 + dt.timedelta(minutes=minute)).isoformat(timespec="microseconds")
    return {"ts": ts, "stream": stream, "line": line}


RECORDS = [
    record(0, "stdout", "booting"),
    record(1, "stderr", "warning: disk ERROR soon"),
    record(2, "stdout", "GET /healthz 200"),
    record(3, "stderr", "ERROR: lost the database"),
    record(4, "stdout", "GET /patients 500"),
]


class LoggingHost(FakeHost):
    def logs(self, machine_id: str) -> list[dict[str, Any]]:
        return list(RECORDS)


def lines(api: TestClient, installation: Installation, **params: str) -> list[str]:
    got = api.get("/v1/apps/web/logs", headers=installation.headers, params=params)
    assert got.status_code == 200, got.text
    return [json.loads(row)["line"] for row in got.text.splitlines()]


def test_filters_narrow_the_output(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    one_machine: tuple[App, str, str],
) -> None:
    _, machine_id, host_id = one_machine
    control_plane.local = LoggingHost(host_id)
    everything = [r["line"] for r in RECORDS]
    assert lines(api, installation) == everything
    assert lines(api, installation, stream="stderr") == [everything[1], everything[3]]
    assert lines(api, installation, match="ERROR") == [everything[1], everything[3]]
    assert lines(api, installation, match="error") == []  # case-sensitive, plain text
    assert lines(api, installation, match=".*") == []  # not a pattern
    window = {"since": (T0 + dt.timedelta(minutes=1)).isoformat(), "until": "2026-01-31T09:03:00"}
    assert lines(api, installation, **window) == everything[1:3]
    assert lines(api, installation, stream="stdout", match="GET", machine=machine_id) == [
        everything[2],
        everything[4],
    ]


@pytest.mark.parametrize(
    "params",
    [
        {"stream": "stdin"},
        {"since": "yesterday"},
        {"since": "2026-01-31T10:00:00Z", "until": "2026-01-31T09:00:00Z"},
        {"since": "2026-01-31T09:00:00Z", "until": "2026-01-31T09:00:00Z"},
        {"match": "x" * 257},
    ],
)
def test_bad_filters_are_refused_with_a_problem(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    one_machine: tuple[App, str, str],
    params: dict[str, str],
) -> None:
    control_plane.local = LoggingHost(one_machine[2])
    got = api.get("/v1/apps/web/logs", headers=installation.headers, params=params)
    assert got.status_code == 422
    assert got.headers["content-type"].startswith("application/problem+json")


def test_a_record_without_a_readable_time_is_outside_every_window() -> None:
    window = LogFilter(since=T0)
    assert not window.accepts({"ts": "t", "stream": "stdout", "line": "x"})
    assert LogFilter().accepts({"ts": "t", "stream": "stdout", "line": "x"})


def test_the_cli_reads_durations_ago_and_times() -> None:
    now = dt.datetime(2026, 1, 31, 12, 0, tzinfo=dt.UTC)
    assert _when("15m", "--since", now) == "2026-01-31T11:45:00+00:00"
    assert _when("2026-01-31T09:00:00", "--since", now) == "2026-01-31T09:00:00+00:00"
    assert _when("2026-01-31T09:00:00+01:00", "--until", now) == "2026-01-31T09:00:00+01:00"
    with pytest.raises(ValidationError, match="--since 'lunch'"):
        _when("lunch", "--since", now)

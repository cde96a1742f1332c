"""Log sinks: configured per organization, fed in order, nothing lost silently.

Loki is faked in-process with pytest-httpserver, answering as its push API
does (204), or failing as a real one can (500, 429, 400).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from werkzeug import Request, Response

from hangar.audit.log import chain_for
from hangar.controlplane.logshipper import LogShipper
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import App, AuditEvent
from hangar.telemetry.logfiles import RotatingLog, read_all, read_since
from hangar.telemetry.metrics import REGISTRY
from tests.conftest import Installation, bearer, make_installation, mint_token
from tests.integration.test_changes import FakeHost, one_machine

__all__ = ["one_machine"]  # the fixture, shared with test_changes

T0 = dt.datetime(2026, 1, 31, 9, 0, tzinfo=dt.UTC)
PUSH = "/loki/api/v1/push"


@pytest.fixture
def sink_buffer_bytes() -> int:
    """Each sink's buffer: small, so that tests can fill it (a module overrides it)."""
    return 64 << 10


@pytest.fixture
def installation(tmp_path: Path, database_url: str, sink_buffer_bytes: int) -> Installation:
    """The fake Loki listens on localhost: the operator allows it by name."""
    return make_installation(
        tmp_path / "data",
        database_url,
        allowed_log_sink_hosts=["localhost"],
        log_sink_buffer_bytes=sink_buffer_bytes,
    )


class Output(FakeHost):
    """This host's machine, writing lines the test adds to a real rotating log."""

    def __init__(self, host_id: str, path: Path, max_bytes: int = 8 << 20) -> None:
        super().__init__(host_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.log = RotatingLog(path, max_bytes=max_bytes)
        self.written = 0

    def write(self, count: int, pad: int = 0) -> None:
        for n in range(self.written, self.written + count):
            ts = (T0 + dt.timedelta(milliseconds=n)).isoformat(timespec="microseconds")
            stream = "stderr" if n % 3 == 0 else "stdout"
            self.log.write_record({"ts": ts, "stream": stream, "line": f"line {n} " + "x" * pad})
        self.written += count

    def logs(self, machine_id: str) -> list[dict[str, Any]]:
        return read_all(self.path)

    def logs_since(
        self, machine_id: str, cursor: dict[str, int] | None, budget: int
    ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
        return read_since(self.path, cursor, budget)


class Loki:
    """What the fake Loki accepted, and how it answers next."""

    def __init__(self, server: HTTPServer) -> None:
        self.lines: list[str] = []  # machines' output
        self.audit: list[dict[str, Any]] = []  # the audit trail, shipped alongside
        self.status = 204
        self.labels: list[dict[str, str]] = []
        server.expect_request(PUSH, method="POST").respond_with_handler(self.handle)
        self.url = server.url_for("/").rstrip("/")

    def handle(self, request: Request) -> Response:
        if self.status != 204:
            return Response("unavailable", status=self.status)
        body = json.loads(request.get_data())
        batch = []
        for stream in body["streams"]:
            if stream["stream"].get("stream") == "audit":
                self.audit += [json.loads(line) for _, line in stream["values"]]
                continue
            self.labels.append(stream["stream"])
            batch += [(int(ts), line) for ts, line in stream["values"]]
        # Loki orders by time within a stream; across the batch, time orders them too.
        self.lines += [line for _, line in sorted(batch, key=lambda v: v[0])]
        return Response("", status=204)


@pytest.fixture
def loki(httpserver: HTTPServer) -> Loki:
    return Loki(httpserver)


@pytest.fixture
def output(
    control_plane: ControlPlane, one_machine: tuple[App, str, str], tmp_path: Path
) -> Iterator[Output]:
    host = Output(one_machine[2], tmp_path / "machine" / "output.log")
    control_plane.local = host
    yield host
    host.log.close()


def add(api: TestClient, installation: Installation, url: str, kind: str = "loki") -> Any:
    return api.post(
        "/v1/orgs/acme/log-sinks", headers=installation.headers, json={"kind": kind, "url": url}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shipper(control_plane: ControlPlane, clock: Clock) -> Iterator[LogShipper]:
    """The control plane's log shipper on the test's clock, its sinks closed at the end."""
    made = LogShipper(control_plane, clock=clock)
    yield made
    made.close()


def events(cp: ControlPlane, action: str) -> list[AuditEvent]:
    with cp.db.read() as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars()
        )


def detail(event: AuditEvent) -> dict[str, Any]:
    raw = event.detail
    return dict(json.loads(raw) if isinstance(raw, str) else raw)


def numbers(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines]


def test_sinks_are_added_listed_removed_and_refused_clearly(
    api: TestClient, installation: Installation, control_plane: ControlPlane, loki: Loki
) -> None:
    made = add(api, installation, loki.url)
    assert made.status_code == 201, made.text
    sink = made.json()
    assert sink["kind"] == "loki" and sink["url"] == loki.url
    assert len(events(control_plane, "logs.sink.add")) == 1
    listed = api.get("/v1/orgs/acme/log-sinks", headers=installation.headers).json()
    assert [s["id"] for s in listed] == [sink["id"]]
    refused = add(api, installation, loki.url, "syslog")
    assert refused.status_code == 422 and "a syslog sink is tls://" in refused.text
    for url, why in [
        ("ftp://example.com", "not an http(s) URL"),
        ("https://user:secret@example.com", "cannot carry credentials"),
        ("https://example.com/?q=1", "without query"),
        ("http://10.0.0.1:3100", "unreachable"),
        ("http://127.0.0.1:3100", "unreachable"),
        ("http://[::1]:3100", "unreachable"),
        ("http://169.254.169.254", "unreachable"),
    ]:
        refused = add(api, installation, url)
        assert refused.status_code == 422 and why in refused.text, (url, refused.text)
        assert "secret" not in refused.text
    assert len(api.get("/v1/orgs/acme/log-sinks", headers=installation.headers).json()) == 1
    gone = api.delete(f"/v1/orgs/acme/log-sinks/{sink['id']}", headers=installation.headers)
    assert gone.status_code == 204
    assert api.get("/v1/orgs/acme/log-sinks", headers=installation.headers).json() == []
    assert len(events(control_plane, "logs.sink.remove")) == 1


def test_another_organizations_members_cannot_see_or_change_its_sinks(
    api: TestClient, installation: Installation, control_plane: ControlPlane, loki: Loki
) -> None:
    sink = add(api, installation, loki.url).json()
    h = installation.headers
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    eve = bearer(mint_token(control_plane, "eve@example.com", kind="org", org="globex"))
    assert api.get("/v1/orgs/acme/log-sinks", headers=eve).status_code in (403, 404)
    assert api.delete(f"/v1/orgs/acme/log-sinks/{sink['id']}", headers=eve).status_code in (
        403,
        404,
    )
    assert api.delete(f"/v1/orgs/globex/log-sinks/{sink['id']}", headers=eve).status_code == 404
    api.post(
        "/v1/orgs/acme/members", headers=h, json={"email": "vic@example.com", "role": "member"}
    )
    vic = bearer(mint_token(control_plane, "vic@example.com", kind="org", org="acme"))
    assert api.get("/v1/orgs/acme/log-sinks", headers=vic).status_code == 200
    assert add(api, installation, loki.url).status_code == 201
    as_member = api.post(
        "/v1/orgs/acme/log-sinks", headers=vic, json={"kind": "loki", "url": loki.url}
    )
    assert as_member.status_code == 403  # admins choose where all output goes


def test_output_reaches_loki_in_order_through_an_outage(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    loki: Loki,
    output: Output,
    clock: Clock,
    shipper: LogShipper,
) -> None:
    add(api, installation, loki.url)
    output.write(5)
    shipper.round()
    assert numbers(loki.lines) == [0, 1, 2, 3, 4]
    labels = {tuple(sorted(s)) for s in loki.labels}
    assert labels == {("app", "machine", "org", "stream")}
    assert {s["org"] for s in loki.labels} == {"acme"} and {s["app"] for s in loki.labels} == {
        "web"
    }
    for status in (500, 429, 503):
        loki.status = status
        output.write(10)
        shipper.round()
        clock.now += 0.5
        shipper.round()  # backing off: not even tried
        clock.now += 120
        shipper.round()  # tried again: still failing
    failures = REGISTRY.get_sample_value(
        "hangar_log_sink_failures_total", {"org": _org(control_plane), "sink": _sink(control_plane)}
    )
    assert failures is not None and failures >= 3  # each kind of failure was retried
    loki.status = 204
    clock.now += 120
    shipper.round()
    assert numbers(loki.lines) == list(range(35))  # every line, once, in order
    assert events(control_plane, "logs.sink.dropped") == []


def all_events(cp: ControlPlane) -> list[AuditEvent]:
    """The organization's audit events, in their chain's order."""
    with cp.db.read() as session:
        return list(
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.chain == chain_for(_org(cp)))
                .order_by(AuditEvent.seq)
            ).scalars()
        )


def _added_seq(cp: ControlPlane) -> int:
    (event,) = events(cp, "logs.sink.add")
    return event.seq


def _org(cp: ControlPlane) -> str:
    with cp.db.read() as session:
        return session.execute(select(App.org_id).where(App.name == "web")).scalar_one()


def _sink(cp: ControlPlane) -> str:
    from hangar.store.tables import LogSinkRow

    with cp.db.read() as session:
        return session.execute(select(LogSinkRow.id)).scalar_one()


def test_a_full_buffer_drops_the_oldest_and_the_count_is_exact_and_audited(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    loki: Loki,
    output: Output,
    clock: Clock,
    shipper: LogShipper,
) -> None:
    add(api, installation, loki.url)
    loki.status = 500
    for _ in range(4):
        output.write(300, pad=100)  # far more than the 64 KiB buffer holds
        shipper.round()
        clock.now += 120
    loki.status = 204
    clock.now += 120
    for _ in range(5):
        shipper.round()
    delivered = numbers(loki.lines)
    assert delivered == sorted(delivered) and delivered[-1] == 1199  # the newest kept
    dropped = sum(detail(e)["count"] for e in events(control_plane, "logs.sink.dropped"))
    # The audit trail shares the buffer: from the sink's own logs.sink.add on,
    # each of its events was shipped or counted among the dropped.
    audited = [e for e in all_events(control_plane) if e.seq >= _added_seq(control_plane)]
    shipped_audit = [a["seq"] for a in loki.audit]
    assert shipped_audit == sorted(set(shipped_audit))  # in order, each once
    assert set(shipped_audit) <= {e.seq for e in audited}
    assert dropped > 0
    assert dropped + len(delivered) + len(shipped_audit) == 1200 + len(audited)  # exact
    assert set(delivered) | set(range(1200 - len(delivered))) == set(range(1200))
    metric = REGISTRY.get_sample_value(
        "hangar_log_sink_dropped_total",
        {"org": _org(control_plane), "sink": _sink(control_plane), "reason": "buffer_full"},
    )
    assert metric == dropped


def test_a_restarted_control_plane_resumes_without_losing_a_line(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    loki: Loki,
    output: Output,
) -> None:
    add(api, installation, loki.url)
    clock = Clock()
    output.write(10)
    LogShipper(control_plane, clock=clock).round()
    loki.status = 500
    output.write(10)
    LogShipper(control_plane, clock=clock).round()  # buffered on disk, then "killed"
    loki.status = 204
    output.write(10)
    LogShipper(control_plane, clock=clock).round()  # a new process: buffer and cursors resume
    got = numbers(loki.lines)
    assert list(dict.fromkeys(got)) == list(range(30))  # none lost; order kept


def test_a_batch_the_sink_refuses_for_good_is_counted_and_audited(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    loki: Loki,
    output: Output,
    clock: Clock,
    shipper: LogShipper,
) -> None:
    add(api, installation, loki.url)
    loki.status = 400
    output.write(7)
    LogShipper(control_plane, clock=Clock()).round()
    (event,) = events(control_plane, "logs.sink.dropped")
    # The seven lines and, in the same batch, the audit event that added the sink.
    assert detail(event)["count"] == 7 + 1 and detail(event)["reason"] == "refused"
    for _ in range(3):  # still refusing, nothing new: no record of a refusal feeds another
        clock.now += 120
        shipper.round()
    assert len(events(control_plane, "logs.sink.dropped")) == 1
    loki.status = 204
    output.write(2)
    shipper.round()
    assert numbers(loki.lines) == [7, 8]
    assert "logs.sink.dropped" not in {a["action"] for a in loki.audit}


def test_rotation_between_rounds_loses_nothing(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    loki: Loki,
    one_machine: tuple[App, str, str],
    tmp_path: Path,
    shipper: LogShipper,
) -> None:
    """The cursor is a file and an offset: it follows its file when the log rotates."""
    output = Output(one_machine[2], tmp_path / "small" / "output.log", max_bytes=2000)
    control_plane.local = output
    add(api, installation, loki.url)
    for _ in range(6):
        output.write(15, pad=20)  # each batch rotates the log at least once
        shipper.round()
    output.log.close()
    assert len(list((tmp_path / "small").glob("output.log.*"))) == 3  # rotated, some gone
    assert numbers(loki.lines) == list(range(90))


def test_adding_a_sink_needs_logs_read_as_well(
    api: TestClient, installation: Installation, loki: Loki
) -> None:
    """An organization that keeps logs from everyone keeps them from sinks too."""
    h = installation.headers
    none = {"revoke": [{"role": "admin", "permission": "logs:read"}]}
    assert api.patch("/v1/orgs/acme", headers=h, json=none).status_code == 200
    refused = add(api, installation, loki.url)
    assert refused.status_code == 403
    assert api.get("/v1/orgs/acme/log-sinks", headers=h).json() == []
    back = {"grant": [{"role": "member", "permission": "logs:read"}]}
    assert api.patch("/v1/orgs/acme", headers=h, json=back).status_code == 200
    assert add(api, installation, loki.url).status_code == 201

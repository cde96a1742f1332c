"""Elasticsearch's bulk API and Splunk's HTTP Event Collector as log sinks.

Both are faked in-process with pytest-httpserver, answering as their
documented APIs do: the bulk API item by item (201, 409, 429, 400 with a
mapper error), HEC with its JSON answers (Success, 503 server busy, 400
invalid data format naming the event, 401 invalid authorization).
Their credentials are write-only: a canary token is looked for everywhere
it must not be.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from werkzeug import Request, Response

from hangar.controlplane.keys import rotate_kek
from hangar.controlplane.logshipper import LogShipper
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import AuditEvent, LogSinkRow
from tests.conftest import Installation
from tests.integration.test_log_sinks import (
    Clock,
    Output,
    clock,
    detail,
    events,
    installation,
    one_machine,
    output,
    shipper,
    sink_buffer_bytes,
)

__all__ = [  # fixtures, shared
    "clock",
    "installation",
    "one_machine",
    "output",
    "shipper",
    "sink_buffer_bytes",
]


def add(api: TestClient, installation: Installation, kind: str, url: str, **extra: Any) -> Any:
    return api.post(
        "/v1/orgs/acme/log-sinks",
        headers=installation.headers,
        json={"kind": kind, "url": url, **extra},
    )


def numbers(messages: list[str]) -> list[int]:
    return [int(m.split()[1]) for m in messages]


class Elastic:
    """A bulk API: takes NDJSON create actions, answers per item."""

    def __init__(self, server: HTTPServer) -> None:
        self.docs: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[list[str]] = []  # the messages each request carried
        self.auth: list[str | None] = []
        self.status = 200
        self.busy_once: set[str] = set()  # messages answered 429 the first time
        self.refuse: set[str] = set()  # messages whose mapping fails: 400
        self.seen: Counter[str] = Counter()
        server.expect_request("/_bulk", method="POST").respond_with_handler(self.handle)
        self.url = server.url_for("/").rstrip("/")

    def handle(self, request: Request) -> Response:
        self.auth.append(request.headers.get("Authorization"))
        if request.headers.get("Content-Type") != "application/x-ndjson":
            return Response('{"error":"content type"}', status=406)
        if self.status != 200:
            return Response('{"error":"unavailable"}', status=self.status)
        raw = request.get_data()
        assert raw.endswith(b"\n")  # the bulk API needs the final newline
        lines = raw.decode().splitlines()
        items, errors, carried = [], False, []
        for action_line, doc_line in zip(lines[0::2], lines[1::2], strict=True):
            action, doc = json.loads(action_line), json.loads(doc_line)
            index = action["create"]["_index"]
            message = doc["message"]
            carried.append(message)
            self.seen[message] += 1
            if message in self.refuse:
                errors = True
                error = {"type": "mapper_parsing_exception", "reason": "failed to parse"}
                items.append({"create": {"_index": index, "status": 400, "error": error}})
            elif message in self.busy_once and self.seen[message] == 1:
                errors = True
                error = {"type": "es_rejected_execution_exception", "reason": "queue full"}
                items.append({"create": {"_index": index, "status": 429, "error": error}})
            else:
                self.docs.append((index, doc))
                items.append({"create": {"_index": index, "status": 201, "result": "created"}})
        self.requests.append(carried)
        body = {"took": 3, "errors": errors, "items": items}
        return Response(json.dumps(body), status=200, content_type="application/json")

    def lines(self) -> list[str]:
        return [d["message"] for _, d in self.docs if d["stream"] != "audit"]


class Splunk:
    """An HTTP Event Collector with one token."""

    def __init__(self, server: HTTPServer, token: str) -> None:
        self.token = token
        self.events: list[dict[str, Any]] = []
        self.status = 200
        self.invalid: set[str] = set()  # lines it cannot parse
        self.number_invalid = True  # whether a 400 names the event
        self.auth: list[str | None] = []
        server.expect_request("/services/collector/event", method="POST").respond_with_handler(
            self.handle
        )
        self.url = server.url_for("/").rstrip("/")

    @staticmethod
    def answer(status: int, text: str, code: int, **more: Any) -> Response:
        body = {"text": text, "code": code, **more}
        return Response(json.dumps(body), status=status, content_type="application/json")

    def handle(self, request: Request) -> Response:
        self.auth.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Splunk {self.token}":
            return self.answer(401, "Invalid authorization", 3)
        if self.status == 503:
            return self.answer(503, "Server is busy", 9)
        raw, decoder, at, got = request.get_data().decode(), json.JSONDecoder(), 0, []
        while at < len(raw):  # events one after another, as HEC reads them
            while at < len(raw) and raw[at].isspace():
                at += 1
            if at == len(raw):
                break
            event, at = decoder.raw_decode(raw, at)
            got.append(event)
        for n, event in enumerate(got):
            if "time" not in event or "event" not in event:
                return self.answer(
                    400, "Event field is required", 12, **{"invalid-event-number": n}
                )
            if event["event"]["line"] in self.invalid:
                extra = {"invalid-event-number": n} if self.number_invalid else {}
                return self.answer(400, "Invalid data format", 6, **extra)
        self.events += got
        return self.answer(200, "Success", 0)

    def lines(self) -> list[str]:
        return [e["event"]["line"] for e in self.events if e["event"]["stream"] != "audit"]


def dropped(cp: ControlPlane) -> int:
    return sum(detail(e)["count"] for e in events(cp, "logs.sink.dropped"))


def test_lines_and_audit_reach_elasticsearch_with_its_api_key(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    httpserver: HTTPServer,
    output: Output,
) -> None:
    elastic = Elastic(httpserver)
    key = base64.b64encode(b"id1:" + secrets.token_hex(8).encode()).decode()
    made = add(
        api,
        installation,
        "elasticsearch",
        elastic.url,
        index="clinic-logs",
        auth={"scheme": "apikey", "secret": key},
    )
    assert made.status_code == 201, made.text
    assert made.json()["auth"] == "apikey" and made.json()["index"] == "clinic-logs"
    output.write(12)
    LogShipper(control_plane, clock=Clock()).round()
    assert numbers(elastic.lines()) == list(range(12))
    assert set(elastic.auth) == {f"ApiKey {key}"}
    assert {index for index, _ in elastic.docs} == {"clinic-logs"}
    doc = next(d for _, d in elastic.docs if d["stream"] != "audit")
    assert {doc["org"], doc["app"]} == {"acme", "web"} and doc["@timestamp"].startswith("2026")
    (audit,) = [json.loads(d["message"]) for _, d in elastic.docs if d["stream"] == "audit"]
    assert audit["action"] == "logs.sink.add" and audit["target"] == made.json()["id"]


def test_a_partial_bulk_failure_sends_again_only_the_failed_items_and_counts_the_refused(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    httpserver: HTTPServer,
    output: Output,
    clock: Clock,
    shipper: LogShipper,
) -> None:
    elastic = Elastic(httpserver)
    assert add(api, installation, "elasticsearch", elastic.url).status_code == 201
    output.write(20)
    elastic.busy_once = {f"line {n} " for n in (3, 11, 12)}
    elastic.refuse = {f"line {n} " for n in (5, 17)}
    shipper.round()
    assert len(elastic.requests) == 1
    assert dropped(control_plane) == 2  # exactly the two refused
    (event,) = events(control_plane, "logs.sink.dropped")
    assert detail(event)["reason"] == "refused" and "mapper_parsing" in detail(event)["error"]
    output.write(4)  # newer lines wait behind the owed ones
    clock.now += 0.5
    shipper.round()  # backing off
    assert len(elastic.requests) == 1
    clock.now += 120
    shipper.round()
    assert numbers(elastic.requests[1]) == [3, 11, 12]  # only the failed items, in order
    delivered = numbers(elastic.lines())
    assert sorted(delivered) == sorted(set(range(24)) - {5, 17})  # each once
    assert Counter(delivered).most_common(1)[0][1] == 1
    assert dropped(control_plane) == 2
    newer = [m for m in elastic.requests[2] if m.startswith("line ")]
    assert numbers(newer) == [20, 21, 22, 23]  # then the newer ones


def test_an_unavailable_elasticsearch_loses_nothing(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    httpserver: HTTPServer,
    output: Output,
    clock: Clock,
    shipper: LogShipper,
) -> None:
    elastic = Elastic(httpserver)
    add(
        api,
        installation,
        "elasticsearch",
        elastic.url,
        auth={"scheme": "basic", "username": "hangar", "secret": "pw-" + secrets.token_hex(6)},
    )
    for status in (503, 429, 401):
        elastic.status = status
        output.write(5)
        shipper.round()
        clock.now += 120
    elastic.status = 200
    shipper.round()
    assert numbers(elastic.lines()) == list(range(15))
    assert dropped(control_plane) == 0
    assert all(a is not None and a.startswith("Basic ") for a in elastic.auth)


def test_splunk_hec_gets_events_with_its_token_through_busy_and_bad_events(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    httpserver: HTTPServer,
    output: Output,
    clock: Clock,
    shipper: LogShipper,
) -> None:
    token = "hec-" + secrets.token_hex(8)
    splunk = Splunk(httpserver, token)
    made = add(
        api, installation, "splunk-hec", splunk.url, auth={"scheme": "splunk", "secret": token}
    )
    assert made.status_code == 201, made.text
    output.write(6)
    splunk.status = 503  # server busy: retried
    shipper.round()
    assert splunk.events == []
    splunk.status = 200
    clock.now += 120
    shipper.round()
    assert splunk.lines() == [f"line {n} " for n in range(6)]
    first = next(e for e in splunk.events if e["event"]["stream"] != "audit")
    assert first["fields"]["org"] == "acme" and first["sourcetype"] == "hangar"
    assert float(first["time"]) > 1.7e9
    assert any(e["event"]["stream"] == "audit" for e in splunk.events)
    # One event it cannot take: that one is dropped and counted; the rest arrive.
    splunk.invalid = {"line 8 "}
    output.write(5)
    shipper.round()
    clock.now += 120
    shipper.round()
    assert splunk.lines()[6:] == ["line 6 ", "line 7 ", "line 9 ", "line 10 "]
    assert dropped(control_plane) == 1
    # A 400 that names no event refuses the whole batch: all of it counted.
    splunk.number_invalid = False
    splunk.invalid = {"line 12 "}
    output.write(3)
    clock.now += 120
    shipper.round()
    assert dropped(control_plane) == 1 + 3
    assert splunk.lines()[-1] == "line 10 "


def test_sink_credentials_are_checked_and_refused_clearly(
    api: TestClient, installation: Installation, httpserver: HTTPServer
) -> None:
    url = httpserver.url_for("/").rstrip("/")
    canary = "CANARY" + secrets.token_hex(8)
    for kind, extra, why in [
        ("splunk-hec", {}, "needs a credential"),
        ("splunk-hec", {"auth": {"scheme": "apikey", "secret": canary}}, "takes no apikey"),
        ("loki", {"auth": {"scheme": "basic", "username": "u", "secret": canary}}, "takes no"),
        ("elasticsearch", {"auth": {"scheme": "splunk", "secret": canary}}, "takes no splunk"),
        ("elasticsearch", {"auth": {"scheme": "basic", "secret": canary}}, "needs a user"),
        (
            "elasticsearch",
            {"auth": {"scheme": "basic", "username": "a:b", "secret": canary}},
            "without ':'",
        ),
        ("elasticsearch", {"auth": {"scheme": "apikey", "secret": canary + " x"}}, "printable"),
        (
            "elasticsearch",
            {"auth": {"scheme": "apikey", "secret": canary + "\r\nX: y"}},
            "printable",
        ),
        ("elasticsearch", {"auth": {"scheme": "apikey", "secret": ""}}, "empty"),
        ("elasticsearch", {"auth": {"scheme": "bearer", "secret": canary}}, "scheme"),
        ("elasticsearch", {"auth": {"scheme": "apikey", "secret": canary, "x": canary}}, "x"),
        ("elasticsearch", {"index": "Bad/Index"}, "not an index name"),
        ("loki", {"index": "logs"}, "has no index"),
        ("syslog", {}, "a syslog sink is tls://"),
    ]:
        refused = add(api, installation, kind, url, **extra)
        assert refused.status_code == 422, (kind, extra, refused.text)
        assert why in refused.text, (why, refused.text)
        assert canary not in refused.text
    assert api.get("/v1/orgs/acme/log-sinks", headers=installation.headers).json() == []


def test_a_sink_credential_is_write_only(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    httpserver: HTTPServer,
    output: Output,
    caplog: pytest.LogCaptureFixture,
    clock: Clock,
    shipper: LogShipper,
) -> None:
    """Never listed, audited, logged or stored in plaintext; it survives KEK rotation."""
    caplog.set_level(logging.DEBUG)
    canary = "CANARY" + secrets.token_hex(12)
    splunk = Splunk(httpserver, "another-token")  # answers 401: errors are logged
    made = add(
        api, installation, "splunk-hec", splunk.url, auth={"scheme": "splunk", "secret": canary}
    )
    assert made.status_code == 201 and canary not in made.text
    listed = api.get("/v1/orgs/acme/log-sinks", headers=installation.headers)
    assert listed.json()[0]["auth"] == "splunk" and canary not in listed.text
    output.write(3)
    shipper.round()
    assert splunk.auth == [f"Splunk {canary}"] and splunk.events == []  # refused: 401
    audit = api.get("/v1/audit/events?org=acme", headers=installation.headers)
    assert audit.status_code == 200 and canary not in audit.text
    with control_plane.db.read() as session:
        row = session.execute(select(LogSinkRow)).scalar_one()
        assert row.credential is not None and canary.encode() not in row.credential
        assert all(canary not in e.detail for e in session.execute(select(AuditEvent)).scalars())
    # Rotating the KEK re-wraps it; shipping goes on with the same token.
    rotate_kek(control_plane)
    splunk.token = canary
    clock.now += 120
    LogShipper(control_plane, clock=clock).round()
    assert splunk.lines() == [f"line {n} " for n in range(3)]
    # The database file, its journal, the sinks' buffers: the data directory's every byte.
    for path in Path(installation.settings.data_dir).rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
    assert canary not in caplog.text


def test_a_credential_that_does_not_unwrap_stops_only_its_own_sink(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    httpserver: HTTPServer,
    output: Output,
) -> None:
    """A wrapped credential moved to another sink's row does not open there."""
    elastic = Elastic(httpserver)
    splunk = Splunk(httpserver, "t-" + secrets.token_hex(6))
    first = add(
        api, installation, "splunk-hec", splunk.url, auth={"scheme": "splunk", "secret": "x1"}
    )
    second = add(
        api, installation, "elasticsearch", elastic.url, auth={"scheme": "apikey", "secret": "k2"}
    )
    with control_plane.db.write() as session:
        rows = {r.id: r for r in session.execute(select(LogSinkRow)).scalars()}
        rows[first.json()["id"]].credential = rows[second.json()["id"]].credential
    output.write(4)
    LogShipper(control_plane, clock=Clock()).round()
    assert numbers(elastic.lines()) == [0, 1, 2, 3]
    assert splunk.auth == []  # never called with a credential not its own
    listed = api.get("/v1/orgs/acme/log-sinks", headers=installation.headers)
    assert [s["auth"] for s in listed.json()] == ["splunk", "apikey"]

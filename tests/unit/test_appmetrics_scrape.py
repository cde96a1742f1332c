"""The agent's scrape of a machine's own metrics: bounded, relabelled, never trusted."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hangar.agent import appmetrics
from hangar.agent.appmetrics import AppMetrics, ScrapeError, label_families, render, scrape
from hangar.contract.assignments import Assignment, MetricsTarget

LOOPBACK = ipaddress.IPv6Address("::1")
GOOD = (
    "# HELP http_requests Requests.\n# TYPE http_requests counter\n"
    'http_requests_total{path="/",org="globex",machine="m-other"} 7\n'
    "# TYPE hangar_machines gauge\nhangar_machines 99\n"
    "# TYPE queue_depth gauge\nqueue_depth 3\n"
)


Handler = Callable[[socket.socket], None]


@pytest.fixture
def server() -> Iterator[Callable[[Handler], int]]:
    """A one-connection-at-a-time TCP server on ::1 answering with ``handler``."""
    listeners: list[socket.socket] = []

    def serve(handler: Handler) -> int:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
        listener.listen()
        listeners.append(listener)

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    with contextlib.suppress(OSError):  # the scraper hung up first
                        handler(conn)

        threading.Thread(target=loop, daemon=True).start()
        return int(listener.getsockname()[1])

    yield serve
    for listener in listeners:
        listener.close()


def answer(body: bytes, status: str = "200 OK") -> Handler:
    def handler(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n\r\n".encode() + body)

    return handler


LABELS = {"org": "org_acme", "app": "clinic", "machine": "m-1"}


def test_a_scrape_is_relabelled_and_cannot_claim_another_org(
    server: Callable[[Handler], int],
) -> None:
    port = server(answer(GOOD.encode()))
    families = label_families(scrape(LOOPBACK, MetricsTarget(port, "/metrics")), LABELS)
    got = {(s.name, tuple(sorted(s.labels.items())), s.value) for f in families for s in f.samples}
    assert (
        "http_requests_total",
        tuple(
            sorted(
                {
                    **LABELS,
                    "path": "/",
                    "exported_org": "globex",
                    "exported_machine": "m-other",
                }.items()
            )
        ),
        7.0,
    ) in got
    # An app cannot pass its series off as Hangar's own.
    assert {name for name, _, _ in got} == {
        "http_requests_total",
        "app_hangar_machines",
        "queue_depth",
    }
    text = render(families)
    assert {s.name for f in text_string_to_metric_families(text) for s in f.samples} == {
        "http_requests_total",
        "app_hangar_machines",
        "queue_depth",
    }


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (answer(b"nope", "404 Not Found"), "404"),
        (answer(b"x" * (appmetrics.MAX_BODY + 10)), "larger than"),
        (lambda conn: None, "no answer"),
    ],
)
def test_a_bad_answer_is_a_scrape_error(
    server: Callable[[Handler], int], handler: Handler, error: str
) -> None:
    port = server(handler)
    with pytest.raises(ScrapeError, match=error):
        scrape(LOOPBACK, MetricsTarget(port, "/metrics"))


def test_a_closed_port_is_a_scrape_error() -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ScrapeError, match="failed"):
        scrape(LOOPBACK, MetricsTarget(port, "/metrics"))


def test_a_trickling_server_is_cut_off_by_one_deadline(
    server: Callable[[Handler], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(appmetrics, "SCRAPE_SECONDS", 1.0)
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
        while not stop.wait(0.1):
            conn.sendall(b"#")  # a byte at a time, never finishing

    port = server(trickle)
    started = time.monotonic()
    try:
        with pytest.raises(ScrapeError, match="timed out"):
            scrape(LOOPBACK, MetricsTarget(port, "/metrics"))
    finally:
        stop.set()
    assert time.monotonic() - started < 30  # bounded at all: not a timing measurement


def test_samples_are_capped_and_garbage_refused() -> None:
    many = "".join(f"m{n} {n}\n" for n in range(50))
    families = label_families(many, LABELS, limit=10)
    assert sum(len(f.samples) for f in families) == 10
    with pytest.raises(ScrapeError, match="did not parse"):
        label_families("<html>Hello</html>\n", LABELS)


def _want(port: int, org: str = "org_acme", **kw: object) -> Assignment:
    values: dict[str, object] = {
        "machine_id": "m-1",
        "app": "clinic",
        "version": 1,
        "state": "started",
        "image": "oci:/x:latest",
        "address": "::1",
        "org": org,
        "metrics": [MetricsTarget(port, "/metrics")],
    }
    values.update(kw)
    return Assignment(**values)  # type: ignore[arg-type]


def test_collection_ships_usage_and_the_apps_metrics_every_interval(
    server: Callable[[Handler], int], tmp_path: Path
) -> None:
    port = server(answer(GOOD.encode()))
    (tmp_path / "pids" / "hangar" / "m-1").mkdir(parents=True)
    (tmp_path / "pids" / "hangar" / "m-1" / "pids.current").write_text("4\n")
    (tmp_path / "cpuacct" / "hangar" / "m-1").mkdir(parents=True)
    now = [1000.0]
    collector = AppMetrics(None, tmp_path, clock=lambda: now[0])
    collector.tick([_want(port), _want(port, machine_id="m-2", metrics=[])])
    ready = collector.take()
    assert set(ready) == {"m-1", "m-2"}
    at, text = ready["m-1"]
    got = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert at == 1000.0 and got["hangar_machine_pids"].value == 4
    assert got["hangar_scrape_ok"].value == 1 and got["queue_depth"].labels == LABELS
    now[0] += 1
    collector.tick([_want(port)])
    assert collector.take() == {}  # not due again yet
    now[0] += appmetrics.INTERVAL
    collector.tick([_want(port, metrics=[MetricsTarget(1, "/none")])])
    (_, failed) = collector.take()["m-1"]
    got = {s.name: s for f in text_string_to_metric_families(failed) for s in f.samples}
    assert got["hangar_scrape_ok"].value == 0 and "queue_depth" not in got


def test_an_unexpected_failure_is_a_failed_scrape_not_a_stopped_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(want: Assignment, labels: dict[str, str]) -> list[object]:
        raise RuntimeError("surprise")

    monkeypatch.setattr(appmetrics, "_collect", boom)
    collector = AppMetrics(None, tmp_path, clock=lambda: 1000.0)
    collector.tick([_want(9)])
    (_, text) = collector.take()["m-1"]
    got = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert got["hangar_scrape_ok"].value == 0

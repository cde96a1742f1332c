"""Health checks against a real HTTP server on IPv6 loopback."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator

import pytest

from hangar.agent.health import HealthMonitor, run_check
from hangar.contract.assignments import CheckSpec

LOOPBACK = ipaddress.IPv6Address("::1")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/ok" else 503 if self.path == "/sick" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(self.headers.get("X-Probe", "").encode())

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture
def port() -> Iterator[int]:
    server = _Server(("::1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def test_http_and_tcp_checks(port: int) -> None:
    assert run_check(LOOPBACK, CheckSpec("a", "http", port, path="/ok")) == (
        True,
        "HTTP/1.0 200 OK",
    )
    passing, seen = run_check(LOOPBACK, CheckSpec("b", "http", port, path="/sick"))
    assert not passing and "503" in seen
    assert not run_check(LOOPBACK, CheckSpec("c", "http", port, path="/missing"))[0]
    assert run_check(LOOPBACK, CheckSpec("d", "tcp", port))[0]
    passing, seen = run_check(LOOPBACK, CheckSpec("e", "tcp", closed_port()))
    assert not passing and "refused" in seen.lower()


def test_monitor_waits_for_grace_then_reports(port: int) -> None:
    monitor = HealthMonitor()
    checks = [
        CheckSpec("ok", "http", port, path="/ok", grace_period=5, interval=10),
        CheckSpec("sick", "http", port, path="/sick", grace_period=5, interval=10),
    ]
    monitor.watch("m", LOOPBACK, checks, started_at=100.0)
    assert monitor.tick(104.0) == [] and monitor.healthy("m") is None  # still in grace
    results = monitor.tick(105.0)
    assert {r.name: r.passing for r in results} == {"ok": True, "sick": False}
    assert monitor.healthy("m") is False
    assert monitor.tick(110.0) == []  # not due again until 115
    assert len(monitor.tick(115.0)) == 2
    monitor.watch("m", LOOPBACK, checks[:1], started_at=200.0)
    monitor.tick(205.0)
    assert monitor.healthy("m") is True
    monitor.forget("m")
    assert monitor.healthy("m") is None


def test_no_checks_means_healthy_once_started() -> None:
    monitor = HealthMonitor()
    monitor.watch("m", LOOPBACK, [], started_at=0.0)
    assert monitor.healthy("m") is True


def test_a_trickling_server_cannot_stretch_a_check() -> None:
    """Each byte used to restart the timeout; the timeout now bounds the whole attempt."""
    server = socket.socket(socket.AF_INET6)
    server.bind(("::1", 0))
    server.listen()
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            for byte in b"HTTP/1.0 200 OK":
                if stop.wait(0.3):
                    return
                conn.sendall(bytes([byte]))

    threading.Thread(target=trickle, daemon=True).start()
    passing, seen = run_check(
        LOOPBACK, CheckSpec("slow", "http", int(server.getsockname()[1]), timeout=1.0)
    )
    stop.set()
    server.close()
    # Every read came within 0.3 s; only a budget for the whole attempt ends it.
    assert not passing and "timed out" in seen

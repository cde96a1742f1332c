"""Idle and slow clients are cut off: a connection cannot be held open for nothing.

The API runs as `hangar server` runs it (uvicorn with Hangar's TLS config),
on loopback. Each test asserts the server closes the connection eventually,
within a generous deadline; none measures how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from hangar.api.app import create_app
from hangar.controlplane.state import ControlPlane
from hangar.server.serve import _tls_config
from tests.conftest import Installation, make_installation

DEADLINE = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Installation]]:
    inst = make_installation(tmp_path / "data", http_header_seconds=1, http_keepalive_seconds=1)
    cp = ControlPlane.open(inst.settings)
    port = _free_port()
    srv = uvicorn.Server(_tls_config(create_app(cp), inst.settings, port))
    srv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        yield port, inst
    finally:
        srv.should_exit = True
        thread.join(30)
        cp.close()


def _tls(port: int, inst: Installation) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(inst.settings.data_dir / "ca.crt"))
    context.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    return context.wrap_socket(raw, server_hostname="localhost")


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closes: recv returns EOF (or the connection resets)."""
    sock.settimeout(DEADLINE)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return True
    except TimeoutError:
        return False


def test_a_connection_that_sends_nothing_is_closed(server: tuple[int, Installation]) -> None:
    port, inst = server
    with _tls(port, inst) as sock:
        assert _closed_by_server(sock), "the server kept a silent connection open"


def test_headers_trickled_a_byte_at_a_time_are_cut_off(
    server: tuple[int, Installation],
) -> None:
    port, inst = server
    with _tls(port, inst) as sock:
        sock.settimeout(DEADLINE)
        request = b"GET /v1/healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 10_000
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > DEADLINE:
                break
        assert closed or _closed_by_server(sock), "a slow client held its connection open"


def test_an_idle_keep_alive_connection_is_closed(server: tuple[int, Installation]) -> None:
    port, inst = server
    with _tls(port, inst) as sock:
        sock.sendall(b"GET /v1/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.settimeout(DEADLINE)
        assert b"HTTP/1.1" in sock.recv(4096)
        assert _closed_by_server(sock), "the server kept an idle keep-alive connection open"


@pytest.mark.slow
def test_a_tcp_connection_that_never_starts_tls_is_closed(
    server: tuple[int, Installation],
) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(2 * DEADLINE)  # asyncio gives a TLS handshake 60 seconds
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b"", "the server kept a silent TCP connection open"

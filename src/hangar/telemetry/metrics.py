"""Hangar's own Prometheus metrics: one registry per process, and its listener.

Every part of Hangar counts into the metrics defined here (the API, the
agent, the deployer, secret deliveries, the ACME issuer); what is read at
scrape time rather than counted (machines by state, their cgroups, the
mesh) is a collector the composition root registers with ``register``.

The listener serves ``/metrics`` over plain HTTP and so is never public:
``serve_metrics`` refuses any address but a loopback one. A Prometheus on
another host scrapes ``serve_metrics_tls`` instead: mutual TLS, where only a
client certificate the installation's CA issued to a metrics scraper
(``hangar server metrics-cert``) is let in; a host's certificate, another
CA's, or none are refused during or right after the handshake. Label values are
bounded: routes are templates (``/v1/apps/{app}``), never raw paths, and
organizations and apps are the platform's own names.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cryptography import x509
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    make_wsgi_app,
    start_http_server,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from hangar.crypto.peercert import scraper_of
from hangar.errors import ConfigError
from hangar.tlsprofile import TLS12_CIPHERS

__all__ = [
    "ACME_ORDERS",
    "API_AUTH_FAILURES",
    "API_LATENCY",
    "API_REQUESTS",
    "HEALTH_CHECKS",
    "LOG_SINK_DROPPED",
    "LOG_SINK_FAILURES",
    "LOG_SINK_SHIPPED",
    "MACHINE_RESTARTS",
    "MACHINE_START_SECONDS",
    "REGISTRY",
    "RELEASES",
    "ROLLBACKS",
    "SECRET_DELIVERIES",
    "MetricsServer",
    "check_listen_host",
    "exposition",
    "register",
    "serve_metrics",
    "serve_metrics_tls",
    "unregister",
]

log = logging.getLogger("hangar.telemetry")

REGISTRY = CollectorRegistry()

# Latency buckets for an API answering in milliseconds, with room for slow writes.
_API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A machine start: unpacking, runc, the network; seconds to a minute.
_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)

API_REQUESTS = Counter(
    "hangar_api_requests",
    "API requests answered, by listener, method, route template and status code.",
    ["listener", "method", "route", "status"],
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "hangar_api_request_duration_seconds",
    "Time to answer an API request, by listener, method and route template.",
    ["listener", "method", "route"],
    buckets=_API_BUCKETS,
    registry=REGISTRY,
)
API_AUTH_FAILURES = Counter(
    "hangar_api_auth_failures",
    "Requests refused because their credentials were missing, malformed or invalid.",
    registry=REGISTRY,
)
MACHINE_RESTARTS = Counter(
    "hangar_machine_restarts",
    "Machines restarted by this host's agent after their process exited.",
    ["org", "app"],
    registry=REGISTRY,
)
MACHINE_START_SECONDS = Histogram(
    "hangar_machine_start_seconds",
    "Time for the runtime to start a machine (its image already unpacked).",
    buckets=_START_BUCKETS,
    registry=REGISTRY,
)
HEALTH_CHECKS = Counter(
    "hangar_health_checks",
    "Health checks run by this host's agent, by organization and result (passing or failing).",
    ["org", "result"],
    registry=REGISTRY,
)
RELEASES = Counter(
    "hangar_releases",
    "Releases finished by the deployer, by outcome (complete or failed).",
    ["outcome"],
    registry=REGISTRY,
)
ROLLBACKS = Counter(
    "hangar_rollbacks",
    "Machines the deployer moved back to the previous version of their app.",
    registry=REGISTRY,
)
SECRET_DELIVERIES = Counter(
    "hangar_secret_deliveries",
    "Requests for a machine's secrets by a host, by outcome (delivered or refused).",
    ["outcome"],
    registry=REGISTRY,
)
ACME_ORDERS = Counter(
    "hangar_acme_orders",
    "ACME orders, by kind (issue or renew) and outcome (success or failure).",
    ["kind", "outcome"],
    registry=REGISTRY,
)


LOG_SINK_SHIPPED = Counter(
    "hangar_log_sink_shipped",
    "Log records a sink accepted, by organization and sink.",
    ["org", "sink"],
    registry=REGISTRY,
)
LOG_SINK_DROPPED = Counter(
    "hangar_log_sink_dropped",
    "Log records dropped before a sink took them, by reason (buffer_full: the disk "
    "buffer's cap; refused: the sink refused them for good). Each drop is also audited.",
    ["org", "sink", "reason"],
    registry=REGISTRY,
)
LOG_SINK_FAILURES = Counter(
    "hangar_log_sink_failures",
    "Pushes to a sink that failed and will be retried (down, 429, 5xx).",
    ["org", "sink"],
    registry=REGISTRY,
)


def register(collector: Collector) -> None:
    """Add a collector read at scrape time (machines by state, cgroups, the mesh)."""
    REGISTRY.register(collector)


def unregister(collector: Collector) -> None:
    with contextlib.suppress(KeyError):  # never registered (the listener was off)
        REGISTRY.unregister(collector)


def exposition() -> bytes:
    """Everything in this process's registry, in the Prometheus text format."""
    return generate_latest(REGISTRY)


def check_listen_host(host: str) -> str:
    """``host`` if it is a loopback address; ConfigError otherwise.

    The listener speaks plain HTTP without credentials, so it must not be
    reachable from a network: a Prometheus on another host scrapes through
    a tunnel, or runs beside this one.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ConfigError(
            f"metrics listen host {host!r} is not a loopback address",
            hint="use 127.0.0.1 or ::1; metrics are never served to a network",
        )
    return host


class _Server(Protocol):
    def shutdown(self) -> None: ...
    def server_close(self) -> None: ...


@dataclass
class MetricsServer:
    """A running metrics listener: where it listens, and how to stop it."""

    host: str
    port: int
    _server: _Server
    _thread: threading.Thread
    _collectors: tuple[Collector, ...] = ()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        for collector in self._collectors:
            unregister(collector)


def serve_metrics(host: str, port: int, collectors: Iterable[Collector] = ()) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (loopback only; port 0 takes a free one)."""
    check_listen_host(host)
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for metrics on {host}:{port}: {exc.strerror}",
            hint="set metrics_port to a free port, or 0 to serve no metrics",
        ) from exc
    assert isinstance(server, WSGIServer)
    bound = server.server_address[1]
    collectors = tuple(collectors)
    for collector in collectors:
        register(collector)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(host, int(bound), server, thread, collectors)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


HANDSHAKE_SECONDS = 10.0  # for one connection's TLS handshake and request, in its own thread


class _MutualTLSServer(ThreadingWSGIServer):
    """The WSGI server, its connections wrapped in TLS in their own threads (a slow or
    silent client holds no one else up), and let in only with a scraper's certificate."""

    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_SECONDS)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("metrics over TLS: %s refused: %s", client_address[0], exc)
            return
        with tls:
            der = tls.getpeercert(binary_form=True)
            who = scraper_of(x509.load_der_x509_certificate(der)) if der else None
            if who is None:
                log.warning("metrics over TLS: %s is not a metrics scraper", client_address[0])
                return
            super().finish_request(tls, client_address)

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(OSError):
            request.close()  # the TLS socket took the connection over


def serve_metrics_tls(
    host: str,
    port: int,
    *,
    cert_file: Path,
    key_file: Path,
    ca_file: Path,
    collectors: Iterable[Collector] = (),
) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` over mutual TLS (TLS 1.2 or later).

    The server presents ``cert_file``; a client must present a certificate
    that ``ca_file`` issued for a metrics scraper (``scraper_of``).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
        context.load_verify_locations(str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"metrics over TLS: cannot load the certificates: {exc}") from exc

    class Server(_MutualTLSServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    Server.context = context
    try:
        server = make_server(
            host, port, make_wsgi_app(REGISTRY), Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for metrics over TLS on {host}:{port}: {exc.strerror}",
            hint="set metrics_tls_port to a free port, or 0 for none",
        ) from exc
    thread = threading.Thread(target=server.serve_forever, name="hangar-metrics-tls", daemon=True)
    thread.start()
    collectors = tuple(collectors)
    for collector in collectors:
        register(collector)
    bound = int(server.server_address[1])
    log.info("metrics on https://%s:%d/metrics (mutual TLS)", host, bound)
    return MetricsServer(host, bound, server, thread, collectors)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

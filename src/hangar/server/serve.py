"""``hangar server run``: the HTTPS API, the agents' mTLS API, and this host's agent.

Two listeners: the public API (bearer tokens) on ``listen_port``, and the
agents' API on ``agent_listen_port``, which completes a TLS handshake only
with a client certificate from the internal CA. The agents' routes exist only
on the second listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn
from prometheus_client.registry import Collector
from uvicorn.protocols.http.h11_impl import H11Protocol

from hangar.agent.metrics import AgentCollector
from hangar.agent.service import Agent
from hangar.api.app import create_agent_app, create_app
from hangar.api.guard import PEER_CERT_SCOPE_KEY
from hangar.config.settings import ServerSettings
from hangar.controlplane import volumejobs
from hangar.controlplane.acme import Issuer
from hangar.controlplane.auditverify import AuditVerifier
from hangar.controlplane.background import BackgroundLoop
from hangar.controlplane.deployer import step_all
from hangar.controlplane.identitycheck import IdentityChecks
from hangar.controlplane.logshipper import LogShipper
from hangar.controlplane.metrics import ControlPlaneCollector
from hangar.controlplane.state import ControlPlane
from hangar.errors import HangarError
from hangar.server.local import LocalMachines, local_agent
from hangar.telemetry.metrics import serve_metrics, serve_metrics_tls
from hangar.telemetry.ownlogs import OwnLogShipper, OwnLogSink, configure_logging
from hangar.tlsprofile import TLS12_CIPHERS

log = logging.getLogger("hangar.server")
# How often the loops look for scheduled snapshots and backups that are due.
SCHEDULE_SECONDS = 60.0

__all__ = ["serve"]


class _TLSConfig(uvicorn.Config):
    header_seconds: float = 20.0

    def load(self) -> None:
        super().load()
        assert self.ssl is not None
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2


class TimedProtocol(H11Protocol):
    """HTTP/1.1 that closes a connection whose client is slow to send a request.

    uvicorn closes a keep-alive connection that stays idle after a response,
    but not one that never sends a request, nor one that trickles its headers
    a byte at a time: each would hold a connection open for ever. Here a
    client has ``header_seconds`` from connecting (or from its last response)
    to send a whole request line and headers. A connection that never even
    finishes the TLS handshake is closed by asyncio after 60 seconds.
    """

    _header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        seconds = float(getattr(self.config, "header_seconds", _TLSConfig.header_seconds))
        self._header_timer = self.loop.call_later(seconds, self._headers_late)

    def _headers_late(self) -> None:
        self._header_timer = None
        # IDLE: the client has not finished a request's headers since the timer was armed.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


class PeerCertProtocol(TimedProtocol):
    """HTTP/1.1 that hands the verified client certificate to the app in its scope.

    uvicorn does not put the peer certificate in the ASGI scope; the TLS
    handshake is complete by ``connection_made``, so it is read there, once
    per connection, and added to every request's scope on that connection.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        inner = self.app

        async def with_peer(scope: Any, receive: Any, send: Any) -> None:
            if der is not None:
                scope = {**scope, PEER_CERT_SCOPE_KEY: der}
            await inner(scope, receive, send)

        self.app = with_peer


class _Secondary(uvicorn.Server):
    """A server that leaves signal handling to the primary one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Loops(BackgroundLoop):
    """The control plane's deployer and the local agent, one round at a time on one thread.

    Nothing slow runs here: the agent hands health checks, image pulls and
    stops to its pools (bounded per organization) and collects them later,
    so one tenant's slow server or stubborn machine never holds up a round.
    """

    def __init__(self, cp: ControlPlane, agent: Agent | None) -> None:
        super().__init__("hangar-loops", cp.settings.tick_seconds)
        self.cp = cp
        self.agent = agent
        self._next_checkpoint = time.monotonic() + cp.settings.audit_checkpoint_seconds
        self._next_schedule = time.monotonic()
        if agent is not None:
            agent.wake_on_finished_work(self.wake)

    def wake(self) -> None:
        """Run a round now: desired or observed state just changed.

        A change made by the loops themselves (the local agent's report) needs
        no wake-up: the deployer looks at it on the next round anyway, and
        waking would spin the thread.
        """
        if not self.in_loop():
            super().wake()

    def _edge_counts(self, app: str) -> tuple[int, int] | None:
        edge = self.agent.edge if self.agent is not None else None
        return edge.http_counts(app) if edge is not None else None

    def round(self) -> float | None:
        now = time.time()
        with self.cp.db.write() as session:
            step_all(session, self.cp.audit, now, self._edge_counts)
        if time.monotonic() >= self._next_checkpoint:
            # The newest events get a signed (and witnessed) checkpoint within
            # audit_checkpoint_seconds, however few of them there are.
            self._next_checkpoint = time.monotonic() + self.cp.settings.audit_checkpoint_seconds
            with self.cp.db.write() as session:
                self.cp.audit.checkpoint_all(session)
        if time.monotonic() >= self._next_schedule:
            # Volumes' daily snapshots and organizations' scheduled backups: filed
            # here, done by each volume's host off its own loop.
            self._next_schedule = time.monotonic() + SCHEDULE_SECONDS
            try:
                volumejobs.due(self.cp)
            except HangarError as exc:
                log.warning("backup schedule: %s", exc.message)
        if self.agent is None:
            return None
        due = self.agent.tick(now)
        # Look again when a check or restart is due, if that is sooner.
        return None if due is None else due - time.time()


def _tls_config(app: Any, settings: ServerSettings, port: int, **extra: Any) -> _TLSConfig:
    extra.setdefault("http", TimedProtocol)
    config = _TLSConfig(
        app,
        host=settings.listen_host,
        port=port,
        ssl_certfile=str(settings.data_dir / "api.crt"),
        ssl_keyfile=str(settings.data_dir / "api.key"),
        ssl_ciphers=TLS12_CIPHERS,
        log_level=settings.log_level,
        # Uvicorn's lines go through the root logger as Hangar's own do (same
        # format, same shipping) instead of handlers of its own.
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=int(max(1, settings.http_keepalive_seconds)),
        **extra,
    )
    config.header_seconds = settings.http_header_seconds
    return config


def serve(settings: ServerSettings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    own_logs = own_log_shipper(settings)
    if own_logs is not None:
        own_logs.start()
    try:
        _serve(settings)
    finally:
        if own_logs is not None:
            own_logs.stop()


def own_log_shipper(settings: ServerSettings) -> OwnLogShipper | None:
    """The server's own logs' shipper, if the operator named a sink for them."""
    if not settings.own_log_sink_url:
        return None
    sink = OwnLogSink(
        settings.own_log_sink_kind,
        settings.own_log_sink_url,
        settings.own_log_sink_credential_file,
        settings.own_log_sink_index,
    )
    return OwnLogShipper(
        sink,
        settings.data_dir / "own-logs",
        component="hangar-server",
        host=settings.host_name,
        buffer_bytes=settings.log_sink_buffer_bytes,
    )


def _serve(settings: ServerSettings) -> None:
    cp = ControlPlane.open(settings)
    agent = local_agent(cp) if settings.agent else None
    loops = Loops(cp, agent)
    cp.wake = loops.wake
    cp.local = LocalMachines(agent) if agent is not None else None
    issuer = Issuer(cp.db, cp.keyring, cp.audit, settings, on_change=loops.wake)
    cp.wake_acme = issuer.wake
    app = create_app(cp)
    server = uvicorn.Server(_tls_config(app, settings, settings.listen_port))
    agents: uvicorn.Server | None = None
    if settings.agent_listen_port:
        agent_app = create_agent_app(cp)
        agents = _Secondary(
            _tls_config(
                agent_app,
                settings,
                settings.agent_listen_port,
                http=PeerCertProtocol,
                ssl_cert_reqs=ssl.CERT_REQUIRED,
                ssl_ca_certs=str(settings.data_dir / "ca.crt"),
            )
        )
    log.info(
        "Hangar API listening on https://%s:%d (data dir %s)",
        settings.listen_host,
        settings.listen_port,
        settings.data_dir,
    )
    if agents is not None:
        log.info(
            "agents' API (mutual TLS) on https://%s:%d",
            settings.listen_host,
            settings.agent_listen_port,
        )

    async def run_all() -> None:
        task = asyncio.create_task(agents.serve()) if agents is not None else None
        try:
            await server.serve()
        finally:
            if task is not None and agents is not None:
                agents.should_exit = True
                await task

    metrics = None
    verifier: AuditVerifier | None = None
    if settings.metrics_port:
        # The audit chains are verified on a schedule only where the result is exported.
        verifier = AuditVerifier(cp)
        collectors: list[Collector] = [ControlPlaneCollector(cp.db), verifier]
        if agent is not None:
            collectors.append(AgentCollector(agent))
        metrics = serve_metrics(settings.metrics_listen_host, settings.metrics_port, collectors)
    metrics_tls = None
    if settings.metrics_tls_port:
        # The same registry, over mutual TLS, with the API's server certificate.
        metrics_tls = serve_metrics_tls(
            settings.metrics_tls_listen_host,
            settings.metrics_tls_port,
            cert_file=settings.data_dir / "api.crt",
            key_file=settings.data_dir / "api.key",
            ca_file=settings.data_dir / "ca.crt",
        )
    shipper = LogShipper(cp)
    identity_checks = IdentityChecks(cp)
    loops.start()
    issuer.start()
    shipper.start()
    identity_checks.start()
    if verifier is not None:
        verifier.start()
    try:
        asyncio.run(run_all())
    finally:
        if metrics_tls is not None:
            metrics_tls.stop()
        if metrics is not None:
            metrics.stop()
        if verifier is not None:
            verifier.stop()
        identity_checks.stop()
        shipper.stop()
        issuer.stop()
        loops.stop()
        if agent is not None:
            agent.stop()  # machines keep running; their names return with the agent
        cp.close()

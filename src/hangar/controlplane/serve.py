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
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hangar.agent.reconciler import Assignment, Reconciler
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.service import LocalAgent, host_memory_mb
from hangar.api.app import create_agent_app, create_app
from hangar.api.guard import PEER_CERT_SCOPE_KEY
from hangar.audit.log import AuditContext
from hangar.config.settings import ServerSettings
from hangar.controlplane.acme import Issuer
from hangar.controlplane.deployer import step_all
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.routes import route_builder
from hangar.controlplane.secrets import deliver
from hangar.controlplane.state import ControlPlane
from hangar.domain.routing import RoutingTable
from hangar.edge.haproxy import Edge, EdgeConfig
from hangar.errors import ConfigError
from hangar.images.store import ImageStore
from hangar.net.nftables import Firewall
from hangar.net.wireguard import Mesh, validate_endpoint
from hangar.tlsprofile import TLS12_CIPHERS

log = logging.getLogger("hangar.server")

__all__ = ["serve"]


class _TLSConfig(uvicorn.Config):
    def load(self) -> None:
        super().load()
        assert self.ssl is not None
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2


class PeerCertProtocol(H11Protocol):
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


class Loops:
    """The control plane's and the local agent's background loops, one thread."""

    def __init__(self, cp: ControlPlane, agent: LocalAgent | None) -> None:
        self.cp = cp
        self.agent = agent
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hangar-loops", daemon=True)

    def wake(self) -> None:
        """Run the loops now: desired state just changed."""
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        timeout = self.cp.settings.tick_seconds
        while not self._stop.is_set():
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = time.time()
            timeout = self.cp.settings.tick_seconds
            try:
                with self.cp.db.write() as session:
                    step_all(session, self.cp.audit, now)
                if self.agent is not None:
                    due = self.agent.tick(now)
                    if due is not None:
                        # Look again when a check or restart is due, if that is sooner.
                        timeout = min(timeout, max(0.0, due - time.time()))
            except Exception:
                # One bad tick must not end the loops; the next one tries again.
                log.exception("background loop failed; continuing")


def local_agent(cp: ControlPlane) -> LocalAgent:
    """The agent for this host: runc machines under the agent directory."""
    settings = cp.settings
    if os.geteuid() != 0:
        raise ConfigError(
            "the agent runs machines with runc and needs root",
            hint="run as root, or pass --no-agent to serve only the API",
        )
    if shutil.which("runc") is None:
        raise ConfigError("runc is not installed", hint="apt-get install runc, or --no-agent")
    root = settings.effective_agent_dir
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    os.chmod(root, 0o711)  # noqa: S103 - search-only: machines reach their images through it
    runtime = RuncRuntime(root / "state", root / "bundles")
    images = ImageStore(root / "images")
    with cp.db.write() as session:
        host = register_local_host(
            session,
            name=settings.host_name or None,
            region=settings.region,
            memory_mb=host_memory_mb(),
        )
    ctx = AuditContext(actor=f"host:{host.name}", token_id=None, request_id=None, client_addr=None)

    def secrets_for(want: Assignment) -> dict[str, str]:
        return deliver(
            cp.db, cp.keyring, cp.audit, ctx, host_id=host.id, machine_id=want.machine_id
        )

    reconciler = Reconciler(runtime, images, root / "state", secret_source=secrets_for)
    edge, routes = local_edge(cp) if settings.edge else (None, None)
    firewall = None
    if settings.firewall:
        if shutil.which("nft") is None:
            raise ConfigError(
                "machines are isolated with nftables, which is not installed",
                hint="apt-get install nftables",
            )
        firewall = Firewall(root / "state" / "nftables")
    mesh = None
    if settings.mesh_endpoint:
        validate_endpoint(settings.mesh_endpoint)
        mesh = Mesh(host.id, root / "identity", listen_port=settings.mesh_port)
    return LocalAgent(
        cp.db,
        reconciler,
        host.id,
        edge=edge,
        routes=routes,
        firewall=firewall,
        dns=settings.dns,
        mesh=mesh,
        mesh_endpoint=settings.mesh_endpoint or None,
    )


def local_edge(cp: ControlPlane) -> tuple[Edge, Callable[[], RoutingTable]]:
    """This host's edge, fed from the store in-process."""
    settings = cp.settings
    if shutil.which("haproxy") is None:
        raise ConfigError(
            "the edge runs HAProxy, which is not installed",
            hint="apt-get install haproxy, or --no-edge to run without an edge on this host",
        )
    names = [n for n in settings.tls_hostnames if not n.replace(".", "").isdigit() and ":" not in n]
    edge = Edge(
        EdgeConfig(
            directory=settings.effective_edge_dir,
            bind_host=settings.edge_listen_host,
            http_port=settings.edge_http_port,
            https_port=settings.edge_https_port,
            metrics_port=settings.edge_metrics_port,
            acme_ca_file=settings.data_dir / "ca.crt",
            acme_verify_name="localhost" if "localhost" in names else (names or ["localhost"])[0],
        )
    )
    builder = route_builder(cp.keyring, cp.ca, settings)

    def routes() -> RoutingTable:
        with cp.db.read() as session:
            return builder.build(session)

    return edge, routes


def _tls_config(app: Any, settings: ServerSettings, port: int, **extra: Any) -> _TLSConfig:
    return _TLSConfig(
        app,
        host=settings.listen_host,
        port=port,
        ssl_certfile=str(settings.data_dir / "api.crt"),
        ssl_keyfile=str(settings.data_dir / "api.key"),
        ssl_ciphers=TLS12_CIPHERS,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        **extra,
    )


def serve(settings: ServerSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cp = ControlPlane.open(settings)
    loops = Loops(cp, local_agent(cp) if settings.agent else None)
    issuer = Issuer(cp.db, cp.keyring, cp.audit, settings, on_change=loops.wake)
    app = create_app(cp)
    app.state.wake = loops.wake
    app.state.agent = loops.agent
    app.state.issuer = issuer
    server = uvicorn.Server(_tls_config(app, settings, settings.listen_port))
    agents: uvicorn.Server | None = None
    if settings.agent_listen_port:
        agent_app = create_agent_app(cp)
        agent_app.state.wake = loops.wake
        agent_app.state.route_builder = route_builder(cp.keyring, cp.ca, settings)
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

    loops.start()
    issuer.start()
    try:
        asyncio.run(run_all())
    finally:
        issuer.stop()
        loops.stop()
        if loops.agent is not None and loops.agent.dns is not None:
            loops.agent.dns.stop()  # machines keep running; their names return with the agent
        cp.close()

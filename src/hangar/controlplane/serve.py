"""``hangar server run``: the HTTPS API (and, later, agent and edge) on this host."""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import threading
import time

import uvicorn

from hangar.agent.images import ImageStore
from hangar.agent.reconciler import Reconciler
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.service import LocalAgent
from hangar.api.app import create_app
from hangar.config.settings import ServerSettings
from hangar.controlplane.deployer import step_all
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.errors import ConfigError

log = logging.getLogger("hangar.server")

__all__ = ["serve"]

# Mozilla "intermediate": ECDHE with AEAD ciphers for TLS 1.2 (TLS 1.3's are all AEAD).
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


class _TLSConfig(uvicorn.Config):
    def load(self) -> None:
        super().load()
        assert self.ssl is not None
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2


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
        host = register_local_host(session, name=settings.host_name or None, region=settings.region)
    return LocalAgent(cp.db, Reconciler(runtime, images, root / "state"), host.id)


def serve(settings: ServerSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cp = ControlPlane.open(settings)
    loops = Loops(cp, local_agent(cp) if settings.agent else None)
    app = create_app(cp)
    app.state.wake = loops.wake
    app.state.agent = loops.agent
    config = _TLSConfig(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        ssl_certfile=str(settings.data_dir / "api.crt"),
        ssl_keyfile=str(settings.data_dir / "api.key"),
        ssl_ciphers=TLS12_CIPHERS,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    logging.getLogger("hangar").info(
        "Hangar API listening on https://%s:%d (data dir %s)",
        settings.listen_host,
        settings.listen_port,
        settings.data_dir,
    )
    loops.start()
    try:
        server.run()
    finally:
        loops.stop()
        cp.close()

"""``hangar agent run`` on a host other than the control plane's.

The host joins once (``agent.join``), then runs the same agent as the
control plane's own host (``agent.assemble``), linked to the control plane
over mutual TLS (``agent.apilink``), until SIGTERM or SIGINT. Machines keep
running while the agent is stopped and are adopted when it starts again.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from hangar.agent.apilink import ApiLink, LogShipper
from hangar.agent.assemble import AgentOptions, build_agent, prepare_agent_dir
from hangar.agent.join import Identity
from hangar.agent.metrics import AgentCollector
from hangar.edge.haproxy import EdgeConfig
from hangar.errors import ApiError, HangarError
from hangar.telemetry.metrics import serve_metrics

__all__ = ["run_agent"]

log = logging.getLogger("hangar.agent")


def run_agent(
    identity: Identity,
    agent_dir: Path,
    *,
    poll_seconds: float = 2.0,
    stop: threading.Event | None = None,
    edge: EdgeConfig | None = None,
    firewall: bool = True,
    mesh_endpoint: str | None = None,
    mesh_port: int = 51820,
    dns: bool = True,
    metrics: tuple[str, int] | None = None,
    volume_backend: str = "auto",
) -> int:
    """Run this host's machines until SIGTERM/SIGINT (machines keep running after)."""
    stop = stop or threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    prepare_agent_dir(agent_dir)
    layouts = agent_dir / "layouts"
    layouts.mkdir(mode=0o700, exist_ok=True)
    link = ApiLink(identity, layouts=layouts)
    if edge is not None:
        api_host = urlsplit(identity.api_url).hostname or "localhost"
        edge = replace(
            edge,
            directory=agent_dir / "edge",
            acme_ca_file=identity.ca_file,
            acme_verify_name=api_host,
        )
    options = AgentOptions(
        agent_dir=agent_dir,
        host_id=identity.host_id,
        edge=edge,
        firewall=firewall,
        dns=dns,
        mesh_endpoint=mesh_endpoint,
        mesh_port=mesh_port,
        volume_backend=volume_backend,
    )
    agent = build_agent(link, options)
    runtime = agent.reconciler.runtime
    shipper = LogShipper(
        runtime,
        agent_dir / "state" / "log-cursors.json",
        # The edge's access lines (see hangar.edge.accesslog) go up with the machines' output.
        access_dir=agent_dir / "access" if edge is not None else None,
    )
    link.runtime, link.shipper = runtime, shipper
    log.info(
        "agent for host %s (%s) talking to %s", identity.name, identity.host_id, identity.agent_url
    )
    listener = serve_metrics(*metrics, [AgentCollector(agent)]) if metrics is not None else None
    due: float | None = None
    backoff = 1.0
    try:
        while not stop.is_set():
            try:
                link.renew_if_due()
                now = time.time()
                wait = poll_seconds if due is None else max(0.0, min(poll_seconds, due - now))
                due = agent.tick(now, wait)
                if shipper.backlog:
                    due = time.time()  # more output waiting to be sent: go again now
                backoff = 1.0
            except ApiError as exc:
                if exc.status == 403:
                    log.error("the control plane no longer accepts this host: %s", exc.message)
                    return 3
                log.warning("control plane refused: %s; retrying in %.0fs", exc.message, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except HangarError as exc:
                log.warning("%s; retrying in %.0fs", exc.message, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
    finally:
        if listener is not None:
            listener.stop()
        link.close()
        agent.stop()
    log.info("agent stopped; machines keep running and are adopted on the next start")
    return 0

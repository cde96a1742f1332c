"""Building a host's agent: the one place its parts are put together.

``build_agent(link, options)`` makes the runtime, the image store, the
reconciler and the optional parts (edge, firewall, resolver, mesh) for an
agent directory, and hands them the link to the control plane. The
all-in-one server calls it with its in-process link, a joined host with its
mutual-TLS link, so both hosts run the same agent built the same way.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hangar.agent.appmetrics import AppMetrics
from hangar.agent.edgemetrics import EdgeMetrics
from hangar.agent.health import HealthMonitor
from hangar.agent.offload import Offload
from hangar.agent.reconciler import Reconciler
from hangar.agent.runtimes import registry
from hangar.agent.service import Agent
from hangar.agent.volumes.base import VolumeLayout
from hangar.agent.volumes.manager import VolumeManager
from hangar.contract.links import ControlPlaneLink
from hangar.edge.haproxy import Edge, EdgeConfig
from hangar.errors import ConfigError
from hangar.images.oci import parse_image_ref
from hangar.images.store import ImageStore
from hangar.net.nftables import Firewall
from hangar.net.wireguard import Mesh, validate_endpoint

__all__ = ["AgentOptions", "build_agent", "prepare_agent_dir"]

log = logging.getLogger("hangar.agent")


@dataclass(frozen=True)
class AgentOptions:
    """What an agent runs, beside its machines."""

    agent_dir: Path
    host_id: str
    edge: EdgeConfig | None = None  # None: this host runs no edge
    firewall: bool = True
    dns: bool = True
    mesh_endpoint: str | None = None  # None: this host is not in the mesh
    mesh_port: int = 51820
    runtime: str = "runc"  # a name in hangar.agent.runtimes.registry
    # How volumes are encrypted here: "auto" (LUKS2 where device-mapper is, else
    # gocryptfs), "luks2" or "gocryptfs".
    volume_backend: str = "auto"


def _volumes(options: AgentOptions) -> VolumeManager | None:
    """The host's volume manager, with what a killed agent left cleaned up; None without
    a backend (the host then takes no volumes, and says why in its log)."""
    try:
        manager = VolumeManager(VolumeLayout.for_agent(options.agent_dir), options.volume_backend)
    except ConfigError as exc:
        if options.volume_backend != "auto":
            raise
        log.warning("volumes: %s; this host takes no volumes", exc.message)
        return None
    manager.recover()
    return manager


def prepare_agent_dir(agent_dir: Path) -> None:
    """Create the agent directory, search-only for others (machines reach images through it)."""
    agent_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    os.chmod(agent_dir, 0o711)  # noqa: S103 - search-only, on purpose


def _require(program: str, why: str, hint: str) -> None:
    if shutil.which(program) is None:
        raise ConfigError(f"{why}, and {program} is not installed", hint=hint)


def build_agent(link: ControlPlaneLink, options: AgentOptions) -> Agent:
    """An agent for ``options.agent_dir``, talking to the control plane through ``link``."""
    if os.geteuid() != 0:
        raise ConfigError(
            "the agent runs machines with runc and needs root",
            hint="run as root, or pass --no-agent to serve only the API",
        )
    _require("runc", "machines run under runc", "apt-get install runc, or --no-agent")
    if options.firewall:
        _require("nft", "machines are isolated with nftables", "apt-get install nftables")
    if options.edge is not None:
        _require(
            "haproxy",
            "the edge runs HAProxy",
            "apt-get install haproxy, or --no-edge to run without an edge on this host",
        )
    if options.mesh_endpoint is not None:
        validate_endpoint(options.mesh_endpoint)
    factory = registry.get(options.runtime)  # an unknown driver fails before any change
    root = options.agent_dir
    prepare_agent_dir(root)
    # Checks, image pulls and stops run off the agent's loop, in pools where
    # each organization has a few slots: one tenant's slow work never delays
    # another's machines. Threads mostly wait (on a socket, on a machine's
    # exit), so the pools are wide; organizations are made by operators only.
    runtime = factory(root / "state", root / "bundles")  # mounts the bundles tmpfs
    reconciler = Reconciler(
        runtime,
        ImageStore(root / "images"),
        root / "state",
        health=HealthMonitor(Offload(workers=32, per_org=4, name="hangar-checks")),
        image_source=lambda want: parse_image_ref(link.image(want)),
        secret_source=link.secrets,
        offload=Offload(workers=32, per_org=2, name="hangar-machines"),
        volumes=_volumes(options),
        volume_key_source=link.volume_keys,
    )
    mesh = None
    if options.mesh_endpoint is not None:
        mesh = Mesh(options.host_id, root / "identity", listen_port=options.mesh_port)
    return Agent(
        link,
        reconciler,
        options.host_id,
        edge=Edge(options.edge) if options.edge is not None else None,
        firewall=Firewall(root / "state" / "nftables") if options.firewall else None,
        dns=options.dns,
        mesh=mesh,
        mesh_endpoint=options.mesh_endpoint,
        # Each running machine's figures for its organization; scrapes of
        # apps' own metrics wait on tenants' servers, so they run off the loop.
        app_metrics=AppMetrics(Offload(workers=16, per_org=2, name="hangar-scrapes")),
        # Each app's figures at this host's edge, from HAProxy's loopback exporter.
        edge_metrics=(
            EdgeMetrics(options.edge.metrics_port)
            if options.edge is not None and options.edge.metrics_port
            else None
        ),
    )

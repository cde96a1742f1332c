"""Machines and releases in the store: addresses, placement, deploys.

The control plane is the only writer of desired state: this module creates
releases and machines, places machines on hosts, gives them private
addresses, and records what agents report back.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import socket
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hangar.auth.tokens import new_id
from hangar.config.appconfig import AppConfig
from hangar.controlplane.secretversions import current_version
from hangar.controlplane.volumes import attach, check_mounts
from hangar.domain import addressing
from hangar.domain.machines import MachineState, transition
from hangar.domain.placement import Candidate, place
from hangar.errors import Conflict, NotFound
from hangar.store.tables import App, Host, Machine, MachineEvent, Network, Release, Setting

__all__ = [
    "active_machines",
    "create_machine",
    "create_release",
    "installation_prefix",
    "machine_memory",
    "observe_state",
    "org_network",
    "register_local_host",
    "set_state",
]

log = logging.getLogger("hangar.machines")

PREFIX_KEY = "private_prefix"
DEFAULT_MEMORY_MB = 256


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def installation_prefix(session: Session) -> ipaddress.IPv6Network:
    """The installation's private /32, chosen at random the first time it is needed."""
    row = session.get(Setting, PREFIX_KEY)
    if row is None:
        row = Setting(key=PREFIX_KEY, value=str(addressing.new_installation_prefix()))
        session.add(row)
        session.flush()
    return addressing.parse_installation_prefix(row.value)


def org_network(session: Session, org_id: str, name: str = "default") -> Network:
    network = session.execute(
        select(Network).where(Network.org_id == org_id, Network.name == name)
    ).scalar_one_or_none()
    if network is None:
        highest = session.execute(select(func.max(Network.number))).scalar_one_or_none() or 0
        network = Network(id=new_id("net"), org_id=org_id, name=name, number=highest + 1)
        session.add(network)
        session.flush()
    return network


def register_local_host(
    session: Session, *, name: str | None = None, region: str = "local", memory_mb: int = 0
) -> Host:
    """The all-in-one host (number 1), made on first start."""
    name = name or socket.gethostname().split(".")[0].lower() or "local"
    host = session.execute(select(Host).where(Host.name == name)).scalar_one_or_none()
    if host is None:
        highest = session.execute(select(func.max(Host.number))).scalar_one_or_none() or 0
        host = Host(
            id=new_id("host"),
            name=name,
            region=region,
            number=highest + 1,
            state="active",
            memory_mb=memory_mb,
            created_at=_now(),
            last_seen=_now(),
        )
        session.add(host)
        session.flush()
    elif memory_mb:
        host.memory_mb = memory_mb  # the host may have been given more (or less) since
    return host


def machine_memory(cfg: AppConfig) -> int:
    """The memory a machine of this configuration takes on its host, MB."""
    return cfg.vm[0].memory if cfg.vm else DEFAULT_MEMORY_MB


def _place(session: Session, region: str | None, memory_mb: int, pinned: str | None = None) -> Host:
    """The host for a new machine: each host's load from the store, the rule in ``place``."""
    load = {
        host_id: (count, used or 0)
        for host_id, count, used in session.execute(
            select(Machine.host_id, func.count(), func.sum(Machine.memory_mb))
            .where(Machine.desired != "destroyed")
            .group_by(Machine.host_id)
        ).all()
    }
    hosts = {host.id: host for host in session.execute(select(Host)).scalars()}
    candidates = [
        Candidate(
            id=host.id,
            number=host.number,
            region=host.region,
            state=host.state,
            memory_mb=host.memory_mb,
            machines=load.get(host.id, (0, 0))[0],
            used_mb=load.get(host.id, (0, 0))[1],
        )
        for host in hosts.values()
    ]
    return hosts[place(candidates, region, memory_mb, pinned).id]


def _address(session: Session, app: App, host: Host) -> str:
    """The next free address in the host's slice of the app's network."""
    network = org_network(session, app.org_id, app.network)
    slice_ = addressing.host_slice(
        addressing.network_prefix(installation_prefix(session), network.number), host.number
    )
    taken = session.execute(select(Machine.address).where(Machine.host_id == host.id)).scalars()
    return str(addressing.next_machine_address(slice_, map(ipaddress.IPv6Address, taken)))


def create_machine(
    session: Session,
    app: App,
    version: int,
    region: str | None,
    *,
    image: str | None = None,
    image_digest: str | None = None,
    args: list[str] | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    mounts: Sequence[str] = (),
) -> Machine:
    """A machine of ``app``; with ``image`` or ``args`` it is a one-off (never restarted).

    ``mounts``: the volume names it mounts; it takes a free volume of each
    (Conflict if there is none) and runs on their host.
    """
    pinned, volumes = attach(session, app, mounts)
    host = _place(session, region, memory_mb, pinned)
    now = _now()
    one_off = image is not None or args is not None
    machine = Machine(
        one_off=one_off,
        image=image,
        image_digest=image_digest if image is not None else None,
        args=json.dumps(args) if args is not None else None,
        memory_mb=memory_mb,
        id=new_id("m"),
        app_id=app.id,
        host_id=host.id,
        version=version,
        desired="started",
        state=MachineState.CREATED.value,
        running_version=None,
        healthy=None,
        exit_code=None,
        address=_address(session, app, host),
        detail="",
        created_at=now,
        updated_at=now,
    )
    session.add(machine)
    for volume in volumes:
        volume.machine_id = machine.id
        volume.updated_at = now
    session.flush()
    return machine


def set_state(session: Session, machine: Machine, target: MachineState, reason: str = "") -> None:
    """Move ``machine`` to ``target`` and record the change as a machine event.

    The move must be one the lifecycle table allows (``domain.machines``);
    otherwise Conflict, and nothing changes. Staying put records nothing.
    """
    try:
        current = MachineState(machine.state)
    except ValueError as exc:
        raise Conflict(f"machine {machine.id} is in an unknown state {machine.state!r}") from exc
    if transition(current, target) == current:
        return
    machine.state = target.value
    session.add(MachineEvent(machine_id=machine.id, time=_now(), kind=target.value, detail=reason))


def observe_state(
    session: Session, machine: Machine, target: MachineState, reason: str = ""
) -> bool:
    """``set_state`` for what a host reports: an impossible move is logged, not raised.

    A report describes the host as it is, so one bad entry must not fail
    the rest of the report; the machine keeps its recorded state (and the
    error names the move) until a report makes sense again. False if refused.
    """
    try:
        set_state(session, machine, target, reason)
    except Conflict as exc:
        log.error(
            "machine %s: a report was refused: %s; it stays %s", machine.id, exc, machine.state
        )
        return False
    return True


def active_machines(session: Session, app_id: str) -> list[Machine]:
    """The app's serving machines (one-offs are not deployed to)."""
    return list(
        session.execute(
            select(Machine)
            .where(
                Machine.app_id == app_id, Machine.desired != "destroyed", Machine.one_off.is_(False)
            )
            .order_by(Machine.created_at, Machine.id)
        ).scalars()
    )


def create_release(
    session: Session,
    app: App,
    *,
    image: str,
    config: AppConfig,
    strategy: str | None,
    actor: str,
    image_digest: str | None = None,
    secrets_version: int | Literal["current"] | None = "current",
) -> Release:
    """A new pending release; the deployer rolls it out.

    Its machines receive ``secrets_version`` of the app's secrets: by default
    the newest, as after any deploy; a rollback names the earlier release's.
    """
    busy = session.execute(
        select(Release.version).where(
            Release.app_id == app.id, Release.status.in_(("pending", "running"))
        )
    ).first()
    if busy is not None:
        raise Conflict(
            f"app {app.name} is already deploying release v{busy[0]}",
            hint="wait for it: `hangar releases`",
        )
    check_mounts(
        session, app, [m.source for m in config.mounts], strategy or config.deploy.strategy
    )
    last = (
        session.execute(
            select(func.max(Release.version)).where(Release.app_id == app.id)
        ).scalar_one_or_none()
        or 0
    )
    release = Release(
        id=new_id("rel"),
        app_id=app.id,
        version=last + 1,
        image=image,
        image_digest=image_digest,
        config=config.model_dump_json(),
        strategy=strategy or config.deploy.strategy,
        status="pending",
        detail="",
        created_by=actor,
        created_at=_now(),
        finished_at=None,
        secrets_version=(
            current_version(session, app.id) if secrets_version == "current" else secrets_version
        ),
    )
    session.add(release)
    session.flush()
    return release


def release_config(release: Release) -> AppConfig:
    return AppConfig.model_validate(json.loads(release.config))


def get_release(session: Session, app_id: str, version: int) -> Release:
    release = session.execute(
        select(Release).where(Release.app_id == app_id, Release.version == version)
    ).scalar_one_or_none()
    if release is None:
        raise NotFound(f"release v{version} not found")
    return release

"""Volumes in the store: create, list, show, extend, destroy; attach; keys to hosts.

A volume is made on one host, with that host's backend (``luks2`` or
``gocryptfs``, as its agent reported it) and its own data key, stored only
wrapped by the KEK. Its files appear on the host the first time a machine
mounts it. A machine of an app whose ``[[mounts]]`` names ``source`` takes a
free volume of that name (``attach``) and runs on its host; the volume is
free again once that machine is gone from its host (``release_machine``).
Its key goes, sealed, only to the host of the machine holding it, only while
that machine is meant to run (``deliver_keys``), each delivery audited.
Destroying a volume drops its wrapped key in the same transaction: from that
commit no copy of its ciphertext can be read (crypto-shredding); the host
deletes the files when it next reconciles.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.auth.tokens import new_id
from hangar.contract.volumes import HostVolume, VolumeMount
from hangar.controlplane.changes import change, record_refusal
from hangar.controlplane.state import ControlPlane
from hangar.crypto.volumekeys import new_volume_key, open_volume_key
from hangar.domain.volumes import (
    MAX_VOLUMES_PER_APP,
    MAX_VOLUMES_PER_ORG,
    FreeVolume,
    check_size,
    check_volume_name,
    format_size,
    pick_free,
)
from hangar.errors import Conflict, NotFound, PermissionDenied, ValidationError, audited
from hangar.store.tables import App, Host, Machine, Volume

__all__ = [
    "BACKENDS",
    "VolumeInfo",
    "attach",
    "check_mounts",
    "create_volume",
    "deliver_keys",
    "destroy_volume",
    "extend_volume",
    "find_volume",
    "host_volumes",
    "list_volumes",
    "machine_mounts",
    "release_machine",
    "report_backend",
]

BACKENDS = ("luks2", "gocryptfs")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class VolumeInfo:
    """A volume as people see it (never its key)."""

    id: str
    name: str
    app: str
    host: str
    size_mb: int
    encryption: str
    state: str
    machine: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


def _info(volume: Volume, app: str, host: str) -> VolumeInfo:
    return VolumeInfo(
        id=volume.id,
        name=volume.name,
        app=app,
        host=host,
        size_mb=volume.size_mb,
        encryption=volume.encryption,
        state=volume.state,
        machine=volume.machine_id,
        created_at=volume.created_at,
        updated_at=volume.updated_at,
    )


def _host_names(session: Session) -> dict[str, str]:
    return {host_id: name for host_id, name in session.execute(select(Host.id, Host.name))}


def list_volumes(cp: ControlPlane, app: App, *, destroyed: bool = False) -> list[VolumeInfo]:
    """The app's volumes (destroyed ones too with ``destroyed``), by name then age."""
    with cp.db.read() as session:
        query = select(Volume).where(Volume.app_id == app.id)
        if not destroyed:
            query = query.where(Volume.state != "destroyed")
        rows = session.execute(query.order_by(Volume.name, Volume.created_at)).scalars()
        hosts = _host_names(session)
        return [_info(v, app.name, hosts.get(v.host_id, v.host_id)) for v in rows]


def _find(session: Session, app: App, ref: str, *, lock: bool = False) -> Volume:
    """The app's volume with id ``ref``, or the only live one named ``ref``; with
    ``lock``, locked to the end of the transaction (a machine taking it waits)."""
    volume = session.get(Volume, ref, with_for_update=lock)
    if volume is not None and volume.app_id == app.id:
        return volume
    query = select(Volume).where(
        Volume.app_id == app.id, Volume.name == ref, Volume.state != "destroyed"
    )
    named = list(session.execute(query.with_for_update() if lock else query).scalars())
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise Conflict(
            f"app {app.name} has {len(named)} volumes named {ref!r}",
            hint=f"name one by its id: `hangar volumes list --app {app.name}`",
        )
    # Another app's volume is "not found", as if it did not exist.
    raise NotFound(f"volume {ref!r} not found in app {app.name}")


def find_volume(cp: ControlPlane, app: App, ref: str) -> VolumeInfo:
    with cp.db.read() as session:
        volume = _find(session, app, ref)
        return _info(volume, app.name, _host_names(session).get(volume.host_id, volume.host_id))


def _pick_host(session: Session, host_name: str | None) -> Host:
    if host_name is not None:
        host = session.execute(select(Host).where(Host.name == host_name)).scalar_one_or_none()
        if host is None:
            raise NotFound(f"host {host_name!r} not found", hint="`hangar hosts list` names them")
        if host.state != "active":
            raise Conflict(f"host {host_name} is {host.state}: it takes no new volumes")
        hosts = [host]
    else:
        hosts = list(session.execute(select(Host).where(Host.state == "active")).scalars())
        if not hosts:
            raise Conflict("no active host can take a volume", hint="uncordon or join a host")
    ready = [h for h in hosts if h.volume_backend in BACKENDS]
    if not ready:
        raise Conflict(
            f"host {hosts[0].name} has not reported how it encrypts volumes yet"
            if len(hosts) == 1
            else "no active host has reported how it encrypts volumes yet",
            hint="wait for its agent's first report (a few seconds after it starts)",
        )
    counts: dict[str, int] = {
        host_id: count
        for host_id, count in session.execute(
            select(Volume.host_id, func.count())
            .where(Volume.state != "destroyed")
            .group_by(Volume.host_id)
        )
    }
    return min(ready, key=lambda h: (counts.get(h.id, 0), h.number))


def _check_count(session: Session, app: App) -> None:
    """Refuse a volume past the app's or its organization's bound (destroyed ones aside)."""
    live = Volume.state != "destroyed"
    in_app = (
        session.scalar(
            select(func.count()).select_from(Volume).where(Volume.app_id == app.id, live)
        )
        or 0
    )
    if in_app >= MAX_VOLUMES_PER_APP:
        raise Conflict(
            f"app {app.name} has {in_app} volumes: an app has at most {MAX_VOLUMES_PER_APP}",
            hint=f"destroy one it no longer needs: `hangar volumes list --app {app.name}`",
        )
    in_org = (
        session.scalar(
            select(func.count()).select_from(Volume).where(Volume.org_id == app.org_id, live)
        )
        or 0
    )
    if in_org >= MAX_VOLUMES_PER_ORG:
        raise Conflict(
            f"the organization has {in_org} volumes: it has at most {MAX_VOLUMES_PER_ORG}",
            hint="destroy volumes it no longer needs (`hangar volumes list --app APP`)",
        )


def create_volume(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    name: str,
    size_mb: int,
    *,
    host_name: str | None = None,
    creator: str,
) -> VolumeInfo:
    """A new, empty, encrypted volume of ``app`` on one host (validated before any write)."""
    check_volume_name(name)
    check_size(size_mb)
    with change(cp, ctx, org_id=app.org_id, action="volume.create", target=name) as (
        session,
        event,
    ):
        _check_count(session, app)
        host = _pick_host(session, host_name)
        backend = host.volume_backend
        assert backend is not None
        volume_id = new_id("vol")
        now = _now()
        volume = Volume(
            id=volume_id,
            org_id=app.org_id,
            app_id=app.id,
            name=name,
            host_id=host.id,
            size_mb=size_mb,
            encryption=backend,
            key_wrapped=new_volume_key(cp.keyring, volume_id, backend),
            state="created",
            machine_id=None,
            created_by=creator,
            created_at=now,
            updated_at=now,
            destroyed_at=None,
        )
        session.add(volume)
        event.target = f"{app.name}/{volume_id}"
        event.detail = {
            "name": name,
            "host": host.name,
            "size": format_size(size_mb),
            "encryption": backend,
        }
        return _info(volume, app.name, host.name)


def extend_volume(
    cp: ControlPlane, ctx: AuditContext, app: App, ref: str, size_mb: int
) -> tuple[VolumeInfo, bool]:
    """Grow a volume to ``size_mb`` (never shrink); and whether it grows while in use.

    A free volume grows when a machine next mounts it; a held one grows at once
    where its host can grow a mounted file system, else at its machine's next start.
    """
    check_size(size_mb)
    with change(cp, ctx, org_id=app.org_id, action="volume.extend", target=ref) as (
        session,
        event,
    ):
        volume = _find(session, app, ref, lock=True)
        if volume.state == "destroyed":
            raise Conflict(f"volume {volume.id} is destroyed")
        if size_mb <= volume.size_mb:
            raise ValidationError(
                f"volume {volume.id} is {format_size(volume.size_mb)} already: a volume only grows",
                hint=f"ask for more than {format_size(volume.size_mb)}",
            )
        event.target = f"{app.name}/{volume.id}"
        host = session.get(Host, volume.host_id)
        online = volume.machine_id is None or bool(host and host.volume_grows_online)
        event.detail = {
            "from": format_size(volume.size_mb),
            "to": format_size(size_mb),
            "online": online,
        }
        volume.size_mb = size_mb
        volume.updated_at = _now()
        name = host.name if host is not None else volume.host_id
        return _info(volume, app.name, name), online


def destroy_volume(cp: ControlPlane, ctx: AuditContext, app: App, ref: str) -> VolumeInfo:
    """Destroy a free volume: its key is dropped now (crypto-shredding), its files next."""
    with change(cp, ctx, org_id=app.org_id, action="volume.destroy", target=ref) as (
        session,
        event,
    ):
        volume = _find(session, app, ref, lock=True)
        if volume.state == "destroyed":
            raise Conflict(f"volume {volume.id} is destroyed already")
        if volume.machine_id is not None and session.get(Machine, volume.machine_id) is not None:
            raise Conflict(
                f"volume {volume.id} is held by machine {volume.machine_id}",
                hint=f"destroy that machine first: `hangar machines destroy {volume.machine_id}`",
            )
        event.target = f"{app.name}/{volume.id}"
        event.detail = {"name": volume.name, "shredded": True}
        volume.key_wrapped = None
        volume.state = "destroyed"
        volume.machine_id = None
        volume.destroyed_at = volume.updated_at = _now()
        return _info(volume, app.name, _host_names(session).get(volume.host_id, volume.host_id))


def _free(session: Session, app_id: str) -> list[FreeVolume]:
    # Locked to the end of the transaction: on PostgreSQL, a machine made at the same
    # time (a deploy beside a scale) waits here, then sees which volumes this one took.
    rows = session.execute(
        select(Volume).where(Volume.app_id == app_id, Volume.state != "destroyed").with_for_update()
    ).scalars()
    return [
        FreeVolume(v.id, v.name, v.host_id, v.machine_id, v.created_at.timestamp()) for v in rows
    ]


def attach(session: Session, app: App, sources: Sequence[str]) -> tuple[str | None, list[Volume]]:
    """Free volumes for a new machine mounting ``sources``: (their host, the volumes).

    Conflict if one is missing, or if they are not all on one host. The caller
    sets ``machine_id`` on them once the machine exists.
    """
    if not sources:
        return None, []
    free = _free(session, app.id)
    # A volume on a host that takes machines first: one on a cordoned host only if
    # no other is free (placement then says why the machine cannot run).
    active = set(session.execute(select(Host.id).where(Host.state == "active")).scalars())
    try:
        first = pick_free([v for v in free if v.host_id in active], sources[0], app.name)
    except Conflict:
        first = pick_free(free, sources[0], app.name)
    chosen = [first]
    for source in sources[1:]:
        here = [v for v in free if v.host_id == first.host_id]
        chosen.append(pick_free(here, source, app.name))
    volumes = [session.get(Volume, v.id) for v in chosen]
    return first.host_id, [v for v in volumes if v is not None]


def check_mounts(session: Session, app: App, sources: Sequence[str], strategy: str) -> None:
    """Refuse a release whose ``[[mounts]]`` cannot be met, before anything is made.

    The app's serving machines keep their volumes across a rolling, canary or
    immediate deploy (each is updated in place); each must already hold a
    volume of every name. An app with no machine yet needs a free volume of
    every name, all on one host, for its first. A blue-green deploy would
    need a second set of volumes beside the first: refused.
    """
    if not sources:
        return
    if strategy == "bluegreen":
        raise ValidationError(
            "an app with [[mounts]] cannot deploy blue-green: a volume is held by one machine "
            "at a time, and a blue-green deploy runs a new set of machines beside the old",
            hint='use strategy = "rolling", "canary" or "immediate" in [deploy]',
        )
    machines = list(
        session.execute(
            select(Machine.id).where(
                Machine.app_id == app.id,
                Machine.desired != "destroyed",
                Machine.one_off.is_(False),
            )
        ).scalars()
    )
    if not machines:
        attach(session, app, sources)  # Conflict, naming what is missing, if it cannot
        return
    held: dict[str, set[str]] = {}
    for machine_id, name in session.execute(
        select(Volume.machine_id, Volume.name).where(
            Volume.machine_id.in_(machines), Volume.state != "destroyed"
        )
    ):
        held.setdefault(machine_id or "", set()).add(name)
    for machine_id in machines:
        missing = [s for s in sources if s not in held.get(machine_id, set())]
        if missing:
            raise Conflict(
                f"machine {machine_id} of app {app.name} holds no volume {missing[0]!r}: "
                "a running machine cannot be given a volume",
                hint=f"destroy it (`hangar machines destroy {machine_id}`) and deploy again: "
                "the new machine takes a free volume",
            )


def release_machine(session: Session, machine_id: str) -> None:
    """The machine is gone from its host: the volumes it held are free."""
    for volume in session.execute(select(Volume).where(Volume.machine_id == machine_id)).scalars():
        volume.machine_id = None
        volume.updated_at = _now()


def machine_mounts(
    volumes: Sequence[Volume], mounts: Sequence[tuple[str, str]]
) -> list[VolumeMount]:
    """The machine's ``(source, destination)`` mounts, with the volumes it holds."""
    held = {v.name: v for v in volumes if v.state != "destroyed"}
    return [
        VolumeMount(
            volume_id=held[source].id,
            name=source,
            destination=destination,
            size_mb=held[source].size_mb,
            encryption="luks2" if held[source].encryption == "luks2" else "gocryptfs",
        )
        for source, destination in mounts
        if source in held
    ]


def host_volumes(session: Session, host_id: str) -> list[HostVolume]:
    """Every volume that lives on the host and is not destroyed."""
    rows = session.execute(
        select(Volume)
        .where(Volume.host_id == host_id, Volume.state != "destroyed")
        .order_by(Volume.id)
    ).scalars()
    return [
        HostVolume(
            volume_id=v.id,
            size_mb=v.size_mb,
            encryption="luks2" if v.encryption == "luks2" else "gocryptfs",
        )
        for v in rows
    ]


def report_backend(session: Session, host_id: str, backend: str, grows_online: bool) -> None:
    """Record the host's volume backend and whether it grows volumes in use."""
    if backend not in BACKENDS:
        raise ValidationError(f"unknown volume backend {backend!r}")
    host = session.get(Host, host_id)
    if host is not None:
        host.volume_backend = backend
        host.volume_grows_online = grows_online


def deliver_keys(
    cp: ControlPlane, ctx: AuditContext, *, host_id: str, machine_id: str
) -> dict[str, bytes]:
    """The keys of the volumes a machine holds, for the host it is starting on.

    Only the host the machine is assigned to, and only while the machine is
    meant to run, gets them; each delivery (and each refusal) is an audit
    event naming the volumes, never a key.
    """
    with cp.db.write() as session:
        machine = session.get(Machine, machine_id)
        app = session.get(App, machine.app_id) if machine is not None else None
        ok = (
            machine is not None
            and app is not None
            and machine.host_id == host_id
            and machine.desired == "started"
        )
        if ok and app is not None:
            volumes = list(
                session.execute(
                    select(Volume).where(
                        Volume.machine_id == machine_id,
                        Volume.host_id == host_id,
                        Volume.app_id == app.id,
                        Volume.key_wrapped.is_not(None),
                    )
                ).scalars()
            )
            if not volumes:
                return {}
            keys = {}
            for v in volumes:
                assert v.key_wrapped is not None
                keys[v.id] = open_volume_key(cp.keyring, v.id, v.key_wrapped)
                if v.state == "created":
                    v.state = "ready"
            cp.audit.record(
                session,
                ctx,
                org_id=app.org_id,
                action="volume.deliver_keys",
                target=machine_id,
                detail={"host": host_id, "volumes": sorted(keys)},
            )
            return keys
    record_refusal(
        cp,
        ctx,
        org_id=app.org_id if app is not None else None,
        action="volume.deliver_keys",
        target=machine_id,
        reason=f"machine not starting on host {host_id}",
    )
    raise audited(PermissionDenied(f"machine {machine_id} is not starting on this host"))

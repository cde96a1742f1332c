"""Hosts: the machines' hosts, for installation operators."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel
from sqlalchemy import func, select

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.errors import NotFound
from hangar.store.tables import Host, Machine

router = GuardedRouter(prefix="/v1/hosts", tags=["hosts"])


class HostOut(BaseModel):
    id: str
    name: str
    region: str
    state: str
    number: int
    machines: int
    created_at: dt.datetime
    last_seen: dt.datetime | None


def _hosts(access: Access, name: str | None = None) -> list[HostOut]:
    access.check(access.perm, org=None, shown="hosts")
    counts = (
        select(Machine.host_id, func.count().label("n"))
        .where(Machine.desired != "destroyed")
        .group_by(Machine.host_id)
        .subquery()
    )
    query = select(Host, counts.c.n).outerjoin(counts, counts.c.host_id == Host.id)
    if name is not None:
        query = query.where(Host.name == name)
    with access.cp.db.read() as session:
        rows = session.execute(query.order_by(Host.number)).all()
    return [
        HostOut(
            id=h.id,
            name=h.name,
            region=h.region,
            state=h.state,
            number=h.number,
            machines=n or 0,
            created_at=h.created_at,
            last_seen=h.last_seen,
        )
        for h, n in rows
    ]


@router.get("", response_model=list[HostOut], summary="Hosts and their machine counts")
def list_hosts(access: Annotated[Access, requires(Permission.HOSTS_READ)]) -> list[HostOut]:
    return _hosts(access)


@router.get("/{host}", response_model=HostOut, summary="One host")
def show_host(host: str, access: Annotated[Access, requires(Permission.HOSTS_READ)]) -> HostOut:
    found = _hosts(access, host)
    if not found:
        raise NotFound(f"host {host!r} not found")
    return found[0]


def _set_state(access: Access, name: str, state: str) -> HostOut:
    access.check(access.perm, org=None, shown=f"host {name!r}")
    with access.cp.db.write() as session:
        host = session.execute(select(Host).where(Host.name == name)).scalar_one_or_none()
        if host is None:
            raise NotFound(f"host {name!r} not found")
        host.state = state
        access.cp.audit.record(
            session, access.ctx, org_id=None, action=f"host.{state}", target=name
        )
    return _hosts(access, name)[0]


@router.post(
    "/{host}/cordon",
    response_model=HostOut,
    summary="Give a host no new machines (those it runs stay)",
)
def cordon(host: str, access: Annotated[Access, requires(Permission.HOSTS_WRITE)]) -> HostOut:
    return _set_state(access, host, "cordoned")


@router.post("/{host}/uncordon", response_model=HostOut, summary="Let a host take machines again")
def uncordon(host: str, access: Annotated[Access, requires(Permission.HOSTS_WRITE)]) -> HostOut:
    return _set_state(access, host, "active")

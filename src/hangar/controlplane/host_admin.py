"""Hosts as installation operators see and change them: list, cordon, join, remove.

The join token's secret and the host certificates are ``controlplane.hosts``'s;
this module records each change in the audit trail.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change, record_refusal
from hangar.controlplane.hosts import IssuedCert, make_join_token, redeem_join_token, remove_host
from hangar.controlplane.state import ControlPlane
from hangar.errors import HangarError, NotFound, audited
from hangar.store.tables import Host, JoinToken, Machine

__all__ = ["join", "list_hosts", "new_join_token", "remove", "set_state"]


def list_hosts(cp: ControlPlane, name: str | None = None) -> list[tuple[Host, int]]:
    """Every host (or the one named) and how many machines it runs, by number."""
    counts = (
        select(Machine.host_id, func.count().label("n"))
        .where(Machine.desired != "destroyed")
        .group_by(Machine.host_id)
        .subquery()
    )
    query = select(Host, counts.c.n).outerjoin(counts, counts.c.host_id == Host.id)
    if name is not None:
        query = query.where(Host.name == name)
    with cp.db.read() as session:
        rows = session.execute(query.order_by(Host.number)).all()
    return [(h, n or 0) for h, n in rows]


def set_state(cp: ControlPlane, ctx: AuditContext, name: str, state: str) -> None:
    """Cordon a host (``cordoned``: no new machines) or let it take machines (``active``)."""
    with change(cp, ctx, org_id=None, action=f"host.{state}", target=name, wake=False) as (
        session,
        _,
    ):
        host = session.execute(select(Host).where(Host.name == name)).scalar_one_or_none()
        if host is None or host.state == "removed":
            raise NotFound(f"host {name!r} not found")
        host.state = state


def new_join_token(
    cp: ControlPlane,
    ctx: AuditContext,
    *,
    name: str | None,
    region: str,
    expires_in: int,
    edge: bool,
) -> tuple[JoinToken, str]:
    """A one-time token a new host joins with: its row, and its text (shown once)."""
    with change(cp, ctx, org_id=None, action="host.join_token", wake=False) as (session, event):
        row, token = make_join_token(
            session,
            cp.ca,
            name=name,
            region=region,
            ttl=dt.timedelta(seconds=expires_in),
            actor=ctx.actor,
            edge=edge,
        )
        event.target = row.id
        event.detail = {"name": name, "region": region, "expires_in": expires_in, "edge": edge}
    return row, token


def join(
    cp: ControlPlane, ctx: AuditContext, token: str, csr: str, *, name: str, memory_mb: int
) -> tuple[Host, IssuedCert]:
    """A new host trades a join token and a CSR for its certificate; refusals are audited."""
    try:
        with change(cp, ctx, org_id=None, action="host.join") as (session, event):
            host, issued = redeem_join_token(
                session,
                cp.ca,
                token,
                csr,
                name=name,
                memory_mb=memory_mb,
                lifetime=dt.timedelta(seconds=cp.settings.host_cert_seconds),
            )
            event.target = host.name
            event.detail = {"host_id": host.id, "region": host.region, "serial": issued.serial}
    except HangarError as exc:
        record_refusal(cp, ctx, org_id=None, action="host.join", target=name, reason=exc.message)
        audited(exc)
        raise
    return host, issued


def remove(cp: ControlPlane, ctx: AuditContext, name: str) -> None:
    """Take a host with no machines left out: its certificate stops working at once."""
    with change(cp, ctx, org_id=None, action="host.remove", target=name) as (session, event):
        event.detail = {"host_id": remove_host(session, name).id}

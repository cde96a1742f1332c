"""Organizations' log sinks: configured here, fed by ``LogShipper``.

A sink is a kind (a driver in ``telemetry.sinks``) and a URL. Its URL must
be http(s), carry no credentials (they would be stored and shown in
plain text) and resolve to public addresses only, unless the operator
allows its host (``allowed_log_sink_hosts``): the control plane calls it on
the organization's behalf and must not become a way into the private
network. Adding and removing are audited.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select

from hangar.audit.log import AuditContext
from hangar.auth.tokens import new_id
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane
from hangar.errors import NotFound, ValidationError
from hangar.images.registry import internal_addresses
from hangar.store.tables import LogSinkRow, Org
from hangar.telemetry.sinks import DRIVERS, KNOWN_KINDS

__all__ = ["SinkOut", "add_sink", "check_sink_url", "list_sinks", "remove_sink"]

MAX_SINKS = 8  # per organization


@dataclass(frozen=True)
class SinkOut:
    id: str
    kind: str
    url: str
    created_by: str
    created_at: dt.datetime


def check_sink_url(url: str, allowed: list[str]) -> None:
    """ValidationError unless ``url`` is one the control plane may ship to."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValidationError(f"sink URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"sink URL {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValidationError(
            "a sink URL cannot carry credentials",
            hint="Hangar ships to sinks that accept it by address; credentials are not kept",
        )
    if parts.query or parts.fragment:
        raise ValidationError("a sink URL is a base URL, without query or fragment")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise ValidationError("a sink URL is printable ASCII without spaces")
    host = parts.hostname
    if host in allowed or parts.netloc in allowed:
        return
    unreachable = ValidationError(
        f"sink host {host} unreachable",
        hint="a sink on a private or local address must be allowed by name in the"
        " server's allowed_log_sink_hosts setting",
    )
    try:
        refused = internal_addresses(host, port)
    except OSError as exc:
        raise unreachable from exc
    if refused:
        raise unreachable


def _check_kind(kind: str) -> None:
    if kind in DRIVERS:
        return
    if kind in KNOWN_KINDS:
        raise ValidationError(
            f"Hangar does not ship logs to {kind} yet",
            hint=f"supported: {', '.join(sorted(DRIVERS))}",
        )
    raise ValidationError(f"unknown sink kind {kind!r}", hint=f"one of {', '.join(KNOWN_KINDS)}")


def add_sink(cp: ControlPlane, ctx: AuditContext, org: Org, kind: str, url: str) -> SinkOut:
    _check_kind(kind)
    check_sink_url(url, cp.settings.allowed_log_sink_hosts)
    with change(cp, ctx, org_id=org.id, action="logs.sink.add", wake=False) as (session, event):
        count = len(session.execute(select(LogSinkRow.id).where(LogSinkRow.org_id == org.id)).all())
        if count >= MAX_SINKS:
            raise ValidationError(f"an organization has at most {MAX_SINKS} log sinks")
        row = LogSinkRow(
            id=new_id("sink"),
            org_id=org.id,
            kind=kind,
            url=url,
            created_by=ctx.actor,
            created_at=dt.datetime.now(dt.UTC),
        )
        session.add(row)
        event.target = row.id
        event.detail = {"kind": kind, "url": url}
    return SinkOut(row.id, kind, url, row.created_by, row.created_at)


def list_sinks(cp: ControlPlane, org: Org) -> list[SinkOut]:
    with cp.db.read() as session:
        rows = session.execute(
            select(LogSinkRow).where(LogSinkRow.org_id == org.id).order_by(LogSinkRow.created_at)
        ).scalars()
        return [SinkOut(r.id, r.kind, r.url, r.created_by, r.created_at) for r in rows]


def remove_sink(cp: ControlPlane, ctx: AuditContext, org: Org, sink_id: str) -> None:
    with change(cp, ctx, org_id=org.id, action="logs.sink.remove", wake=False) as (
        session,
        event,
    ):
        row = session.get(LogSinkRow, sink_id)
        if row is None or row.org_id != org.id:
            raise NotFound(f"log sink {sink_id!r} not found")
        event.target = sink_id
        event.detail = {"kind": row.kind, "url": row.url}
        session.delete(row)

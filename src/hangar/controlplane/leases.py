"""Leases on machines: while one is held, only its holder may change the machine.

A lease's nonce is shown once, to the person who takes it; the store keeps
only its hash, and presented nonces are compared in constant time.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane
from hangar.crypto.digests import SecretMismatch, hash_secret, verify_secret
from hangar.errors import Conflict, NotFound
from hangar.store.tables import App, Machine

__all__ = ["LEASE_HEADER", "Lease", "held", "release_lease", "take_lease"]

# Where a holder presents its nonce (named in the refusal's hint).
LEASE_HEADER = "Hangar-Lease-Nonce"


@dataclass(frozen=True)
class Lease:
    nonce: str
    owner: str
    expires_at: dt.datetime


def _check(machine: Machine, nonce: str) -> None:
    """Conflict if someone else holds an unexpired lease on the machine."""
    expires = machine.lease_expires_at
    if machine.lease_nonce_hash is None or expires is None or expires <= dt.datetime.now(dt.UTC):
        return
    try:
        verify_secret(nonce, machine.lease_nonce_hash, what="lease nonce")
    except SecretMismatch:
        raise Conflict(
            f"machine {machine.id} is leased by {machine.lease_owner} until "
            f"{expires.isoformat(timespec='seconds')}",
            hint=f"wait, or send the lease's nonce in the {LEASE_HEADER} header",
        ) from None


def held(session: Session, app: App, machine_id: str, nonce: str) -> Machine:
    """The app's machine, to change in ``session``; Conflict if another holds its lease."""
    row = session.execute(
        select(Machine).where(Machine.id == machine_id[:32], Machine.app_id == app.id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"machine {machine_id!r} not found in app {app.name!r}")
    _check(row, nonce)
    return row


def take_lease(
    cp: ControlPlane, ctx: AuditContext, app: App, machine_id: str, *, nonce: str, ttl: int
) -> Lease:
    """A new lease for ``ttl`` seconds (replacing the caller's own, given its nonce)."""
    fresh = secrets.token_urlsafe(24)
    with change(cp, ctx, org_id=app.org_id, action="machine.lease", wake=False) as (
        session,
        event,
    ):
        row = held(session, app, machine_id, nonce)
        row.lease_nonce_hash = hash_secret(fresh)
        row.lease_owner = ctx.actor
        row.lease_expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
        event.target, event.detail = row.id, {"ttl": ttl}
    return Lease(nonce=fresh, owner=row.lease_owner, expires_at=row.lease_expires_at)


def release_lease(
    cp: ControlPlane, ctx: AuditContext, app: App, machine_id: str, *, nonce: str
) -> None:
    with change(cp, ctx, org_id=app.org_id, action="machine.lease_release", wake=False) as (
        session,
        event,
    ):
        row = held(session, app, machine_id, nonce)
        row.lease_nonce_hash = row.lease_owner = row.lease_expires_at = None
        event.target = row.id

"""The audit trail as people read it: events, signed checkpoints, verification."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from hangar.audit.chain import Checkpoint, VerifyResult
from hangar.audit.log import load_checkpoints, verify_stored_chain
from hangar.controlplane.state import ControlPlane
from hangar.crypto.signing import public_key_from_pem
from hangar.store.tables import AuditEvent

__all__ = ["checkpoints", "list_events", "verify"]


def list_events(
    cp: ControlPlane, chain: str, *, after: int, since: dt.datetime | None, limit: int
) -> list[AuditEvent]:
    """Up to ``limit`` of the chain's events after sequence number ``after``, oldest first."""
    query = (
        select(AuditEvent)
        .where(AuditEvent.chain == chain, AuditEvent.seq > after)
        .order_by(AuditEvent.seq)
        .limit(limit)
    )
    if since is not None:
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        query = query.where(AuditEvent.time >= since.astimezone(dt.UTC).isoformat())
    with cp.db.read() as session:
        return list(session.execute(query).scalars())


def checkpoints(cp: ControlPlane, chain: str) -> list[Checkpoint]:
    with cp.db.read() as session:
        return load_checkpoints(session, chain)


def verify(cp: ControlPlane, chain: str) -> VerifyResult:
    """The chain checked on the server against the installation's signing key."""
    key = public_key_from_pem(cp.audit_public_pem)
    with cp.db.read() as session:
        return verify_stored_chain(session, chain, key)

"""The audit trail: events, signed checkpoints, the public key, verification."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from sqlalchemy import select

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.pagination import Limit, Page, decode_cursor, encode_cursor
from hangar.audit.chain import SYSTEM_CHAIN
from hangar.audit.log import load_checkpoints, verify_stored_chain
from hangar.auth.rbac import Permission
from hangar.crypto.signing import public_key_from_pem
from hangar.errors import NotFound, PermissionDenied, ValidationError
from hangar.store.tables import AuditEvent, Org

router = GuardedRouter(prefix="/v1/audit", tags=["audit"])

OrgParam = Annotated[str | None, Query(max_length=63, description="organization name")]
SystemParam = Annotated[bool, Query(description="the installation's own chain (operators)")]


class EventOut(BaseModel):
    chain: str
    seq: int
    time: str
    actor: str
    token_id: str | None
    action: str
    target: str
    outcome: str
    request_id: str | None
    client_addr: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class CheckpointOut(BaseModel):
    chain: str
    seq: int
    head_hash: str
    time: str
    signature: str


class VerifyOut(BaseModel):
    chain: str
    ok: bool
    events: int
    checkpoints: int
    first_bad_seq: int | None
    reason: str


def _chain(access: Access, org: str | None, system: bool) -> str:
    """Which chain the caller asked for, after checking they may read it."""
    principal = access.principal
    if system:
        if not principal.is_operator or principal.scope.orgs is not None:
            access.check(Permission.AUDIT_READ, org=None, shown="the system audit chain")
            raise PermissionDenied("the system audit chain is for installation operators")
        return SYSTEM_CHAIN
    if org is None:
        visible = principal.visible_orgs()
        if len(visible) != 1:
            raise ValidationError(
                "say which organization's audit trail", hint="pass --org NAME (or --system)"
            )
        with access.cp.db.read() as session:
            target = session.get(Org, visible[0])
    else:
        with access.cp.db.read() as session:
            target = session.execute(select(Org).where(Org.name == org)).scalar_one_or_none()
        if target is None:
            raise NotFound(f"organization {org!r} not found")
    assert target is not None
    access.check(Permission.AUDIT_READ, org=target, shown=f"organization {target.name!r}")
    return target.id


@router.get("/events", response_model=Page[EventOut], summary="List audit events")
def list_events(
    access: Annotated[Access, requires(Permission.AUDIT_READ)],
    org: OrgParam = None,
    system: SystemParam = False,
    since: Annotated[dt.datetime | None, Query(description="only events at or after")] = None,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[EventOut]:
    chain = _chain(access, org, system)
    after = decode_cursor(cursor, int) or 0
    query = (
        select(AuditEvent)
        .where(AuditEvent.chain == chain, AuditEvent.seq > after)
        .order_by(AuditEvent.seq)
        .limit(limit + 1)
    )
    if since is not None:
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        query = query.where(AuditEvent.time >= since.astimezone(dt.UTC).isoformat())
    with access.cp.db.read() as session:
        rows = list(session.execute(query).scalars())
    more = len(rows) > limit
    rows = rows[:limit]

    items = [
        EventOut(
            chain=r.chain,
            seq=r.seq,
            time=r.time,
            actor=r.actor,
            token_id=r.token_id,
            action=r.action,
            target=r.target,
            outcome=r.outcome,
            request_id=r.request_id,
            client_addr=r.client_addr,
            detail=json.loads(r.detail),
            prev_hash=r.prev_hash,
            hash=r.hash,
        )
        for r in rows
    ]
    return Page(items=items, next_cursor=encode_cursor(rows[-1].seq) if more else None)


@router.get("/checkpoints", response_model=list[CheckpointOut], summary="Signed checkpoints")
def list_checkpoints(
    access: Annotated[Access, requires(Permission.AUDIT_READ)],
    org: OrgParam = None,
    system: SystemParam = False,
) -> list[CheckpointOut]:
    chain = _chain(access, org, system)
    with access.cp.db.read() as session:
        return [CheckpointOut(**c.__dict__) for c in load_checkpoints(session, chain)]


@router.get(
    "/public-key",
    response_class=PlainTextResponse,
    summary="The Ed25519 public key that signs checkpoints (PEM)",
)
def public_key(access: Annotated[Access, requires(Permission.AUDIT_READ)]) -> str:
    return access.cp.audit_public_pem.decode()


@router.get("/verify", response_model=VerifyOut, summary="Verify a chain on the server")
def verify(
    access: Annotated[Access, requires(Permission.AUDIT_READ)],
    org: OrgParam = None,
    system: SystemParam = False,
) -> VerifyOut:
    chain = _chain(access, org, system)
    key = public_key_from_pem(access.cp.audit_public_pem)
    with access.cp.db.read() as session:
        result = verify_stored_chain(session, chain, key)
    return VerifyOut(**result.as_dict())

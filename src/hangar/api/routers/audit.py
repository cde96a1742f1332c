"""The audit trail: events, signed checkpoints, the public key, verification."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Query
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.pagination import Limit, Page, decode_cursor, page_of
from hangar.audit.chain import SYSTEM_CHAIN, Checkpoint, Event, VerifyResult
from hangar.audit.log import load_checkpoints, row_to_event, verify_stored_chain
from hangar.auth.rbac import Permission
from hangar.crypto.signing import public_key_from_pem
from hangar.errors import NotFound, PermissionDenied, ValidationError
from hangar.store.tables import AuditEvent, Org

router = GuardedRouter(prefix="/v1/audit", tags=["audit"])

OrgParam = Annotated[str | None, Query(max_length=63, description="organization name")]
SystemParam = Annotated[bool, Query(description="the installation's own chain (operators)")]


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


@router.get("/events", response_model=Page[Event], summary="List audit events")
def list_events(
    access: Annotated[Access, requires(Permission.AUDIT_READ)],
    org: OrgParam = None,
    system: SystemParam = False,
    since: Annotated[dt.datetime | None, Query(description="only events at or after")] = None,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[Event]:
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
    return page_of(rows, limit, row_to_event, lambda r: r.seq)


@router.get("/checkpoints", response_model=list[Checkpoint], summary="Signed checkpoints")
def list_checkpoints(
    access: Annotated[Access, requires(Permission.AUDIT_READ)],
    org: OrgParam = None,
    system: SystemParam = False,
) -> list[Checkpoint]:
    chain = _chain(access, org, system)
    with access.cp.db.read() as session:
        return load_checkpoints(session, chain)


@router.get(
    "/public-key",
    response_class=PlainTextResponse,
    summary="The Ed25519 public key that signs checkpoints (PEM)",
)
def public_key(access: Annotated[Access, requires(Permission.AUDIT_READ)]) -> str:
    return access.cp.audit_public_pem.decode()


@router.get("/verify", response_model=VerifyResult, summary="Verify a chain on the server")
def verify(
    access: Annotated[Access, requires(Permission.AUDIT_READ)],
    org: OrgParam = None,
    system: SystemParam = False,
) -> VerifyResult:
    chain = _chain(access, org, system)
    key = public_key_from_pem(access.cp.audit_public_pem)
    with access.cp.db.read() as session:
        return verify_stored_chain(session, chain, key)

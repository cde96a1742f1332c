"""The audit trail: events, signed checkpoints, the public key, verification."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Query
from fastapi.responses import PlainTextResponse

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.pagination import Limit, Page, decode_cursor, page_of
from hangar.audit.chain import SYSTEM_CHAIN, Checkpoint, Event, VerifyResult
from hangar.audit.log import row_to_event
from hangar.auth.rbac import Permission
from hangar.controlplane import audit_trail, orgs

router = GuardedRouter(prefix="/v1/audit", tags=["audit"])

OrgParam = Annotated[str | None, Query(max_length=63, description="organization name")]
SystemParam = Annotated[bool, Query(description="the installation's own chain (operators)")]


def _chain(access: Access, org: str | None, system: bool) -> str:
    """Which chain the caller asked for, after checking they may read it."""
    principal = access.principal
    if system:
        # An operator's, through a token with no org or apps caveat and the read action.
        access.check(Permission.AUDIT_SYSTEM_READ, org=None, shown="the system audit chain")
        return SYSTEM_CHAIN
    target = orgs.named_or_only(
        access.cp,
        org,
        principal.visible_orgs(),
        ask="say which organization's audit trail",
        hint="pass --org NAME (or --system)",
    )
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
    rows = audit_trail.list_events(access.cp, chain, after=after, since=since, limit=limit + 1)
    return page_of(rows, limit, row_to_event, lambda r: r.seq)


@router.get("/checkpoints", response_model=list[Checkpoint], summary="Signed checkpoints")
def list_checkpoints(
    access: Annotated[Access, requires(Permission.AUDIT_READ)],
    org: OrgParam = None,
    system: SystemParam = False,
) -> list[Checkpoint]:
    return audit_trail.checkpoints(access.cp, _chain(access, org, system))


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
    return audit_trail.verify(access.cp, _chain(access, org, system))

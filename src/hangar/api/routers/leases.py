"""Leases on an app's machines: take one, release it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.routers.machines import Nonce
from hangar.auth.rbac import Permission
from hangar.controlplane.leases import release_lease as release
from hangar.controlplane.leases import take_lease as take

router = GuardedRouter(prefix="/v1/apps/{app}", tags=["machines"])


class LeaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: int = Field(default=30, ge=1, le=3600)


class LeaseOut(BaseModel):
    nonce: str = Field(description="send as the Hangar-Lease-Nonce header; shown only now")
    owner: str
    expires_at: dt.datetime


@router.post(
    "/machines/{machine_id}/lease",
    response_model=LeaseOut,
    status_code=201,
    summary="Take a lease: only its holder may change the machine until it expires",
)
def take_lease(
    app: str,
    machine_id: str,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
    body: LeaseIn | None = None,
    nonce: Nonce = "",
) -> LeaseOut:
    assert access.app is not None
    ttl = (body or LeaseIn()).ttl
    lease = take(access.cp, access.ctx, access.app, machine_id, nonce=nonce, ttl=ttl)
    return LeaseOut(nonce=lease.nonce, owner=lease.owner, expires_at=lease.expires_at)


@router.delete("/machines/{machine_id}/lease", status_code=204, summary="Release a lease")
def release_lease(
    app: str,
    machine_id: str,
    access: Annotated[Access, requires(Permission.MACHINES_CONTROL)],
    nonce: Nonce = "",
) -> None:
    assert access.app is not None
    release(access.cp, access.ctx, access.app, machine_id, nonce=nonce)

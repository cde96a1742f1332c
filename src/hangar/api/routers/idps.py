"""The installation's identity providers: operators add, list and remove them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import idps, mfapolicy
from hangar.store.tables import IdentityProvider

router = GuardedRouter(prefix="/v1/idps", tags=["idps"])


class IdpOut(BaseModel):
    name: str
    issuer: str
    client_id: str
    client_secret: str = Field(description='"set" or "none": the secret itself is never shown')
    scopes: list[str]
    groups_claim: str
    created_by: str
    created_at: dt.datetime


class IdpCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    issuer: str = Field(min_length=8, max_length=500)
    client_id: str = Field(min_length=1, max_length=255)
    client_secret: str | None = Field(default=None, min_length=1, max_length=1024)
    scopes: list[str] = Field(default_factory=lambda: ["email", "profile"], max_length=16)
    groups_claim: str = Field(default="groups", min_length=1, max_length=64)


def _out(row: IdentityProvider) -> IdpOut:
    return IdpOut(
        name=row.name,
        issuer=row.issuer,
        client_id=row.client_id,
        client_secret="set" if row.client_secret else "none",
        scopes=row.scopes.split(),
        groups_claim=row.groups_claim,
        created_by=row.created_by,
        created_at=row.created_at,
    )


@router.get("", response_model=list[IdpOut], summary="List identity providers")
def list_idps(access: Annotated[Access, requires(Permission.IDPS_READ)]) -> list[IdpOut]:
    return [_out(r) for r in idps.list_idps(access.cp)]


@router.post("", response_model=IdpOut, status_code=201, summary="Add an identity provider")
def add_idp(body: IdpCreate, access: Annotated[Access, requires(Permission.IDPS_WRITE)]) -> IdpOut:
    # A provider vouches for people: adding or removing one (which forgets
    # its links) is a sensitive installation-wide action, like a KEK rotation.
    mfapolicy.enforce_step_up(access.cp, access.ctx, access.principal, org=None, action="idps.add")
    row = idps.add_idp(
        access.cp,
        access.ctx,
        name=body.name,
        issuer=body.issuer,
        client_id=body.client_id,
        client_secret=body.client_secret,
        scopes=body.scopes,
        groups_claim=body.groups_claim,
    )
    return _out(row)


@router.delete("/{name}", status_code=204, summary="Remove an identity provider")
def remove_idp(name: str, access: Annotated[Access, requires(Permission.IDPS_WRITE)]) -> None:
    mfapolicy.enforce_step_up(
        access.cp, access.ctx, access.principal, org=None, action="idps.remove"
    )
    idps.remove_idp(access.cp, access.ctx, name)

"""Apps: created in an organization, named by a DNS label unique per installation."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.pagination import Limit, Page, decode_cursor, page_of
from hangar.auth.rbac import Permission
from hangar.controlplane import apps, orgs
from hangar.domain.names import AppName, DnsLabel, PlainText
from hangar.store.tables import Org

router = GuardedRouter(prefix="/v1/apps", tags=["apps"])


class AppOut(BaseModel):
    id: str
    name: str
    org: str
    created_at: dt.datetime
    network: str = Field(description="the private network its machines join")


class AppCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: AppName
    org: Annotated[PlainText, Field(min_length=1, max_length=63)] | None = None
    network: DnsLabel = Field(
        default="default",
        min_length=1,
        max_length=63,
        description="a private network of the organization (made on first use); its machines"
        " reach only machines of the same network",
    )


def _resolve_org(access: Access, name: str | None) -> Org:
    """The named organization, or the caller's only one; 404 if not visible."""
    return orgs.named_or_only(
        access.cp,
        name,
        access.principal.visible_orgs(),
        ask="you belong to several organizations: say which one",
        hint="pass --org NAME",
    )


@router.get("", response_model=Page[AppOut], summary="List apps")
async def list_apps(
    access: Annotated[Access, requires(Permission.APPS_READ)],
    org: Annotated[str | None, Query(max_length=63)] = None,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[AppOut]:
    after = decode_cursor(cursor, str)
    if org is not None:
        target = _resolve_org(access, org)
        access.check(Permission.APPS_READ, org=target, shown=f"organization {org!r}")
        org_ids = [target.id]
    else:
        org_ids = access.principal.visible_orgs()
    rows = apps.list_apps(access.cp, org_ids, access.principal.scope.apps, after, limit + 1)
    return page_of(
        rows,
        limit,
        lambda r: AppOut(id=r[0], name=r[1], org=r[2], created_at=r[3], network=r[4]),
        lambda r: r[1],
    )


@router.post("", response_model=AppOut, status_code=201, summary="Create an app")
async def create_app(
    body: AppCreate, access: Annotated[Access, requires(Permission.APPS_CREATE)]
) -> AppOut:
    name, network = body.name, body.network
    org = _resolve_org(access, body.org)
    access.check(Permission.APPS_CREATE, org=org, shown=f"organization {org.name!r}")
    app = apps.create_app(
        access.cp, access.ctx, org, name, network=network, creator=access.principal.user_id
    )
    return AppOut(id=app.id, name=name, org=org.name, created_at=app.created_at, network=network)


@router.get("/{app}", response_model=AppOut, summary="Show an app")
def show_app(app: str, access: Annotated[Access, requires(Permission.APPS_READ)]) -> AppOut:
    assert access.app is not None and access.org is not None
    return AppOut(
        id=access.app.id,
        name=access.app.name,
        org=access.org.name,
        created_at=access.app.created_at,
        network=access.app.network,
    )


@router.delete("/{app}", status_code=204, summary="Destroy an app")
def destroy_app(app: str, access: Annotated[Access, requires(Permission.APPS_DELETE)]) -> None:
    assert access.app is not None
    apps.destroy_app(access.cp, access.ctx, access.app)

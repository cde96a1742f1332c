"""Apps: created in an organization, named by a DNS label unique per installation."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, delete, select

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.pagination import Limit, Page, decode_cursor, page_of
from hangar.auth.rbac import Permission
from hangar.auth.tokens import new_id
from hangar.controlplane.machines import org_network
from hangar.domain.names import validate_dns_label
from hangar.errors import Conflict, NotFound, ValidationError
from hangar.store.tables import App, AppKey, Certificate, Machine, Org, Release, Secret

router = GuardedRouter(prefix="/v1/apps", tags=["apps"])


# Built once: listing apps is the hottest read, and building a statement per
# request costs more than running it.
_LIST = (
    select(App.id, App.name, Org.name, App.created_at, App.network)
    .join(Org, Org.id == App.org_id)
    .where(App.org_id.in_(bindparam("orgs", expanding=True)), App.name > bindparam("after"))
    .order_by(App.name)
    .limit(bindparam("limit"))
)
_LIST_SOME = _LIST.where(App.name.in_(bindparam("apps", expanding=True)))


class AppOut(BaseModel):
    id: str
    name: str
    org: str
    created_at: dt.datetime
    network: str = Field(description="the private network its machines join")


class AppCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    org: str | None = Field(default=None, min_length=1, max_length=63)
    network: str = Field(
        default="default",
        min_length=1,
        max_length=63,
        description="a private network of the organization (made on first use); its machines"
        " reach only machines of the same network",
    )


def _resolve_org(access: Access, name: str | None) -> Org:
    """The named organization, or the caller's only one; 404 if not visible."""
    with access.cp.db.read() as session:
        if name is not None:
            org = session.execute(select(Org).where(Org.name == name)).scalar_one_or_none()
            if org is None:
                raise NotFound(f"organization {name!r} not found")
            return org
        visible = access.principal.visible_orgs()
        if len(visible) != 1:
            raise ValidationError(
                "you belong to several organizations: say which one",
                hint="pass --org NAME",
            )
        org = session.get(Org, visible[0])
        assert org is not None
        return org


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
    apps = access.principal.scope.apps
    params = {"orgs": org_ids, "after": after or "", "limit": limit + 1}
    with access.cp.db.connect() as conn:
        if apps is None:
            rows = conn.execute(_LIST, params).all()
        else:
            rows = conn.execute(_LIST_SOME, {**params, "apps": sorted(apps)}).all()
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
    name = validate_dns_label(body.name, what="app name")
    network = validate_dns_label(body.network, what="network name")
    org = _resolve_org(access, body.org)
    access.check(Permission.APPS_CREATE, org=org, shown=f"organization {org.name!r}")
    now = dt.datetime.now(dt.UTC)
    with access.cp.db.write() as session:
        if session.execute(select(App.id).where(App.name == name)).first():
            raise Conflict(
                f"app name {name!r} is taken",
                hint="app names are unique per installation; choose another",
            )
        app = App(
            id=new_id("app"),
            org_id=org.id,
            name=name,
            created_by=access.principal.user_id,
            created_at=now,
            network=network,
        )
        session.add(app)
        # The network exists (with its address space) from the first app that names it.
        org_network(session, org.id, network)
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=org.id,
            action="app.create",
            target=name,
            detail={"network": network},
        )
    return AppOut(id=app.id, name=name, org=org.name, created_at=now, network=network)


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
    assert access.app is not None and access.org is not None
    with access.cp.db.write() as session:
        row = session.get(App, access.app.id)
        if row is None:
            raise NotFound(f"app {app!r} not found")
        # Its machines' rows go; agents then remove the machines as unassigned.
        session.execute(delete(Machine).where(Machine.app_id == row.id))
        session.execute(delete(Release).where(Release.app_id == row.id))
        # Secrets and their data keys go with the app: nothing can read them after.
        session.execute(delete(Secret).where(Secret.app_id == row.id))
        session.execute(delete(AppKey).where(AppKey.app_id == row.id))
        # Its host names are free again; their keys go with their rows.
        session.execute(delete(Certificate).where(Certificate.app_id == row.id))
        session.delete(row)
        access.cp.audit.record(
            session, access.ctx, org_id=access.org.id, action="app.destroy", target=app
        )

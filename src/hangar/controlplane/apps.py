"""Apps: created in an organization, named by a DNS label unique per installation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

from sqlalchemy import Row, bindparam, delete, select

from hangar.audit.log import AuditContext
from hangar.auth.tokens import new_id
from hangar.controlplane.changes import change
from hangar.controlplane.machines import org_network
from hangar.controlplane.state import ControlPlane
from hangar.domain.names import validate_app_name, validate_dns_label
from hangar.errors import Conflict, NotFound
from hangar.store.tables import (
    App,
    AppKey,
    Certificate,
    Machine,
    Org,
    Release,
    Secret,
    SecretVersion,
    SecretVersionValue,
    Volume,
)

__all__ = ["create_app", "destroy_app", "find_app", "list_apps"]

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


def list_apps(
    cp: ControlPlane,
    org_ids: Sequence[str],
    apps: Collection[str] | None,
    after: str | None,
    limit: int,
) -> Sequence[Row[str, str, str, dt.datetime, str]]:
    """(id, name, org name, created, network) of up to ``limit`` apps named after ``after``.

    Only the organizations ``org_ids``, and of their apps only ``apps`` unless None.
    """
    params = {"orgs": list(org_ids), "after": after or "", "limit": limit}
    with cp.db.connect() as conn:
        if apps is None:
            return conn.execute(_LIST, params).all()
        return conn.execute(_LIST_SOME, {**params, "apps": sorted(apps)}).all()


def find_app(cp: ControlPlane, org: Org, name: str) -> App:
    """The organization's app named ``name``; NotFound if it has none."""
    with cp.db.read() as session:
        app = session.execute(
            select(App).where(App.name == name, App.org_id == org.id)
        ).scalar_one_or_none()
    if app is None:
        raise NotFound(f"app {name!r} not found")
    return app


def create_app(
    cp: ControlPlane, ctx: AuditContext, org: Org, name: str, *, network: str, creator: str
) -> App:
    """A new app on the organization's private network ``network`` (made on first use)."""
    validate_app_name(name)
    validate_dns_label(network, what="network name")
    with change(
        cp,
        ctx,
        org_id=org.id,
        action="app.create",
        target=name,
        detail={"network": network},
        wake=False,
    ) as (session, _):
        if session.execute(select(App.id).where(App.name == name)).first():
            raise Conflict(
                f"app name {name!r} is taken",
                hint="app names are unique per installation; choose another",
            )
        app = App(
            id=new_id("app"),
            org_id=org.id,
            name=name,
            created_by=creator,
            created_at=dt.datetime.now(dt.UTC),
            network=network,
        )
        session.add(app)
        # The network exists (with its address space) from the first app that names it.
        org_network(session, org.id, network)
    return app


def destroy_app(cp: ControlPlane, ctx: AuditContext, app: App) -> None:
    """The app and all that is its: machines, releases, secrets (every version) and their
    keys, host names, volumes and their keys."""
    with change(cp, ctx, org_id=app.org_id, action="app.destroy", target=app.name) as (
        session,
        event,
    ):
        row = session.get(App, app.id)
        if row is None:
            raise NotFound(f"app {app.name!r} not found")
        # The volumes shredded with it, each named in the audit trail.
        shredded = session.execute(
            select(Volume.id, Volume.name).where(
                Volume.app_id == row.id, Volume.state != "destroyed"
            )
        ).all()
        event.detail = {"volumes_shredded": sorted(f"{name}/{vid}" for vid, name in shredded)}
        # Its machines' rows go; agents then remove the machines as unassigned.
        session.execute(delete(Machine).where(Machine.app_id == row.id))
        session.execute(delete(Release).where(Release.app_id == row.id))
        # Secrets and their data keys go with the app: nothing can read them after.
        session.execute(delete(Secret).where(Secret.app_id == row.id))
        session.execute(delete(SecretVersionValue).where(SecretVersionValue.app_id == row.id))
        session.execute(delete(SecretVersion).where(SecretVersion.app_id == row.id))
        session.execute(delete(AppKey).where(AppKey.app_id == row.id))
        # Its host names are free again; their keys go with their rows.
        session.execute(delete(Certificate).where(Certificate.app_id == row.id))
        # Its volumes go with their keys (crypto-shredded); hosts then delete the files.
        session.execute(delete(Volume).where(Volume.app_id == row.id))
        session.delete(row)

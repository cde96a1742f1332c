"""Releases: deploy one, list them, the live one, and roll the live one out again."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.config.appconfig import AppConfig
from hangar.controlplane.changes import change
from hangar.controlplane.images import resolve_image
from hangar.controlplane.machines import create_release, get_release, release_config
from hangar.controlplane.routes import check_service_ports, reserved_ports
from hangar.controlplane.state import ControlPlane
from hangar.errors import Conflict, ValidationError
from hangar.store.tables import App, Release

__all__ = [
    "busy_release",
    "deploy",
    "list_releases",
    "live_release",
    "roll_out",
    "show_release",
]


def live_release(session: Session, app_id: str) -> Release | None:
    """The newest release that completed: what the app's machines run."""
    return session.execute(
        select(Release)
        .where(Release.app_id == app_id, Release.status == "complete")
        .order_by(Release.version.desc())
        .limit(1)
    ).scalar_one_or_none()


def busy_release(session: Session, app_id: str) -> None:
    """Conflict if a deploy is under way (a secrets rollout would collide with it)."""
    running = session.execute(
        select(Release.version).where(
            Release.app_id == app_id, Release.status.in_(("pending", "running"))
        )
    ).first()
    if running is not None:
        raise Conflict(
            f"release v{running[0]} is deploying",
            hint="wait for it, or stage the change with --stage and deploy it later",
        )


def roll_out(session: Session, app: App, *, actor: str) -> Release | None:
    """A release of the live image and configuration, so machines restart with the
    deployed secrets (health-gated, rolling back like any deploy). None if nothing is live.
    """
    live = live_release(session, app.id)
    if live is None:
        return None
    return create_release(
        session,
        app,
        image=live.image,
        image_digest=live.image_digest,
        config=release_config(live),
        strategy=None,
        actor=actor,
    )


def deploy(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    *,
    image: str,
    config: AppConfig,
    strategy: str | None,
) -> Release:
    """A new pending release of ``image`` with ``config``; the deployer rolls it out.

    The configuration is checked before the image is fetched (nothing to undo
    then), and again in the transaction that creates the release.
    """
    if config.app != app.name:
        raise ValidationError(f"hangar.toml is for app {config.app!r}, not {app.name!r}")
    reserved = reserved_ports(cp.settings)
    with cp.db.read() as session:
        check_service_ports(session, app, config, reserved)
    with (
        resolve_image(cp, app.org_id, image) as (layout, digest),
        change(cp, ctx, org_id=app.org_id, action="release.create") as (session, event),
    ):
        row = session.get(App, app.id)
        assert row is not None
        check_service_ports(session, row, config, reserved)
        release = create_release(
            session,
            row,
            image=layout,
            image_digest=digest,
            config=config,
            strategy=strategy,
            actor=ctx.actor,
        )
        event.target = f"{app.name} v{release.version}"
        event.detail = {
            "image": image,
            "layout": layout,
            "digest": digest,
            "strategy": release.strategy,
        }
    return release


def list_releases(cp: ControlPlane, app_id: str, limit: int) -> list[Release]:
    """The app's releases, newest first."""
    with cp.db.read() as session:
        return list(
            session.execute(
                select(Release)
                .where(Release.app_id == app_id)
                .order_by(Release.version.desc())
                .limit(limit)
            ).scalars()
        )


def show_release(cp: ControlPlane, app_id: str, version: int) -> Release:
    with cp.db.read() as session:
        return get_release(session, app_id, version)

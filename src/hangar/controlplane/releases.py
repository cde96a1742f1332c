"""Releases: deploy one, list them, the live one, roll it out again, roll back to an earlier one.

A rollback is a new release made of an earlier one's image (by its manifest
digest), configuration and secrets version, rolled out by the same strategies
as any deploy: its machines receive the values the earlier release ran with.
It leaves the app's current secrets as they are, so the next deploy or
secrets change uses the newest version again.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.config.appconfig import AppConfig
from hangar.controlplane.changes import change
from hangar.controlplane.images import resolve_image
from hangar.controlplane.machines import create_release, get_release, release_config
from hangar.controlplane.routes import check_service_ports, reserved_ports
from hangar.controlplane.secretversions import version_exists
from hangar.controlplane.state import ControlPlane
from hangar.errors import Conflict, NotFound, ValidationError
from hangar.store.tables import App, Release

__all__ = [
    "busy_release",
    "check_edge_watch",
    "deploy",
    "list_releases",
    "live_release",
    "roll_out",
    "rollback",
    "rollback_target",
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


def check_edge_watch(cp: ControlPlane, config: AppConfig, strategy: str | None) -> None:
    """ValidationError unless a release with ``max_error_rate`` can be acted on here.

    A blue-green watches the edge on the control plane's own host after its
    switch; without a blue-green, or without that edge, the key would do nothing.
    """
    if config.deploy.max_error_rate is None:
        return
    if (strategy or config.deploy.strategy) != "bluegreen":
        raise ValidationError(
            "[deploy] max_error_rate needs a blue-green deploy: it switches back to the old"
            " set it keeps",
            hint="deploy with --strategy bluegreen, or remove max_error_rate",
        )
    if cp.local is None or cp.local.edge() is None:
        raise ValidationError(
            "[deploy] max_error_rate needs the edge on the control plane's host,"
            " which this server does not run",
            hint="remove max_error_rate, or run the server with its edge",
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
    check_edge_watch(cp, config, strategy)
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


def rollback_target(session: Session, app: App, version: int | None) -> Release:
    """The release a rollback deploys again: ``version``, or the one before the live one.

    Only a release that completed (it ran, and passed its checks) qualifies,
    and never the one running now.
    """
    live = live_release(session, app.id)
    if live is None:
        raise Conflict(f"app {app.name} has no live release to roll back from")
    if version is None:
        target = session.execute(
            select(Release)
            .where(
                Release.app_id == app.id,
                Release.status == "complete",
                Release.version < live.version,
            )
            .order_by(Release.version.desc())
            .limit(1)
        ).scalar_one_or_none()
        if target is None:
            raise Conflict(
                f"v{live.version} of {app.name} is its first completed release:"
                " there is nothing earlier to roll back to"
            )
        return target
    target = session.execute(
        select(Release).where(Release.app_id == app.id, Release.version == version)
    ).scalar_one_or_none()
    if target is None:
        raise NotFound(f"app {app.name} has no release v{version}", hint="see `hangar releases`")
    if target.version == live.version:
        raise Conflict(f"v{version} is what {app.name} runs now")
    if target.status != "complete":
        raise Conflict(
            f"v{version} never completed ({target.status}): only a release that ran and"
            " passed its checks can be rolled back to"
        )
    return target


def _check_secrets_kept(session: Session, app: App, target: Release) -> None:
    version = target.secrets_version
    if version is not None and not version_exists(session, app.id, version):
        raise Conflict(
            f"v{target.version} ran with secrets version {version}, which {app.name} no"
            " longer keeps",
            hint="deploy its image again with the secrets set as they should be",
        )


def rollback(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    *,
    version: int | None,
    strategy: str | None,
) -> tuple[Release, int]:
    """A new release of an earlier one's image digest, configuration and secrets
    version: (release, of version).

    The image must still be in the organization's store, by the digest the
    release pinned, and its secrets version must still be kept.
    """
    with cp.db.read() as session:
        row = session.get(App, app.id)
        assert row is not None
        target = rollback_target(session, row, version)
        config = release_config(target)
        if target.image_digest is None:
            raise Conflict(f"v{target.version} pinned no image digest; deploy its image again")
        digest, of = target.image_digest, target.version
        _check_secrets_kept(session, row, target)
    check_edge_watch(cp, config, strategy)
    reserved = reserved_ports(cp.settings)
    with cp.db.read() as session:
        check_service_ports(session, app, config, reserved)
    with (
        resolve_image(cp, app.org_id, digest) as (layout, resolved),
        change(cp, ctx, org_id=app.org_id, action="release.rollback") as (session, event),
    ):
        if resolved != digest:
            raise Conflict(f"the image of v{of} is no longer {digest}")
        row = session.get(App, app.id)
        assert row is not None
        target = rollback_target(session, row, of)  # still there, still complete
        _check_secrets_kept(session, row, target)
        check_service_ports(session, row, config, reserved)
        release = create_release(
            session,
            row,
            image=layout,
            image_digest=digest,
            config=config,
            strategy=strategy,
            actor=ctx.actor,
            secrets_version=target.secrets_version,
        )
        release.detail = json.dumps({"rollback_of": of})
        event.target = f"{app.name} v{release.version}"
        event.detail = {
            "of": of,
            "digest": digest,
            "strategy": release.strategy,
            "secrets_version": target.secrets_version,
        }
    return release, of

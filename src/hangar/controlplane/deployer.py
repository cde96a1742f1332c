"""The deployer: rolls releases out to machines, health-gated, and rolls back.

``step`` advances one release by one move and is idempotent: its progress
lives in the release row, so a control plane killed mid-deploy resumes (or
rolls back) where it was. Per release:

1. pending: remember the version running now; an app with no machines gets
   its first one (at the new version);
2. running: wait until the current batch runs the new version, started and
   healthy (every check passing, if the app has checks); then move the next
   batch: every machine for ``immediate``, ``max_unavailable`` of them for
   ``rolling``;
3. a batch that fails (a machine fails, or ``wait_timeout`` passes) puts the
   previous version back on every machine the release touched, and the
   release is ``failed``; when no machine is left on an old version, it is
   ``complete``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shlex
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext, AuditLog
from hangar.config.appconfig import AppConfig
from hangar.controlplane.machines import (
    active_machines,
    create_machine,
    machine_memory,
    release_config,
)
from hangar.store.tables import App, Machine, Release

__all__ = ["DEPLOYER", "step", "step_all"]

log = logging.getLogger("hangar.deployer")
DEPLOYER = AuditContext(actor="deployer", token_id=None, request_id=None, client_addr=None)


def _batch_ready(machine: Machine, version: int, needs_health: bool) -> bool:
    return (
        machine.running_version == version
        and machine.state == "started"
        and (machine.healthy is True if needs_health else machine.healthy is not False)
    )


def _finish(
    session: Session,
    audit: AuditLog,
    app: App,
    release: Release,
    status: str,
    detail: dict[str, Any],
    reason: str = "",
) -> None:
    release.status = status
    release.finished_at = dt.datetime.now(dt.UTC)
    detail["reason"] = reason
    release.detail = json.dumps(detail)
    audit.record(
        session,
        DEPLOYER,
        org_id=app.org_id,
        action=f"release.{status}",
        target=f"{app.name} v{release.version}",
        outcome="success" if status == "complete" else "failure",
        detail={"reason": reason} if reason else {},
    )
    log.info("%s v%d %s %s", app.name, release.version, status, reason)


def step(session: Session, audit: AuditLog, release: Release, now: float) -> None:
    app = session.get(App, release.app_id)
    assert app is not None
    cfg = release_config(release)
    detail: dict[str, Any] = json.loads(release.detail or "{}")
    needs_health = bool(
        (cfg.http_service and cfg.http_service.checks)
        or cfg.checks
        or any(s.tcp_checks or s.http_checks for s in cfg.services)
    )
    machines = active_machines(session, app.id)

    if release.status == "pending" and cfg.deploy.release_command:
        if not _release_command_done(session, audit, app, release, detail, cfg, now):
            return
        detail = {}
    if release.status == "pending":
        previous = session.execute(
            select(Release.version)
            .where(Release.app_id == app.id, Release.status == "complete")
            .order_by(Release.version.desc())
            .limit(1)
        ).scalar_one_or_none()
        detail = {"previous": previous, "touched": [], "batch": [], "batch_started": now}
        if not machines:
            machine = create_machine(
                session, app, release.version, cfg.primary_region, memory_mb=machine_memory(cfg)
            )
            detail["touched"] = detail["batch"] = [machine.id]
        release.status = "running"
        release.detail = json.dumps(detail)
        audit.record(
            session,
            DEPLOYER,
            org_id=app.org_id,
            action="release.start",
            target=f"{app.name} v{release.version}",
            detail={"strategy": release.strategy, "image": release.image},
        )
        return

    batch = [m for m in machines if m.id in detail.get("batch", [])]
    if batch:
        if all(_batch_ready(m, release.version, needs_health) for m in batch):
            detail["batch"] = []
        else:
            failed = [m for m in batch if m.state == "failed"]
            waited = now - float(detail.get("batch_started", now))
            if failed or waited > cfg.deploy.wait_timeout:
                _roll_back(session, audit, app, release, detail, machines, failed, waited)
                return
            release.detail = json.dumps(detail)
            return

    remaining = [m for m in machines if m.version != release.version]
    if not remaining:
        _finish(session, audit, app, release, "complete", detail)
        return
    # A leased machine is someone else's to drive until the lease ends.
    now_dt = dt.datetime.now(dt.UTC)
    remaining = [m for m in remaining if m.lease_expires_at is None or m.lease_expires_at <= now_dt]
    if not remaining:
        release.detail = json.dumps(detail)
        return
    if release.strategy == "immediate":
        size = len(remaining)
    else:
        unavailable = cfg.deploy.max_unavailable
        size = max(
            1, math.ceil(unavailable * len(machines)) if unavailable < 1 else int(unavailable)
        )
    for machine in remaining[:size]:
        machine.version = release.version
        machine.memory_mb = machine_memory(cfg)
        machine.desired = "started"
        detail["touched"].append(machine.id)
    detail["batch"] = [m.id for m in remaining[:size]]
    detail["batch_started"] = now
    release.detail = json.dumps(detail)


def _release_command_done(
    session: Session,
    audit: AuditLog,
    app: App,
    release: Release,
    detail: dict[str, Any],
    cfg: AppConfig,
    now: float,
) -> bool:
    """Run release_command once in a one-off machine; True once it exited 0.

    Any other exit (or no exit within wait_timeout) fails the release before
    a single machine is replaced.
    """
    assert cfg.deploy.release_command is not None
    machine_id = detail.get("release_machine")
    if machine_id is None:
        made = create_machine(
            session,
            app,
            release.version,
            cfg.primary_region,
            image=release.image,
            image_digest=release.image_digest,
            args=shlex.split(cfg.deploy.release_command),
            memory_mb=machine_memory(cfg),
        )
        release.detail = json.dumps({"release_machine": made.id, "release_started": now})
        audit.record(
            session,
            DEPLOYER,
            org_id=app.org_id,
            action="release.command",
            target=f"{app.name} v{release.version}",
            detail={"machine": made.id, "command": cfg.deploy.release_command},
        )
        return False
    machine = session.get(Machine, machine_id)
    waited = now - float(detail.get("release_started", now))
    if machine is not None and machine.state not in ("stopped", "failed"):
        if waited <= cfg.deploy.wait_timeout:
            return False
        reason = f"release_command did not finish within {waited:.0f}s"
    elif machine is not None and machine.state == "stopped" and machine.exit_code == 0:
        machine.desired = "destroyed"
        return True
    elif machine is None:
        reason = "release_command's machine disappeared"
    else:
        reason = (
            f"release_command exited {machine.exit_code}"
            if machine.exit_code is not None
            else f"release_command could not run: {machine.detail}"
        )
        reason += f" (see `hangar logs -m {machine.id}`)"
    if machine is not None:
        machine.desired = "destroyed"
    _finish(session, audit, app, release, "failed", detail, reason)
    return False


def _roll_back(
    session: Session,
    audit: AuditLog,
    app: App,
    release: Release,
    detail: dict[str, Any],
    machines: list[Machine],
    failed: list[Machine],
    waited: float,
) -> None:
    previous = detail.get("previous")
    for machine in machines:
        if machine.id not in detail["touched"]:
            continue
        if previous is None:
            machine.desired = "destroyed"  # a first deploy has nothing to go back to
        else:
            machine.version = previous
    if failed:
        first = failed[0]
        reason = f"machine {first.id} failed: {first.detail or f'exit {first.exit_code}'}"
    else:
        reason = f"machines were not healthy within {waited:.0f}s"
    rolled = f"; rolled back to v{previous}" if previous is not None else ""
    _finish(session, audit, app, release, "failed", detail, reason + rolled)


def step_all(session: Session, audit: AuditLog, now: float) -> int:
    """Advance every unfinished release by one move; returns how many there were."""
    releases = list(
        session.execute(
            select(Release)
            .where(Release.status.in_(("pending", "running")))
            .order_by(Release.created_at)
        ).scalars()
    )
    for release in releases:
        step(session, audit, release, now)
    return len(releases)

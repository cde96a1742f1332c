"""The deployer: applies ``domain.deploys``' plans to the store, one move per release a tick.

``step`` loads a release and its app's machines, turns the rows into the
planner's plain data, asks ``domain.deploys.plan`` for the next move and
does it in the session: it makes and updates machine rows and records the
audit events (``release.command``, ``release.start``, ``release.complete``,
``release.failed``). The rules (batches, health gates, rollback) live in the
planner; this module only reads and writes.

A release's progress is kept in its ``detail`` column as JSON, so a control
plane killed mid-deploy resumes (or rolls back) where it was:
``{"release_machine", "release_started"}`` while its release command runs,
then ``{"previous", "touched", "batch", "batch_started"}`` (with
``"draining"``/``"drain_started"`` while machines leave rotation,
``"standby"``/``"retired"``/``"switched_at"`` for a blue-green, and
``"failure"``/``"rollback_started"`` while it rolls back), ``"phase"``, what
it is doing in words, and ``"reason"`` once it is finished.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shlex
from collections.abc import Callable
from typing import Any, assert_never

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
from hangar.domain import deploys
from hangar.store.tables import App, Machine, MachineEvent, Release
from hangar.telemetry.metrics import RELEASES, ROLLBACKS

__all__ = ["DEPLOYER", "EdgeCounts", "held_out", "step", "step_all"]

log = logging.getLogger("hangar.deployer")
DEPLOYER = AuditContext(actor="deployer", token_id=None, request_id=None, client_addr=None)


def _needs_health(cfg: AppConfig) -> bool:
    return bool(
        (cfg.http_service and cfg.http_service.checks)
        or cfg.checks
        or any(s.tcp_checks or s.http_checks for s in cfg.services)
    )


def _timestamp(when: dt.datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


def _machine(row: Machine) -> deploys.Machine:
    return deploys.Machine(
        id=row.id,
        version=row.version,
        desired=row.desired,
        state=row.state,
        healthy=row.healthy,
        running_version=row.running_version,
        exit_code=row.exit_code,
        detail=row.detail,
        one_off=row.one_off,
        lease_expires_at=_timestamp(row.lease_expires_at),
    )


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


def _counts(value: Any) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if value is not None else None


EdgeCounts = Callable[[str], tuple[int, int] | None]
"""The edge's (responses, 5xx) for an app so far, by app name; None if it cannot say."""


def _rollout(detail: dict[str, Any]) -> deploys.Rollout:
    return deploys.Rollout(
        previous=detail.get("previous"),
        touched=tuple(detail.get("touched", ())),
        batch=tuple(detail.get("batch", ())),
        batch_started_at=_float(detail.get("batch_started")),
        draining=tuple(detail.get("draining", ())),
        drain_started_at=_float(detail.get("drain_started")),
        standby=tuple(detail.get("standby", ())),
        retired=tuple(detail.get("retired", ())),
        switched_at=_float(detail.get("switched_at")),
        edge_at_switch=_counts(detail.get("edge_at_switch")),
        failure=str(detail.get("failure", "")),
        rollback_started_at=_float(detail.get("rollback_started")),
    )


def held_out(row: Release) -> frozenset[str]:
    """Machines this release keeps out of the edge's rotation now (none once it finished)."""
    if row.status != deploys.ReleaseStatus.RUNNING:
        return frozenset()
    return deploys.out_of_rotation(_rollout(json.loads(row.detail or "{}")))


def _release(
    row: Release,
    cfg: AppConfig,
    detail: dict[str, Any],
    previous: int | None,
    edge_counts: tuple[int, int] | None = None,
) -> deploys.Release:
    command = None
    if cfg.deploy.release_command is not None:
        started = detail.get("release_started")
        command = deploys.ReleaseCommand(
            cfg.deploy.release_command,
            machine_id=detail.get("release_machine"),
            started_at=float(started) if started is not None else None,
        )
    rollout = _rollout(detail) if row.status == deploys.ReleaseStatus.RUNNING else None
    unavailable = cfg.deploy.max_unavailable
    percent = None
    if isinstance(unavailable, str):
        percent, unavailable = float(unavailable.rstrip("%")), 1.0
    return deploys.Release(
        version=row.version,
        strategy=row.strategy,
        status=deploys.ReleaseStatus(row.status),
        max_unavailable=unavailable,
        max_unavailable_percent=percent,
        wait_timeout=cfg.deploy.wait_timeout,
        drain_timeout=cfg.deploy.drain_timeout,
        bluegreen_grace=cfg.deploy.bluegreen_grace,
        max_error_rate=cfg.deploy.max_error_rate,
        error_window=cfg.deploy.error_window,
        edge_counts=edge_counts,
        needs_health=_needs_health(cfg),
        command=command,
        previous=previous,
        rollout=rollout,
    )


def _live_version(session: Session, app: App) -> int | None:
    return session.execute(
        select(Release.version)
        .where(Release.app_id == app.id, Release.status == "complete")
        .order_by(Release.version.desc())
        .limit(1)
    ).scalar_one_or_none()


def _watching_edge(row: Release, cfg: AppConfig, detail: dict[str, Any]) -> bool:
    return (
        cfg.deploy.max_error_rate is not None
        and row.status == deploys.ReleaseStatus.RUNNING
        and row.strategy == "bluegreen"
        and detail.get("rollback_started") is None
    )


def step(
    session: Session,
    audit: AuditLog,
    release: Release,
    now: float,
    edge: EdgeCounts | None = None,
) -> None:
    """Plan the release's next move and do it. ``edge``: the edge's counts, for a
    blue-green that watches them after its switch."""
    app = session.get(App, release.app_id)
    assert app is not None
    cfg = release_config(release)
    detail: dict[str, Any] = json.loads(release.detail or "{}")
    rows = active_machines(session, app.id)
    pending = release.status == deploys.ReleaseStatus.PENDING
    command_id = detail.get("release_machine") if pending else None
    command_row = session.get(Machine, command_id) if command_id is not None else None
    if command_row is not None and command_row not in rows:
        rows = [*rows, command_row]
    previous = _live_version(session, app) if pending else None
    counts = edge(app.name) if edge is not None and _watching_edge(release, cfg, detail) else None
    planned = deploys.plan(
        _release(release, cfg, detail, previous, counts), [_machine(m) for m in rows], now
    )
    _Apply(session, audit, app, release, cfg, detail, now, counts).run(planned)


class _Apply:
    """Does one plan's actions against the session; ``detail`` is the release's progress."""

    def __init__(
        self,
        session: Session,
        audit: AuditLog,
        app: App,
        release: Release,
        cfg: AppConfig,
        detail: dict[str, Any],
        now: float,
        edge_counts: tuple[int, int] | None = None,
    ) -> None:
        self.session, self.audit, self.app, self.release = session, audit, app, release
        self.cfg, self.detail, self.now = cfg, detail, now
        self.edge_counts = edge_counts

    def run(self, planned: deploys.DeployPlan) -> None:
        before = json.dumps(self.detail)
        for action in planned.actions:
            self.do(action)
        if self.release.status not in deploys.FINISHED:
            self.detail["phase"] = deploys.phase(
                _release(self.release, self.cfg, self.detail, None)
            )
        if self.release.status not in deploys.FINISHED and json.dumps(self.detail) != before:
            self.release.detail = json.dumps(self.detail)

    def do(self, action: deploys.Action) -> None:
        match action:
            case deploys.RunReleaseCommand(command=command):
                self._run_release_command(command)
            case deploys.DestroyMachine(machine_id=machine_id):
                self._row(machine_id).desired = "destroyed"
            case deploys.StartRelease(previous=previous):
                self._start(previous)
            case deploys.CreateMachine(version=version):
                machine = create_machine(
                    self.session,
                    self.app,
                    version,
                    self.cfg.primary_region,
                    memory_mb=machine_memory(self.cfg),
                    mounts=[m.source for m in self.cfg.mounts],
                )
                self.detail["touched"] = [*self.detail["touched"], machine.id]
                self.detail["batch"] = [machine.id]
            case deploys.CreateStandby(count=count, version=version):
                made = [
                    create_machine(
                        self.session,
                        self.app,
                        version,
                        self.cfg.primary_region,
                        memory_mb=machine_memory(self.cfg),
                        mounts=[m.source for m in self.cfg.mounts],
                    ).id
                    for _ in range(count)
                ]
                self.detail["touched"] = [*self.detail["touched"], *made]
                self.detail["standby"] = made
                self.detail["batch"] = made
                self.detail["batch_started"] = self.now
            case deploys.DrainMachines(machine_ids=ids):
                for machine_id in ids:
                    self._event(machine_id, "drain", "out of rotation")
                self.detail["draining"] = list(ids)
                self.detail["drain_started"] = self.now
            case deploys.Switch(retired=retired):
                self.detail["retired"] = list(retired)
                self.detail["switched_at"] = self.now
                if self.edge_counts is not None:
                    self.detail["edge_at_switch"] = list(self.edge_counts)
                self._record("release.switch", {"retired": list(retired)})
            case deploys.SwitchBack(machine_ids=ids, reason=reason):
                # The old set serves again in this very change; the new set goes.
                self.detail["retired"] = []
                self.detail["failure"] = reason
                self.detail["rollback_started"] = self.now
                self._record("release.switch_back", {"reason": reason})
                for machine_id in ids:
                    self._row(machine_id).desired = "destroyed"
            case deploys.BatchDone():
                self.detail["batch"] = []
            case deploys.UpdateMachines(machine_ids=ids, version=version):
                for machine_id in ids:
                    machine = self._row(machine_id)
                    machine.version = version
                    self._event(machine_id, "release", f"to v{version}")
                    machine.memory_mb = machine_memory(self.cfg)
                    machine.desired = "started"
                    self.detail["touched"].append(machine_id)
                self.detail["batch"] = list(ids)
                self.detail["batch_started"] = self.now
                self.detail["draining"] = []
            case deploys.RollBack(machine_ids=ids, version=version, reason=reason):
                self.detail["failure"] = reason
                self.detail["rollback_started"] = self.now
                self.detail["batch"] = []
                self.detail["draining"] = []
                self._record("release.rollback", {"reason": reason, "to": version})
                for machine_id in ids:
                    machine = self._row(machine_id)
                    if version is None:
                        machine.desired = "destroyed"  # a first deploy has nothing to go back to
                    else:
                        machine.version = version
                        self._event(machine_id, "rollback", f"to v{version}")
                        ROLLBACKS.inc()
            case deploys.Revert(machine_ids=ids, version=version):
                for machine_id in ids:
                    machine = self._row(machine_id)
                    machine.version = version
                    self._event(machine_id, "rollback", f"to v{version}")
                    ROLLBACKS.inc()
                self.detail["draining"] = []
                self.detail["batch_started"] = self.now
            case deploys.MarkReleased():
                self._finish("complete", "")
            case deploys.Fail(reason=reason):
                self._finish("failed", reason)
            case deploys.Wait():
                pass
            case _:
                assert_never(action)

    def _row(self, machine_id: str) -> Machine:
        machine = self.session.get(Machine, machine_id)
        assert machine is not None, machine_id  # the plan names only machines it was given
        return machine

    def _run_release_command(self, command: str) -> None:
        """Run release_command once in a one-off machine of the new version."""
        made = create_machine(
            self.session,
            self.app,
            self.release.version,
            self.cfg.primary_region,
            image=self.release.image,
            image_digest=self.release.image_digest,
            args=shlex.split(command),
            memory_mb=machine_memory(self.cfg),
        )
        self.detail = {
            **{k: v for k, v in self.detail.items() if k == "rollback_of"},
            "release_machine": made.id,
            "release_started": self.now,
        }
        self._record("release.command", {"machine": made.id, "command": command})

    def _event(self, machine_id: str, kind: str, detail: str) -> None:
        """The machine's own history (`hangar machines events`) shows release moves too."""
        self.session.add(
            MachineEvent(
                machine_id=machine_id, time=dt.datetime.now(dt.UTC), kind=kind, detail=detail
            )
        )

    def _record(self, action: str, detail: dict[str, Any], outcome: str = "success") -> None:
        """The deployer's audit event for this release, in the step's transaction."""
        self.audit.record(
            self.session,
            DEPLOYER,
            org_id=self.app.org_id,
            action=action,
            target=f"{self.app.name} v{self.release.version}",
            outcome=outcome,
            detail=detail,
        )

    def _start(self, previous: int | None) -> None:
        rollback_of = self.detail.get("rollback_of")
        self.detail = {"previous": previous, "touched": [], "batch": [], "batch_started": self.now}
        if rollback_of is not None:
            self.detail["rollback_of"] = rollback_of  # `hangar releases` says what it is
        self.release.status = "running"
        self._record(
            "release.start", {"strategy": self.release.strategy, "image": self.release.image}
        )

    def _finish(self, status: str, reason: str) -> None:
        release, app = self.release, self.app
        release.status = status
        release.finished_at = dt.datetime.now(dt.UTC)
        self.detail["reason"] = reason
        self.detail["phase"] = "released" if status == "complete" else "failed"
        release.detail = json.dumps(self.detail)
        outcome = "success" if status == "complete" else "failure"
        self._record(f"release.{status}", {"reason": reason} if reason else {}, outcome)
        RELEASES.labels(status).inc()
        log.info("%s v%d %s %s", app.name, release.version, status, reason)


def step_all(session: Session, audit: AuditLog, now: float, edge: EdgeCounts | None = None) -> int:
    """Advance every unfinished release by one move; returns how many there were."""
    releases = list(
        session.execute(
            select(Release)
            .where(Release.status.in_(("pending", "running")))
            .order_by(Release.created_at)
        ).scalars()
    )
    for release in releases:
        step(session, audit, release, now, edge)
    return len(releases)

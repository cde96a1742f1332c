"""The agent's loop on the all-in-one host: assignments from the store, status back.

Each ``tick`` reads the machines assigned to this host (with their release's
image and configuration), reconciles them through the ``Reconciler``, runs
due health checks, and writes what it observed back: lifecycle state, the
version running, health, exit code. Desired state flows down and observed
state flows up; the agent never changes what is desired. (Agents on other
hosts will do the same over mutual TLS.)
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from sqlalchemy import select

from hangar.agent.health import CheckSpec
from hangar.agent.reconciler import Assignment, Reconciler
from hangar.config.appconfig import AppConfig
from hangar.controlplane.machines import release_config
from hangar.domain.reconcile import RestartPolicy
from hangar.store.db import Database
from hangar.store.tables import App, Host, Machine, MachineEvent, Release

__all__ = ["LocalAgent", "assignment_for"]

log = logging.getLogger("hangar.agent")


def _checks(cfg: AppConfig) -> list[CheckSpec]:
    checks: list[CheckSpec] = []
    if cfg.http_service is not None:
        for n, c in enumerate(cfg.http_service.checks):
            checks.append(
                CheckSpec(
                    f"http-{n}",
                    "http",
                    cfg.http_service.internal_port,
                    c.interval,
                    c.timeout,
                    c.grace_period,
                    c.method,
                    c.path,
                    dict(c.headers),
                )
            )
    for name, named in sorted(cfg.checks.items()):
        checks.append(
            CheckSpec(
                name,
                named.type,
                named.port,
                named.interval,
                named.timeout,
                named.grace_period,
                named.method,
                named.path,
                dict(named.headers),
            )
        )
    for service in cfg.services:
        for n, t in enumerate(service.tcp_checks):
            checks.append(
                CheckSpec(
                    f"tcp-{service.internal_port}-{n}",
                    "tcp",
                    service.internal_port,
                    t.interval,
                    t.timeout,
                    t.grace_period,
                )
            )
    return checks


def assignment_for(machine: Machine, app: App, release: Release | None) -> Assignment | None:
    """What the agent should run for ``machine``; None if it has nothing to run."""
    cfg = release_config(release) if release is not None else AppConfig(app=app.name)
    image = machine.image or (release.image if release is not None else None)
    if image is None:
        return None
    vm = cfg.vm[0] if cfg.vm else None
    restart = cfg.restart[0] if cfg.restart else None
    policy = RestartPolicy(restart.policy, restart.retries) if restart else RestartPolicy()
    return Assignment(
        machine_id=machine.id,
        app=app.name,
        version=machine.version,
        state=machine.desired,
        image=image,
        args=json.loads(machine.args) if machine.args else None,
        env=dict(cfg.env),
        cpus=vm.cpus if vm else 1,
        memory_mb=vm.memory if vm else 256,
        address=machine.address,
        restart=RestartPolicy("no") if machine.one_off else policy,
        kill_signal=machine.stop_signal or cfg.kill_signal,
        kill_timeout=machine.stop_timeout if machine.stop_timeout is not None else cfg.kill_timeout,
        checks=[] if machine.one_off else _checks(cfg),
        generation=machine.generation,
    )


class LocalAgent:
    def __init__(self, db: Database, reconciler: Reconciler, host_id: str) -> None:
        self.db = db
        self.reconciler = reconciler
        self.host_id = host_id

    def _assignments(self) -> list[Assignment]:
        with self.db.read() as session:
            rows = session.execute(
                select(Machine, App, Release)
                .join(App, App.id == Machine.app_id)
                .outerjoin(
                    Release,
                    (Release.app_id == Machine.app_id) & (Release.version == Machine.version),
                )
                .where(Machine.host_id == self.host_id)
            ).all()
        found = [assignment_for(m, a, r) for m, a, r in rows]
        return [a for a in found if a is not None]

    def tick(self, now: float) -> float | None:
        """One round; returns when something is next due (a check, a restart), if known."""
        assignments = self._assignments()
        outcomes = self.reconciler.reconcile(assignments, now)
        waits = [o.action.at for o in outcomes if o.action.at is not None]
        errors = {o.action.machine_id: o.error for o in outcomes if not o.ok}
        for machine_id, error in errors.items():
            log.warning("machine %s: %s", machine_id, error)
        self.reconciler.health.tick(now)
        self._report(errors)
        due = [t for t in (*waits, self.reconciler.health.next_due()) if t is not None]
        return min(due) if due else None

    def _report(self, errors: dict[str, str]) -> None:
        # Read the runtime's files before taking the store's write lock, so
        # API writes and the deployer never wait on this host's disk.
        with self.db.read() as session:
            ids = (
                session.execute(select(Machine.id).where(Machine.host_id == self.host_id))
                .scalars()
                .all()
            )
        infos = {machine_id: self.reconciler.describe(machine_id) for machine_id in ids}
        with self.db.write() as session:
            host = session.get(Host, self.host_id)
            if host is not None:
                host.last_seen = dt.datetime.now(dt.UTC)
            for machine in session.execute(
                select(Machine).where(Machine.id.in_(list(infos)))
            ).scalars():
                info = infos[machine.id]
                status = info["status"]
                if status == "absent" and machine.desired == "destroyed":
                    session.delete(machine)  # destroyed: nothing left on the host
                    continue
                if status == "running":
                    state = "started"
                elif status == "stopped":
                    state = "failed" if info.get("failed") else "stopped"
                else:
                    state = "failed" if machine.id in errors else "starting"
                if state != machine.state:
                    reason = errors.get(machine.id) or info.get("reason", "")
                    if not reason and state != "started" and info["exit_code"] is not None:
                        reason = f"exit {info['exit_code']}"
                    session.add(
                        MachineEvent(
                            machine_id=machine.id,
                            time=dt.datetime.now(dt.UTC),
                            kind=state,
                            detail=reason or "",
                        )
                    )
                changed = (state, info.get("version"), info["healthy"], info["exit_code"])
                if (
                    changed
                    != (machine.state, machine.running_version, machine.healthy, machine.exit_code)
                    or machine.id in errors
                ):
                    machine.state = state
                    machine.running_version = info.get("version") if status != "absent" else None
                    machine.healthy = info["healthy"]
                    machine.exit_code = info["exit_code"]
                    machine.detail = errors.get(machine.id) or info.get("reason", "") or ""
                    machine.updated_at = dt.datetime.now(dt.UTC)
                    if info["checks"]:
                        machine.detail = machine.detail or json.dumps(
                            [
                                {k: c[k] for k in ("name", "passing", "output")}
                                for c in info["checks"]
                            ]
                        )

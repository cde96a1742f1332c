"""What a host is told to run, and what it says back (control-plane side).

``host_assignments`` is a host's desired state: its machines, each with the
release's image (pinned by digest) and the configuration the agent needs.
``apply_report`` records what a host observed: lifecycle state, the version
running, health, exit code, and a machine event for each change of state.
The agent on the control plane's own host calls these in-process; agents of
other hosts reach them through the mutual-TLS agent API. A report can only
touch machines assigned to the host that sends it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.config.appconfig import AppConfig
from hangar.contract.assignments import Assignment, CheckSpec, MetricsTarget
from hangar.contract.names import Record
from hangar.controlplane.machines import observe_state, release_config
from hangar.controlplane.volumes import machine_mounts, release_machine
from hangar.domain.machines import MachineState
from hangar.domain.reconcile import RestartPolicy
from hangar.store.tables import App, Host, Machine, Release, Volume

DesiredState = Literal["started", "stopped", "destroyed"]

__all__ = [
    "apply_report",
    "assignment_for",
    "assignments_version",
    "dns_records",
    "host_assignments",
]


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


def _metrics(cfg: AppConfig) -> list[MetricsTarget]:
    tables = cfg.metrics if isinstance(cfg.metrics, list) else [cfg.metrics] if cfg.metrics else []
    return [MetricsTarget(t.port, t.path) for t in tables]


def assignment_for(
    machine: Machine, app: App, release: Release | None, volumes: Sequence[Volume] = ()
) -> Assignment | None:
    """What the agent should run for ``machine``; None if it has nothing to run.

    ``volumes``: those the machine holds (mounted as its release's ``[[mounts]]`` say).
    """
    cfg = release_config(release) if release is not None else AppConfig(app=app.name)
    image = machine.image or (release.image if release is not None else None)
    image_digest = release.image_digest if release is not None else None
    if image is None:
        return None
    vm = cfg.vm[0] if cfg.vm else None
    restart = cfg.restart[0] if cfg.restart else None
    policy = RestartPolicy(restart.policy, restart.retries) if restart else RestartPolicy()
    return Assignment(
        machine_id=machine.id,
        app=app.name,
        version=machine.version,
        state=cast(DesiredState, machine.desired),
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
        image_digest=machine.image_digest if machine.image else image_digest,
        files={f.guest_path: f.secret_name for f in cfg.files},
        egress=cfg.network.egress,
        org=app.org_id,
        metrics=[] if machine.one_off else _metrics(cfg),
        mounts=(
            []
            if machine.one_off
            else machine_mounts(volumes, [(m.source, m.destination) for m in cfg.mounts])
        ),
    )


def host_assignments(session: Session, host_id: str) -> list[Assignment]:
    rows = session.execute(
        select(Machine, App, Release)
        .join(App, App.id == Machine.app_id)
        .outerjoin(
            Release,
            (Release.app_id == Machine.app_id) & (Release.version == Machine.version),
        )
        .where(Machine.host_id == host_id)
        .order_by(Machine.id)
    ).all()
    held: dict[str, list[Volume]] = {}
    for volume in session.execute(
        select(Volume).where(
            Volume.host_id == host_id,
            Volume.machine_id.is_not(None),
            Volume.state != "destroyed",
        )
    ).scalars():
        held.setdefault(volume.machine_id or "", []).append(volume)
    found = [assignment_for(m, a, r, held.get(m.id, ())) for m, a, r in rows]
    return [a for a in found if a is not None]


def assignments_version(assignments: list[Assignment]) -> str:
    """A short digest of a host's desired state: it changes when anything in it does."""
    canonical = json.dumps([a.to_json() for a in assignments], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def apply_report(
    session: Session,
    host_id: str,
    infos: Mapping[str, Mapping[str, Any]],
    errors: Mapping[str, str],
) -> None:
    """Record a host's observations of its machines (others' machines are ignored)."""
    host = session.get(Host, host_id)
    if host is not None:
        host.last_seen = dt.datetime.now(dt.UTC)
    for machine in session.execute(
        select(Machine).where(Machine.id.in_(list(infos)), Machine.host_id == host_id)
    ).scalars():
        info = infos[machine.id]
        status = info["status"]
        if status == "absent" and machine.desired == "destroyed":
            session.delete(machine)  # destroyed: nothing left on the host
            release_machine(session, machine.id)  # its volumes are free for another
            continue
        if status == "running":
            state = MachineState.STARTED
        elif status == "stopped":
            state = MachineState.FAILED if info.get("failed") else MachineState.STOPPED
        elif machine.id in errors:
            state = MachineState.FAILED
        else:
            # Nothing on the host: on its way up, unless it is meant to be stopped.
            state = MachineState.STOPPED if machine.desired == "stopped" else MachineState.STARTING
        reason = errors.get(machine.id) or info.get("reason", "")
        if not reason and state != MachineState.STARTED and info["exit_code"] is not None:
            reason = f"exit {info['exit_code']}"
        changed = (state, info.get("version"), info["healthy"], info["exit_code"])
        if (
            changed != (machine.state, machine.running_version, machine.healthy, machine.exit_code)
            or machine.id in errors
        ):
            observe_state(session, machine, state, reason or "")
            machine.running_version = info.get("version") if status != "absent" else None
            machine.healthy = info["healthy"]
            machine.exit_code = info["exit_code"]
            machine.detail = errors.get(machine.id) or info.get("reason", "") or ""
            machine.updated_at = dt.datetime.now(dt.UTC)
            if info["checks"]:
                machine.detail = machine.detail or json.dumps(
                    [{k: c[k] for k in ("name", "passing", "output")} for c in info["checks"]]
                )


def dns_records(session: Session) -> list[Record]:
    """Every started machine, as .internal DNS names it (the resolver filters by network)."""
    rows = session.execute(
        select(Machine.id, Machine.address, App.name, Host.region)
        .join(App, App.id == Machine.app_id)
        .join(Host, Host.id == Machine.host_id)
        .where(
            Machine.desired == "started",
            Machine.state == "started",
            Machine.one_off.is_(False),
        )
    ).all()
    return [
        Record(app=app, region=region, machine_id=mid, address=ipaddress.IPv6Address(address))
        for mid, address, app, region in rows
    ]

"""Volumes' snapshots, forks, backups, restores and drills, as jobs their hosts do.

A person's request files a job for the volume's host (audited, in the same
transaction) and waits a bounded time for the host to report it; the host
takes pending jobs on its next round and does them off its loop. What a
job produced is recorded when the host reports it: a snapshot's row, a
backup's restic id and the organization's last successful backup (which
the "no backup for 26 hours" alert reads), a drill's evidence as an audit
event (time, sizes, outcome) an auditor can read.

The schedule (``due``) runs on the control plane's loop: a snapshot of each
ready volume once its last is a day old (kept 5 days unless its app says
otherwise, 1 to 60), and a backup of it when its organization's repository
is due (``every_hours``).

A fork or a restored backup is a new volume with the source volume's key,
wrapped again under the new volume's purpose: its data is the source's
ciphertext. So a destroyed volume (its key dropped) cannot be restored:
crypto-shredding reaches its backups too.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.auth.tokens import new_id
from hangar.backups.restic import check_subset
from hangar.contract.volumejobs import VolumeJob, VolumeJobResult
from hangar.controlplane.backups import open_repo
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane
from hangar.crypto.secretbox import seal
from hangar.crypto.volumekeys import open_volume_key, seal_keys, volume_key_purpose
from hangar.domain.volumes import check_volume_name
from hangar.errors import Conflict, HangarError, NotFound, ValidationError, WaitTimeout
from hangar.store.tables import (
    App,
    BackupRepoRow,
    Org,
    Volume,
    VolumeSnapshotPolicy,
    VolumeSnapshotRow,
)
from hangar.store.tables import VolumeJob as JobRow

__all__ = [
    "DEFAULT_KEEP_DAYS",
    "SCHEDULER",
    "check_export",
    "due",
    "finish",
    "new_volume_of",
    "policy_of",
    "request",
    "sealed_repository",
    "set_policy",
    "snapshots_of",
    "take_jobs",
    "wait",
]

DEFAULT_KEEP_DAYS = 5
MAX_KEEP_DAYS = 60
SNAPSHOT_EVERY = dt.timedelta(days=1)
MAX_PENDING_PER_ORG = 16
JOB_GIVE_UP = dt.timedelta(hours=12)
SCHEDULER = AuditContext(actor="backup-scheduler", token_id=None, request_id=None, client_addr=None)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _volume(session: Session, app: App, ref: str) -> Volume:
    from hangar.controlplane.volumes import _find

    volume = _find(session, app, ref)
    if volume.state == "destroyed" or volume.key_wrapped is None:
        raise NotFound(f"volume {ref!r} was destroyed: its key is gone, and its data with it")
    return volume


def _file(
    session: Session,
    volume: Volume,
    kind: str,
    actor: str,
    *,
    host_id: str = "",
    **params: Any,
) -> JobRow:
    pending = session.execute(
        select(JobRow.id).where(
            JobRow.org_id == volume.org_id, JobRow.state.in_(("pending", "running"))
        )
    ).all()
    if len(pending) >= MAX_PENDING_PER_ORG:
        raise Conflict(
            f"this organization already has {len(pending)} volume jobs waiting",
            hint="try again when they finish",
        )
    job = VolumeJob(id=new_id("job"), kind=kind, volume_id=volume.id, **params)  # type: ignore[arg-type]
    row = JobRow(
        id=job.id,
        org_id=volume.org_id,
        volume_id=volume.id,
        host_id=host_id or volume.host_id,
        kind=kind,
        params=json.dumps(job.to_json()),
        state="pending",
        created_by=actor,
        created_at=_now(),
    )
    session.add(row)
    return row


def _new_volume(
    session: Session,
    cp: ControlPlane,
    source: Volume,
    name: str,
    actor: str,
    host_name: str | None = None,
) -> Volume:
    """A new volume of the source's app, on its host (or ``host_name``, which must
    encrypt volumes the same way), sharing its key: its data is the source's ciphertext."""
    from hangar.controlplane.volumes import _pick_host

    check_volume_name(name)
    host_id = source.host_id
    if host_name is not None:
        host = _pick_host(session, host_name)
        if host.volume_backend != source.encryption:
            raise Conflict(
                f"host {host_name} encrypts volumes with {host.volume_backend}; this volume"
                f" is {source.encryption}",
                hint="restore onto a host with the same backend (`hangar hosts list`)",
            )
        host_id = host.id
    assert source.key_wrapped is not None
    key = open_volume_key(cp.keyring, source.id, source.key_wrapped)
    volume_id = new_id("vol")
    now = _now()
    volume = Volume(
        id=volume_id,
        org_id=source.org_id,
        app_id=source.app_id,
        name=name,
        host_id=host_id,
        size_mb=source.size_mb,
        encryption=source.encryption,
        key_wrapped=cp.keyring.wrap(key, purpose=volume_key_purpose(volume_id)),
        state="created",
        machine_id=None,
        created_by=actor,
        created_at=now,
        updated_at=now,
        destroyed_at=None,
    )
    session.add(volume)
    return volume


def _retention(session: Session, org_id: str) -> dict[str, Any]:
    repo = session.get(BackupRepoRow, org_id)
    if repo is None:
        return {}
    return {
        "keep_daily": repo.keep_daily,
        "keep_weekly": repo.keep_weekly,
        "keep_monthly": repo.keep_monthly,
    }


def request(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    ref: str,
    kind: str,
    *,
    snapshot_id: str = "",
    name: str = "",
    backup_id: str = "",
    read_data_subset: str = "",
    host_name: str | None = None,
) -> str:
    """File a job on the app's volume ``ref`` for its host; the job's id (audited)."""
    action = {
        "snapshot": "volume.snapshot.create",
        "restore": "volume.snapshot.restore",
        "fork": "volume.fork",
        "backup": "backups.run",
        "restore_backup": "backups.restore",
        "drill": "backups.drill.request",
        "export": "volume.snapshot.export",
    }[kind]
    if kind in ("backup", "restore_backup", "drill"):
        with cp.db.read() as session:
            if session.get(BackupRepoRow, app.org_id) is None:
                raise NotFound(
                    "this organization has no backup repository",
                    hint="hangar backups repo set rest:https://host/path",
                )
    with change(cp, ctx, org_id=app.org_id, action=action, target=f"{app.name}/{ref}") as (
        session,
        event,
    ):
        volume = _volume(session, app, ref)
        params: dict[str, Any] = {}
        if kind in ("restore", "fork", "export") or (kind == "backup" and snapshot_id):
            snap = session.get(VolumeSnapshotRow, snapshot_id)
            if snap is None or snap.volume_id != volume.id or snap.state != "ready":
                raise NotFound(f"snapshot {snapshot_id!r} of volume {ref!r} not found")
            params["snapshot_id"] = snapshot_id
        if kind == "restore" and volume.machine_id is not None:
            raise Conflict(
                f"volume {ref} is held by machine {volume.machine_id}",
                hint="stop or destroy the machine, then restore",
            )
        host_id = ""
        if kind in ("fork", "restore_backup"):
            # A fork copies the snapshot on the volume's host; a backup can land anywhere.
            target = host_name if kind == "restore_backup" else None
            new = _new_volume(session, cp, volume, name or volume.name, ctx.actor, target)
            params["new_volume_id"] = new.id
            host_id = new.host_id
            event.detail["new_volume"] = new.id
        if kind in ("restore_backup", "drill"):
            params["backup_id"] = backup_id or "latest"
        if kind == "drill":
            params["read_data_subset"] = check_subset(read_data_subset or "5%")
        if kind == "snapshot":
            params["reason"] = "manual"
        if kind in ("backup", "restore_backup", "drill"):
            params["org_tag"] = f"org:{app.org_id}"
        if kind == "backup":
            params.update(_retention(session, app.org_id))
        row = _file(session, volume, kind, ctx.actor, host_id=host_id, **params)
        if kind == "export":
            cp.exports.open(row.id)  # before the host can take it
        event.target = f"{app.name}/{volume.id}"
        event.detail.update({"job": row.id, **params})
        return row.id


def wait(cp: ControlPlane, job_id: str, *, timeout: float = 600.0) -> dict[str, Any]:
    """The finished job's result; WaitTimeout if its host has not finished in time
    (the job goes on: ``hangar volumes snapshots list`` shows it later)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        with cp.db.read() as session:
            row = session.get(JobRow, job_id)
            assert row is not None
            state, result, error = row.state, row.result, row.error
        if state == "done":
            return dict(json.loads(result or "{}"))
        if state == "failed":
            raise Conflict(f"the volume's host could not do it: {error}")
        if time.monotonic() > deadline:
            raise WaitTimeout(
                f"job {job_id} is still {state} on the volume's host",
                hint="it goes on; check again later",
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def sealed_repository(cp: ControlPlane, org_id: str, recipient: str, job_id: str) -> dict[str, str]:
    """The organization's repository secrets, sealed to a host's one-time key for one job."""
    repo = open_repo(cp, org_id).repo
    values = {
        "location": repo.location,
        "password": repo.password,
        "rest_user": repo.rest_user,
        "rest_password": repo.rest_password,
        "s3_key_id": repo.s3_key_id,
        "s3_secret": repo.s3_secret,
        "s3_region": repo.s3_region,
    }
    return seal(values, recipient, f"volume-job:{job_id}")


def check_export(cp: ControlPlane, host_id: str, job_id: str) -> None:
    """NotFound unless ``job_id`` is an export this host is running."""
    with cp.db.read() as session:
        row = session.get(JobRow, job_id)
        if row is None or row.host_id != host_id or row.kind != "export" or row.state != "running":
            raise NotFound(f"job {job_id} is not an export running on this host")


def take_jobs(
    cp: ControlPlane, ctx: AuditContext, host_id: str, recipient: str
) -> list[tuple[VolumeJob, dict[str, str] | None]]:
    """The host's pending jobs, marked running; those that reach the repository with
    its secrets sealed to ``recipient``, an export with the volume's key (audited)."""
    with cp.db.read() as session:
        # Asked every round: most rounds find nothing, and write nothing.
        if not session.execute(
            select(JobRow.id).where(JobRow.host_id == host_id, JobRow.state == "pending").limit(1)
        ).first():
            return []
    with cp.db.write() as session:
        rows = list(
            session.execute(
                select(JobRow)
                .where(JobRow.host_id == host_id, JobRow.state == "pending")
                .order_by(JobRow.created_at)
                .limit(8)
            ).scalars()
        )
        keys: dict[str, dict[str, str]] = {}
        for row in rows:
            row.state = "running"
            if row.kind != "export":
                continue
            volume = session.get(Volume, row.volume_id)
            if volume is None or volume.key_wrapped is None:
                row.state, row.error = "failed", "the volume was destroyed"
                continue
            key = open_volume_key(cp.keyring, volume.id, volume.key_wrapped)
            keys[row.id] = seal_keys({volume.id: key}, recipient, row.id)
            cp.audit.record(
                session,
                ctx,
                org_id=row.org_id,
                action="volume.deliver_keys",
                target=row.id,
                detail={"host": host_id, "volumes": [volume.id], "for": "export"},
            )
        taken = [
            (VolumeJob.from_json(json.loads(r.params)), r.org_id)
            for r in rows
            if r.state == "running"
        ]
    out: list[tuple[VolumeJob, dict[str, str] | None]] = []
    for job, org_id in taken:
        sealed = sealed_repository(cp, org_id, recipient, job.id) if job.needs_repository else None
        out.append((job, keys.get(job.id, sealed)))
    return out


def finish(cp: ControlPlane, ctx: AuditContext, host_id: str, done: VolumeJobResult) -> None:
    """Record what the host did (only the host the job was for may report it)."""
    now = _now()
    with cp.db.write() as session:
        row = session.get(JobRow, done.job_id)
        if row is None or row.host_id != host_id or row.state != "running":
            raise NotFound(f"job {done.job_id} is not running on this host")
        row.state = "done" if done.ok else "failed"
        row.result = json.dumps(done.result)[:65536]
        row.error = done.error or None
        row.finished_at = now
        job = VolumeJob.from_json(json.loads(row.params))
        volume = session.get(Volume, row.volume_id)
        assert volume is not None
        _apply(session, row, job, volume, done, now)
        detail: dict[str, Any] = {"job": row.id, "ok": done.ok}
        if done.error:
            detail["error"] = done.error[:500]
        if job.kind == "drill":
            detail.update(
                {
                    k: done.result.get(k)
                    for k in (
                        "backup_id",
                        "bytes",
                        "restore_seconds",
                        "check_ok",
                        "check_subset",
                        "check_seconds",
                        "expected_sha256",
                        "restored_sha256",
                    )
                }
            )
            detail["ok"] = done.ok and bool(done.result.get("ok"))
        elif job.kind == "backup":
            detail.update({k: done.result.get(k) for k in ("backup_id", "bytes", "added")})
        elif job.kind == "export":
            detail.update({"snapshot": job.snapshot_id, "bytes": done.result.get("bytes")})
            if not done.ok:
                cp.exports.fail(job.id, HangarError(done.error or "the export failed"))
        cp.audit.record(
            session,
            ctx,
            org_id=row.org_id,
            action=f"volume.job.{job.kind}",
            target=volume.id,
            outcome="success" if detail["ok"] else "failure",
            detail=detail,
        )
    cp.wake()


def _apply(
    session: Session,
    row: JobRow,
    job: VolumeJob,
    volume: Volume,
    done: VolumeJobResult,
    now: dt.datetime,
) -> None:
    result = done.result
    if job.kind in ("backup",):
        repo = session.get(BackupRepoRow, row.org_id)
        if repo is not None:
            repo.last_run_at = now
            repo.last_outcome = "success" if done.ok else "failure"
            if done.ok:
                repo.last_success_at = now
    if not done.ok:
        if job.kind in ("fork", "restore_backup") and job.new_volume_id:
            new = session.get(Volume, job.new_volume_id)
            if new is not None and new.state == "created":
                new.state, new.key_wrapped, new.destroyed_at = "destroyed", None, now
        return
    snapshot = result.get("snapshot") if job.kind == "backup" else result
    if job.kind in ("snapshot", "backup") and isinstance(snapshot, dict) and "sha256" in snapshot:
        if session.get(VolumeSnapshotRow, str(snapshot["id"])) is None:
            _add_snapshot(session, row, volume, snapshot)
        for pruned in result.get("pruned", []):
            snap = session.get(VolumeSnapshotRow, str(pruned))
            if snap is not None and snap.volume_id == volume.id:
                snap.state = "deleted"
    if job.kind == "backup":
        snap = session.get(VolumeSnapshotRow, job.snapshot_id or str(snapshot_id(result)))
        if snap is not None:
            snap.backup_id = str(result.get("backup_id", ""))[:64]
    elif job.kind in ("fork", "restore_backup"):
        new = session.get(Volume, job.new_volume_id)
        if new is not None:
            new.state = "ready"
            new.updated_at = now


def snapshot_id(result: dict[str, Any]) -> str:
    snapshot = result.get("snapshot")
    return str(snapshot.get("id", "")) if isinstance(snapshot, dict) else ""


def _add_snapshot(session: Session, row: JobRow, volume: Volume, result: dict[str, Any]) -> None:
    session.add(
        VolumeSnapshotRow(
            id=str(result["id"]),
            org_id=row.org_id,
            volume_id=volume.id,
            host_id=row.host_id,
            created_at=dt.datetime.fromisoformat(str(result["created_at"])),
            bytes=int(result["bytes"]),
            sha256=str(result["sha256"]),
            reason=str(result["reason"]),
            consistent=str(result["consistent"]),
            state="ready",
        )
    )


def new_volume_of(cp: ControlPlane, job_id: str) -> str:
    """The volume a fork or a restored backup made."""
    with cp.db.read() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        return VolumeJob.from_json(json.loads(row.params)).new_volume_id


def snapshots_of(cp: ControlPlane, app: App, ref: str) -> list[VolumeSnapshotRow]:
    with cp.db.read() as session:
        volume = _volume(session, app, ref)
        rows = list(
            session.execute(
                select(VolumeSnapshotRow)
                .where(VolumeSnapshotRow.volume_id == volume.id, VolumeSnapshotRow.state == "ready")
                .order_by(VolumeSnapshotRow.created_at.desc())
            ).scalars()
        )
        session.expunge_all()
        return rows


def set_policy(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    ref: str,
    *,
    scheduled: bool | None = None,
    keep_days: int | None = None,
) -> tuple[bool, int]:
    """Change a volume's snapshot schedule; (scheduled, keep_days) as they now are."""
    if keep_days is not None and not 1 <= keep_days <= MAX_KEEP_DAYS:
        raise ValidationError(f"snapshots are kept 1 to {MAX_KEEP_DAYS} days")
    with change(
        cp, ctx, org_id=app.org_id, action="volume.snapshot.schedule", target=f"{app.name}/{ref}"
    ) as (session, event):
        volume = _volume(session, app, ref)
        policy = session.get(VolumeSnapshotPolicy, volume.id)
        if policy is None:
            policy = VolumeSnapshotPolicy(
                volume_id=volume.id,
                scheduled=True,
                keep_days=DEFAULT_KEEP_DAYS,
                updated_by=ctx.actor,
                updated_at=_now(),
            )
            session.add(policy)
        if scheduled is not None:
            policy.scheduled = scheduled
        if keep_days is not None:
            policy.keep_days = keep_days
        policy.updated_by, policy.updated_at = ctx.actor, _now()
        event.target = f"{app.name}/{volume.id}"
        event.detail = {"scheduled": policy.scheduled, "keep_days": policy.keep_days}
        return policy.scheduled, policy.keep_days


def policy_of(cp: ControlPlane, app: App, ref: str) -> tuple[bool, int]:
    with cp.db.read() as session:
        volume = _volume(session, app, ref)
        policy = session.get(VolumeSnapshotPolicy, volume.id)
        if policy is None:
            return True, DEFAULT_KEEP_DAYS
        return policy.scheduled, policy.keep_days


def due(cp: ControlPlane, now: dt.datetime | None = None) -> list[str]:
    """File the scheduled jobs that are due: daily snapshots, and backups when an
    organization's repository is due. The ids filed."""
    now = now or _now()
    filed: list[str] = []
    with cp.db.write() as session:
        # A host that died with a job (or never came back for it) must not
        # hold its volume's schedule, nor its organization's slots, for ever.
        for job in session.execute(
            select(JobRow).where(JobRow.state.in_(("pending", "running")))
        ).scalars():
            if now - job.created_at > JOB_GIVE_UP:
                job.state, job.finished_at = "failed", now
                job.error = f"its host did not finish it within {JOB_GIVE_UP}"
                if job.kind in ("backup",):
                    repo = session.get(BackupRepoRow, job.org_id)
                    if repo is not None:
                        repo.last_run_at, repo.last_outcome = now, "failure"
        volumes = list(session.execute(select(Volume).where(Volume.state == "ready")).scalars())
        repos = {r.org_id: r for r in session.execute(select(BackupRepoRow)).scalars()}
        policies = {p.volume_id: p for p in session.execute(select(VolumeSnapshotPolicy)).scalars()}
        busy = {
            v
            for (v,) in session.execute(
                select(JobRow.volume_id).where(JobRow.state.in_(("pending", "running")))
            )
        }
        for volume in volumes:
            if volume.id in busy:
                continue
            last = session.execute(
                select(VolumeSnapshotRow)
                .where(VolumeSnapshotRow.volume_id == volume.id, VolumeSnapshotRow.state == "ready")
                .order_by(VolumeSnapshotRow.created_at.desc())
                .limit(1)
            ).scalar_one_or_none()
            repo = repos.get(volume.org_id)
            policy = policies.get(volume.id)
            scheduled = policy.scheduled if policy is not None else True
            keep_days = policy.keep_days if policy is not None else DEFAULT_KEEP_DAYS
            if scheduled and (last is None or now - last.created_at >= SNAPSHOT_EVERY):
                row = _file(
                    session,
                    volume,
                    "snapshot",
                    SCHEDULER.actor,
                    reason="schedule",
                    keep_days=keep_days,
                )
                filed.append(row.id)
            elif (
                last is not None
                and repo is not None
                and last.backup_id is None
                and (
                    repo.last_run_at is None
                    or now - repo.last_run_at >= dt.timedelta(hours=repo.every_hours)
                )
            ):
                row = _file(
                    session,
                    volume,
                    "backup",
                    SCHEDULER.actor,
                    snapshot_id=last.id,
                    org_tag=f"org:{volume.org_id}",
                    **_retention(session, volume.org_id),
                )
                filed.append(row.id)
    return filed


def org_for(cp: ControlPlane, org_id: str) -> Org:
    with cp.db.read() as session:
        org = session.get(Org, org_id)
        if org is None:
            raise NotFound("organization not found")
        session.expunge(org)
        return org

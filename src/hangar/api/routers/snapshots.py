"""A volume's snapshots, forks, backups, restores and drills (done by the volume's host)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Path
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import volumejobs

router = GuardedRouter(prefix="/v1/apps/{app}/volumes/{volume}", tags=["volumes", "backups"])

VolumeRef = Annotated[str, Path(max_length=64)]
SnapshotRef = Annotated[str, Path(pattern=r"^snap_[0-9a-z]{6,30}$")]
WAIT_SECONDS = 600.0


class SnapshotOut(BaseModel):
    id: str
    volume_id: str
    created_at: dt.datetime
    bytes: int
    sha256: str = Field(description="of the snapshot's ciphertext image")
    reason: str = Field(description="manual, schedule or backup")
    consistent: str = Field(description="frozen (taken in use, under fsfreeze) or unmounted")
    backup_id: str | None = Field(description="its restic snapshot, once backed up")


class ForkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    snapshot: str = Field(pattern=r"^snap_[0-9a-z]{6,30}$")
    name: str = Field(min_length=1, max_length=63, description="the new volume's name")


class RestoreBackupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backup: str = Field(default="latest", pattern=r"^latest$|^[0-9a-f]{8,64}$")
    name: str = Field(min_length=1, max_length=63, description="the new volume's name")
    host: str | None = Field(
        default=None, max_length=63, description="where the new volume lives (default: the same)"
    )


class DrillIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backup: str = Field(default="latest", pattern=r"^latest$|^[0-9a-f]{8,64}$")
    read_data_subset: str = Field(default="5%", max_length=16)


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scheduled: bool | None = Field(default=None, description="take a snapshot daily")
    keep_days: int | None = Field(default=None, ge=1, le=60, description="keep each 1-60 days")


class ScheduleOut(BaseModel):
    scheduled: bool
    keep_days: int


def _snapshots(access: Access, volume: str) -> list[SnapshotOut]:
    assert access.app is not None
    return [
        SnapshotOut(
            id=s.id,
            volume_id=s.volume_id,
            created_at=s.created_at,
            bytes=s.bytes,
            sha256=s.sha256,
            reason=s.reason,
            consistent=s.consistent,
            backup_id=s.backup_id,
        )
        for s in volumejobs.snapshots_of(access.cp, access.app, volume)
    ]


def _run(access: Access, volume: str, kind: str, **params: str) -> dict[str, Any]:
    assert access.app is not None
    job = volumejobs.request(access.cp, access.ctx, access.app, volume, kind, **params)
    return volumejobs.wait(access.cp, job, timeout=WAIT_SECONDS)


@router.get("/snapshots", response_model=list[SnapshotOut], summary="The volume's snapshots")
def list_snapshots(
    app: str, volume: VolumeRef, access: Annotated[Access, requires(Permission.VOLUMES_READ)]
) -> list[SnapshotOut]:
    return _snapshots(access, volume)


@router.post(
    "/snapshots", response_model=SnapshotOut, status_code=201, summary="Take a snapshot now"
)
def create_snapshot(
    app: str, volume: VolumeRef, access: Annotated[Access, requires(Permission.VOLUMES_WRITE)]
) -> SnapshotOut:
    made = _run(access, volume, "snapshot")
    return next(s for s in _snapshots(access, volume) if s.id == made["id"])


@router.post(
    "/snapshots/{snapshot}/restore",
    response_model=SnapshotOut,
    summary="Put the volume back as it was at a snapshot (no machine may hold it)",
)
def restore_snapshot(
    app: str,
    volume: VolumeRef,
    snapshot: SnapshotRef,
    access: Annotated[Access, requires(Permission.VOLUMES_DELETE)],
) -> SnapshotOut:
    _run(access, volume, "restore", snapshot_id=snapshot)
    return next(s for s in _snapshots(access, volume) if s.id == snapshot)


@router.post("/fork", status_code=201, summary="A new volume from a snapshot")
def fork(
    app: str,
    volume: VolumeRef,
    body: ForkIn,
    access: Annotated[Access, requires(Permission.VOLUMES_WRITE)],
) -> dict[str, Any]:
    assert access.app is not None
    job = volumejobs.request(
        access.cp, access.ctx, access.app, volume, "fork", snapshot_id=body.snapshot, name=body.name
    )
    done = volumejobs.wait(access.cp, job, timeout=WAIT_SECONDS)
    return {"volume": volumejobs.new_volume_of(access.cp, job), "snapshot": done.get("id")}


@router.post("/backups", status_code=201, summary="Back the volume up now (a fresh snapshot)")
def run_backup(
    app: str, volume: VolumeRef, access: Annotated[Access, requires(Permission.BACKUPS_RUN)]
) -> dict[str, Any]:
    return _run(access, volume, "backup")


@router.post("/backups/restore", status_code=201, summary="A backup of the volume as a new volume")
def restore_backup(
    app: str,
    volume: VolumeRef,
    body: RestoreBackupIn,
    access: Annotated[Access, requires(Permission.BACKUPS_WRITE)],
) -> dict[str, Any]:
    assert access.app is not None
    job = volumejobs.request(
        access.cp,
        access.ctx,
        access.app,
        volume,
        "restore_backup",
        backup_id=body.backup,
        name=body.name,
        host_name=body.host,
    )
    done = volumejobs.wait(access.cp, job, timeout=WAIT_SECONDS)
    return {"volume": volumejobs.new_volume_of(access.cp, job), "snapshot": done.get("id")}


@router.post("/backups/drill", summary="Restore the latest backup to scratch, verify, check")
def drill(
    app: str,
    volume: VolumeRef,
    body: DrillIn,
    access: Annotated[Access, requires(Permission.BACKUPS_RUN)],
) -> dict[str, Any]:
    return _run(
        access,
        volume,
        "drill",
        backup_id=body.backup,
        read_data_subset=body.read_data_subset,
    )


@router.get("/snapshot-schedule", response_model=ScheduleOut, summary="The snapshot schedule")
def show_schedule(
    app: str, volume: VolumeRef, access: Annotated[Access, requires(Permission.VOLUMES_READ)]
) -> ScheduleOut:
    assert access.app is not None
    scheduled, keep = volumejobs.policy_of(access.cp, access.app, volume)
    return ScheduleOut(scheduled=scheduled, keep_days=keep)


@router.put("/snapshot-schedule", response_model=ScheduleOut, summary="Change the schedule")
def set_schedule(
    app: str,
    volume: VolumeRef,
    body: ScheduleIn,
    access: Annotated[Access, requires(Permission.VOLUMES_WRITE)],
) -> ScheduleOut:
    assert access.app is not None
    scheduled, keep = volumejobs.set_policy(
        access.cp,
        access.ctx,
        access.app,
        volume,
        scheduled=body.scheduled,
        keep_days=body.keep_days,
    )
    return ScheduleOut(scheduled=scheduled, keep_days=keep)


@router.get(
    "/snapshots/{snapshot}/export",
    response_class=StreamingResponse,
    summary="The snapshot's files, decrypted on the volume's host, streamed as a tar",
    responses={200: {"content": {"application/x-tar": {}}, "description": "a tar stream"}},
)
def export(
    app: str,
    volume: VolumeRef,
    snapshot: SnapshotRef,
    access: Annotated[Access, requires(Permission.VOLUMES_EXPORT)],
) -> StreamingResponse:
    assert access.app is not None
    job = volumejobs.request(
        access.cp, access.ctx, access.app, volume, "export", snapshot_id=snapshot
    )
    chunks = access.cp.exports.read(job)
    # The first piece before the answer starts: a host that cannot do it is an
    # error the caller sees, not an empty tar.
    first = next(chunks, b"")

    def stream() -> Iterator[bytes]:
        if first:
            yield first
        yield from chunks

    return StreamingResponse(
        stream(),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{snapshot}.tar"'},
    )

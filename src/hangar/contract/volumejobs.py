"""Work on a volume's files that its host does, as it crosses between the control plane
and the host: snapshot, restore, fork, backup, restore a backup, drill, export.

``VolumeJob`` names the work; it never carries a key or a password. A job
that reaches the organization's restic repository comes with the
repository's secrets sealed to the one-time key the host sent when it asked
(``ControlPlaneLink.volume_jobs``); a job that needs a volume's key (a
restored backup lands as a new volume) gets none: the host mounts the new
volume later with the key the control plane delivers as for any volume.
An export, which decrypts a snapshot for a person, gets the volume's key
sealed the same way (its delivery audited), and uploads the tar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticError
from pydantic.dataclasses import dataclass

from hangar.contract.volumes import VOLUME_ID_PATTERN
from hangar.errors import ValidationError

__all__ = ["JOB_KINDS", "REPO_FIELDS", "VolumeJob", "VolumeJobResult"]

JOB_KINDS = ("snapshot", "restore", "fork", "backup", "restore_backup", "drill", "export")
Kind = Literal["snapshot", "restore", "fork", "backup", "restore_backup", "drill", "export"]
# The sealed repository's fields (every one a string).
REPO_FIELDS = (
    "location",
    "password",
    "rest_user",
    "rest_password",
    "s3_key_id",
    "s3_secret",
    "s3_region",
)
_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_STRICT)
class VolumeJob:
    id: str = Field(pattern=r"^job_[0-9a-z]{6,30}$")
    kind: Kind = Field()
    volume_id: str = Field(pattern=VOLUME_ID_PATTERN)
    snapshot_id: str = Field(default="", pattern=r"^$|^snap_[0-9a-z]{6,30}$")
    new_volume_id: str = Field(default="", pattern=r"^$|^vol_[0-9a-z]{6,30}$")
    backup_id: str = Field(default="", pattern=r"^$|^[0-9a-f]{8,64}$|^latest$")
    reason: Literal["manual", "schedule", "backup"] = "manual"
    keep_days: int = Field(default=0, ge=0, le=60)  # prune after a snapshot; 0: keep all
    read_data_subset: str = Field(default="", max_length=16)
    org_tag: str = Field(default="", max_length=40)
    # A backup's retention, applied to the volume's backups after it (all 0: none).
    keep_daily: int = Field(default=0, ge=0, le=366)
    keep_weekly: int = Field(default=0, ge=0, le=520)
    keep_monthly: int = Field(default=0, ge=0, le=120)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VolumeJob:
        try:
            return _JOB.validate_python(dict(data))
        except PydanticError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "job"
            raise ValidationError(f"malformed volume job: {where}: {first['msg']}") from exc

    @property
    def needs_repository(self) -> bool:
        return self.kind in ("backup", "restore_backup", "drill")


@dataclass(frozen=True, config=_STRICT)
class VolumeJobResult:
    job_id: str = Field(pattern=r"^job_[0-9a-z]{6,30}$")
    ok: bool = False
    error: str = Field(default="", max_length=4000)
    result: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VolumeJobResult:
        try:
            return _RESULT.validate_python(dict(data))
        except PydanticError as exc:
            raise ValidationError(f"malformed volume job result: {exc.errors()[0]['msg']}") from exc


_JOB = TypeAdapter(VolumeJob)
_RESULT = TypeAdapter(VolumeJobResult)

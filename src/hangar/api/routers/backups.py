"""An organization's backups: its restic repository, what is in it, checks (``hangar backups``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.backups.restic import Retention
from hangar.controlplane.backups import (
    RepoCredential,
    RepoOut,
    check_repo,
    get_repo,
    list_backups,
    set_repo,
)

router = GuardedRouter(prefix="/v1/orgs/{org}/backups", tags=["backups"])


class CredentialIn(BaseModel):
    """Write-only: kept wrapped by the key-encryption key, never shown again."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["basic", "s3"] = Field(
        description="basic (a REST server's user and password) or s3 (access key id, secret)"
    )
    user: str = Field(max_length=1024, description="the REST user, or the S3 access key id")
    secret: SecretStr = Field(max_length=1024, description="the password, or the S3 secret key")
    region: str = Field(default="", max_length=32, description="s3: the bucket's region")


class RetentionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    daily: int = Field(ge=0, le=366)
    weekly: int = Field(ge=0, le=520)
    monthly: int = Field(ge=0, le=120)


class RepoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        max_length=1000,
        description="rest:https://host/path, s3:https://host/bucket, or a name under the"
        " server's backup_local_root",
    )
    credential: CredentialIn | None = None
    retention: RetentionIn | None = Field(
        default=None, description="what `forget --prune` keeps after each backup"
    )
    every_hours: int | None = Field(default=None, ge=1, le=168, description="the schedule")


class RepoView(BaseModel):
    location: str
    kind: str
    auth: str | None = Field(description="the credential's kind; the credential is never shown")
    retention: RetentionIn
    every_hours: int
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
    last_run_at: dt.datetime | None
    last_success_at: dt.datetime | None
    last_outcome: str | None


class SnapshotView(BaseModel):
    id: str
    short_id: str
    time: str
    hostname: str
    tags: list[str]


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    read_data_subset: str = Field(
        default="", max_length=16, description="also read back this part of the data: 10%, 1/5"
    )


class CheckView(BaseModel):
    ok: bool
    detail: str


def _view(repo: RepoOut) -> RepoView:
    keep = repo.retention
    return RepoView(
        location=repo.location,
        kind=repo.kind,
        auth=repo.auth,
        retention=RetentionIn(daily=keep.daily, weekly=keep.weekly, monthly=keep.monthly),
        every_hours=repo.every_hours,
        created_by=repo.created_by,
        created_at=repo.created_at,
        updated_at=repo.updated_at,
        last_run_at=repo.last_run_at,
        last_success_at=repo.last_success_at,
        last_outcome=repo.last_outcome,
    )


@router.put("/repo", response_model=RepoView, summary="Set the organization's backup repository")
def put_repo(
    org: str, body: RepoIn, access: Annotated[Access, requires(Permission.BACKUPS_WRITE)]
) -> RepoView:
    assert access.org is not None
    cred = body.credential
    credential = (
        RepoCredential(cred.kind, cred.user, cred.secret.get_secret_value(), cred.region)
        if cred is not None
        else None
    )
    keep = body.retention
    retention = Retention(keep.daily, keep.weekly, keep.monthly) if keep is not None else None
    return _view(
        set_repo(
            access.cp,
            access.ctx,
            access.org,
            body.url,
            credential=credential,
            retention=retention,
            every_hours=body.every_hours,
        )
    )


@router.get("/repo", response_model=RepoView, summary="The organization's backup repository")
def show_repo(org: str, access: Annotated[Access, requires(Permission.BACKUPS_READ)]) -> RepoView:
    assert access.org is not None
    return _view(get_repo(access.cp, access.org))


@router.get("", response_model=list[SnapshotView], summary="The backups in the repository")
def index(
    org: str, access: Annotated[Access, requires(Permission.BACKUPS_READ)]
) -> list[SnapshotView]:
    assert access.org is not None
    return [
        SnapshotView(id=s.id, short_id=s.short_id, time=s.time, hostname=s.hostname, tags=s.tags)
        for s in list_backups(access.cp, access.org)
    ]


@router.post("/check", response_model=CheckView, summary="Check the repository (restic check)")
def check(
    org: str, body: CheckIn, access: Annotated[Access, requires(Permission.BACKUPS_RUN)]
) -> CheckView:
    assert access.org is not None
    result = check_repo(access.cp, access.ctx, access.org, read_data_subset=body.read_data_subset)
    return CheckView(ok=result.ok, detail=result.detail[-4000:])

"""An app's secrets: write-only. Names and digests come back, never values."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import secrets
from hangar.controlplane.secrets import SecretInfo, SecretsChange
from hangar.errors import ValidationError

router = GuardedRouter(prefix="/v1/apps/{app}/secrets", tags=["secrets"])


class SecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    value: str = Field(max_length=70_000)  # 64 KiB of UTF-8 is checked exactly later


class SecretsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secrets: list[SecretIn] = Field(min_length=1, max_length=1000)
    stage: bool = False


class SecretOut(BaseModel):
    name: str
    digest: str | None
    version: int = Field(description="this name's own version")
    status: str
    created_by: str
    created_at: dt.datetime
    secrets_version: int | None = Field(
        default=None,
        description="the app's current secrets version (every change to its deployed"
        " secrets makes the next one)",
    )


class ChangeOut(BaseModel):
    secrets: list[str]
    release: int | None = Field(description="the release that rolls the change out, if any")


def _out(info: SecretInfo, secrets_version: int | None = None) -> SecretOut:
    return SecretOut(
        secrets_version=secrets_version,
        name=info.name,
        digest=info.digest,
        version=info.version,
        status=info.status,
        created_by=info.created_by,
        created_at=info.created_at,
    )


@router.get(
    "",
    response_model=list[SecretOut],
    summary="Names, digests and versions, with the app's current secrets version (no values)",
)
def list_(
    app: str, access: Annotated[Access, requires(Permission.SECRETS_READ)]
) -> list[SecretOut]:
    assert access.app is not None
    infos, current = secrets.list_secrets(access.cp, access.app.id)
    return [_out(i, current) for i in infos]


def _changed(done: SecretsChange) -> ChangeOut:
    return ChangeOut(secrets=done.names, release=done.release)


@router.put(
    "",
    response_model=ChangeOut,
    summary="Set secrets atomically; unless staged, roll them out to the app's machines",
)
def set_(
    app: str,
    body: SecretsIn,
    access: Annotated[Access, requires(Permission.SECRETS_WRITE, step_up=True)],
) -> ChangeOut:
    assert access.app is not None
    values = [(secret.name, secret.value) for secret in body.secrets]
    return _changed(
        secrets.store_secrets(access.cp, access.ctx, access.app, values, stage=body.stage)
    )


@router.delete(
    "",
    response_model=ChangeOut,
    summary="Remove secrets (?name=A&name=B, or ?all=true); unless staged, roll it out",
)
def unset(
    app: str,
    access: Annotated[Access, requires(Permission.SECRETS_WRITE, step_up=True)],
    name: Annotated[list[str] | None, Query(max_length=1000)] = None,
    all: bool = False,
    stage: bool = False,
) -> ChangeOut:
    assert access.app is not None
    if all == bool(name):
        raise ValidationError("name the secrets to remove, or pass all=true")
    names = None if all else name
    return _changed(secrets.remove_secrets(access.cp, access.ctx, access.app, names, stage=stage))


@router.post("/deploy", response_model=ChangeOut, summary="Roll staged changes out")
def deploy(app: str, access: Annotated[Access, requires(Permission.SECRETS_WRITE)]) -> ChangeOut:
    assert access.app is not None
    return _changed(secrets.deploy_staged(access.cp, access.ctx, access.app))


class RotatedOut(BaseModel):
    key_version: int
    reencrypted: int


@router.post(
    "/rotate-key",
    response_model=RotatedOut,
    summary="A new data key for the app; every value re-encrypted, the old key deleted",
)
def rotate_key(
    app: str, access: Annotated[Access, requires(Permission.SECRETS_WRITE)]
) -> RotatedOut:
    assert access.app is not None
    version, count = secrets.rotate_key(access.cp, access.ctx, access.app)
    return RotatedOut(key_version=version, reencrypted=count)

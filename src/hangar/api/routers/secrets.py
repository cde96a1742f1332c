"""An app's secrets: write-only. Names and digests come back, never values."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Query, Request
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.loops import wake_loops
from hangar.auth.rbac import Permission
from hangar.controlplane.secrets import (
    SecretInfo,
    apply_staged,
    busy_release,
    list_secrets,
    roll_out,
    rotate_data_key,
    set_secrets,
    unset_secrets,
)
from hangar.errors import ValidationError
from hangar.store.tables import App

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
    version: int
    status: str
    created_by: str
    created_at: dt.datetime


class ChangeOut(BaseModel):
    secrets: list[str]
    release: int | None = Field(description="the release that rolls the change out, if any")


def _out(info: SecretInfo) -> SecretOut:
    return SecretOut(
        name=info.name,
        digest=info.digest,
        version=info.version,
        status=info.status,
        created_by=info.created_by,
        created_at=info.created_at,
    )


@router.get("", response_model=list[SecretOut], summary="Names, digests and versions (no values)")
def list_(
    app: str, access: Annotated[Access, requires(Permission.SECRETS_READ)]
) -> list[SecretOut]:
    assert access.app is not None
    with access.cp.db.read() as session:
        return [_out(i) for i in list_secrets(session, access.app.id)]


@router.put(
    "",
    response_model=ChangeOut,
    summary="Set secrets atomically; unless staged, roll them out to the app's machines",
)
def set_(
    app: str,
    body: SecretsIn,
    request: Request,
    access: Annotated[Access, requires(Permission.SECRETS_WRITE)],
) -> ChangeOut:
    assert access.app is not None and access.org is not None
    release = None
    with access.cp.db.write() as session:
        row = session.get(App, access.app.id)
        assert row is not None
        if not body.stage:
            busy_release(session, row.id)
        infos = set_secrets(
            session,
            access.cp.keyring,
            row,
            [(s.name, s.value) for s in body.secrets],
            stage=body.stage,
            actor=access.principal.email,
        )
        if not body.stage:
            release = roll_out(session, row, actor=access.principal.email)
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="secrets.set",
            target=app,
            detail={
                "secrets": {i.name: i.digest for i in infos},
                "staged": body.stage,
                "release": release.version if release else None,
            },
        )
    wake_loops(request)
    return ChangeOut(secrets=[i.name for i in infos], release=release.version if release else None)


@router.delete(
    "",
    response_model=ChangeOut,
    summary="Remove secrets (?name=A&name=B, or ?all=true); unless staged, roll it out",
)
def unset(
    app: str,
    request: Request,
    access: Annotated[Access, requires(Permission.SECRETS_WRITE)],
    name: Annotated[list[str] | None, Query(max_length=1000)] = None,
    all: bool = False,
    stage: bool = False,
) -> ChangeOut:
    assert access.app is not None and access.org is not None
    if all == bool(name):
        raise ValidationError("name the secrets to remove, or pass all=true")
    release = None
    with access.cp.db.write() as session:
        row = session.get(App, access.app.id)
        assert row is not None
        if not stage:
            busy_release(session, row.id)
        names = unset_secrets(
            session, row, None if all else name, stage=stage, actor=access.principal.email
        )
        if not stage and names:
            release = roll_out(session, row, actor=access.principal.email)
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="secrets.unset",
            target=app,
            detail={"names": names, "staged": stage},
        )
    wake_loops(request)
    return ChangeOut(secrets=names, release=release.version if release else None)


@router.post("/deploy", response_model=ChangeOut, summary="Roll staged changes out")
def deploy(
    app: str, request: Request, access: Annotated[Access, requires(Permission.SECRETS_WRITE)]
) -> ChangeOut:
    assert access.app is not None and access.org is not None
    with access.cp.db.write() as session:
        row = session.get(App, access.app.id)
        assert row is not None
        busy_release(session, row.id)
        names = apply_staged(session, row)
        release = roll_out(session, row, actor=access.principal.email) if names else None
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="secrets.deploy",
            target=app,
            detail={"names": names, "release": release.version if release else None},
        )
    wake_loops(request)
    return ChangeOut(secrets=names, release=release.version if release else None)


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
    assert access.app is not None and access.org is not None
    with access.cp.db.write() as session:
        row = session.get(App, access.app.id)
        assert row is not None
        version, count = rotate_data_key(session, access.cp.keyring, row)
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="secrets.rotate_key",
            target=app,
            detail={"key_version": version, "reencrypted": count},
        )
    return RotatedOut(key_version=version, reencrypted=count)

"""An app's volumes: create, list, show, extend, destroy. Keys never leave the server here."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import volumes
from hangar.controlplane.volumes import VolumeInfo
from hangar.domain.names import DnsLabel
from hangar.domain.volumes import format_size, parse_size

router = GuardedRouter(prefix="/v1/apps/{app}/volumes", tags=["volumes"])

VolumeRef = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_]*$")]
# A volume in a path: its id, or its name where the app has one volume of that name.
VolumePath = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_]*$")]
Size = Annotated[
    str,
    Field(
        min_length=1,
        max_length=16,
        description="1gb, 10gb, 512mb; a number alone is GB",
        examples=["1gb"],
    ),
]


class VolumeOut(BaseModel):
    id: str
    name: str
    app: str
    host: str = Field(description="the host it lives on; a machine mounting it runs there")
    size_mb: int
    size: str
    encryption: str = Field(description="luks2 (dm-crypt) or gocryptfs, as its host encrypts")
    state: str = Field(description="created, ready (its host made it) or destroyed")
    machine: str | None = Field(description="the machine holding it; null: free")
    created_at: dt.datetime
    updated_at: dt.datetime


class VolumeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: VolumeRef
    size: Size = "1gb"
    host: DnsLabel | None = Field(
        default=None, max_length=63, description="the host to make it on (default: chosen)"
    )


class VolumeExtend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: Size


class ExtendOut(VolumeOut):
    online: bool = Field(
        description="true: the host grows it while in use; false: it grows at the next "
        "start of the machine holding it"
    )


def _out(info: VolumeInfo) -> VolumeOut:
    return VolumeOut(
        id=info.id,
        name=info.name,
        app=info.app,
        host=info.host,
        size_mb=info.size_mb,
        size=format_size(info.size_mb),
        encryption=info.encryption,
        state=info.state,
        machine=info.machine,
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


@router.get("", response_model=list[VolumeOut], summary="The app's volumes")
def list_(
    app: str,
    access: Annotated[Access, requires(Permission.VOLUMES_READ)],
    all: Annotated[bool, Query(description="destroyed ones too")] = False,
) -> list[VolumeOut]:
    assert access.app is not None
    return [_out(v) for v in volumes.list_volumes(access.cp, access.app, destroyed=all)]


@router.post("", response_model=VolumeOut, status_code=201, summary="Create an encrypted volume")
def create(
    app: str, body: VolumeCreate, access: Annotated[Access, requires(Permission.VOLUMES_WRITE)]
) -> VolumeOut:
    assert access.app is not None
    size_mb = parse_size(body.size)
    info = volumes.create_volume(
        access.cp,
        access.ctx,
        access.app,
        body.name,
        size_mb,
        host_name=body.host,
        creator=access.principal.user_id,
    )
    return _out(info)


@router.get("/{volume}", response_model=VolumeOut, summary="Show a volume (by id or name)")
def show(
    app: str, volume: VolumePath, access: Annotated[Access, requires(Permission.VOLUMES_READ)]
) -> VolumeOut:
    assert access.app is not None
    return _out(volumes.find_volume(access.cp, access.app, volume))


@router.post("/{volume}/extend", response_model=ExtendOut, summary="Grow a volume (never shrinks)")
def extend(
    app: str,
    volume: VolumePath,
    body: VolumeExtend,
    access: Annotated[Access, requires(Permission.VOLUMES_WRITE)],
) -> ExtendOut:
    assert access.app is not None
    size_mb = parse_size(body.size)
    info, online = volumes.extend_volume(access.cp, access.ctx, access.app, volume, size_mb)
    return ExtendOut(**_out(info).model_dump(), online=online)


@router.delete(
    "/{volume}", response_model=VolumeOut, summary="Destroy a volume: its key, then its files"
)
def destroy(
    app: str, volume: VolumePath, access: Annotated[Access, requires(Permission.VOLUMES_DELETE)]
) -> VolumeOut:
    assert access.app is not None
    return _out(volumes.destroy_volume(access.cp, access.ctx, access.app, volume))

"""An app's releases: deploy one, list them, show one."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tempfile
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.config.appconfig import parse_app_config
from hangar.controlplane import images, releases
from hangar.errors import WaitTimeout
from hangar.store.tables import Release

router = GuardedRouter(prefix="/v1/apps/{app}", tags=["machines"])


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(min_length=1, max_length=1000)
    config: str = Field(min_length=1, max_length=256 * 1024, description="hangar.toml text")
    strategy: Literal["immediate", "rolling", "canary", "bluegreen"] | None = None


class ReleaseOut(BaseModel):
    version: int
    status: str
    strategy: str
    phase: str = Field(description="what the release is doing now, in a few words")
    rollback_of: int | None = Field(
        default=None, description="the earlier release this one deploys again, if a rollback"
    )
    image: str
    image_digest: str | None
    secrets_version: int | None = Field(
        description="the app's secrets version this release's machines receive (none: no secrets)"
    )
    reason: str
    created_by: str
    created_at: dt.datetime
    finished_at: dt.datetime | None


def _out(r: Release) -> ReleaseOut:
    detail: dict[str, Any] = json.loads(r.detail or "{}")
    return ReleaseOut(
        version=r.version,
        status=r.status,
        strategy=r.strategy,
        phase=str(detail.get("phase") or r.status),
        rollback_of=detail.get("rollback_of"),
        image=r.image,
        image_digest=r.image_digest,
        secrets_version=r.secrets_version,
        reason=str(detail.get("reason", "")),
        created_by=r.created_by,
        created_at=r.created_at,
        finished_at=r.finished_at,
    )


@router.post(
    "/releases",
    response_model=ReleaseOut,
    status_code=201,
    summary="Deploy: a new release, rolled out by the deployer",
)
def deploy(
    app: str, body: ReleaseIn, access: Annotated[Access, requires(Permission.APPS_DEPLOY)]
) -> ReleaseOut:
    assert access.app is not None
    config = parse_app_config(body.config)
    release = releases.deploy(
        access.cp, access.ctx, access.app, image=body.image, config=config, strategy=body.strategy
    )
    return _out(release)


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(
        default=None, ge=1, description="the release to go back to (default: the one before)"
    )
    strategy: Literal["immediate", "rolling", "canary", "bluegreen"] | None = None


@router.post(
    "/releases/rollback",
    response_model=ReleaseOut,
    status_code=201,
    summary=(
        "Roll back: an earlier release's image, configuration and secrets version,"
        " deployed as a new release"
    ),
    description=(
        "The new release's machines receive the secrets version the earlier release ran"
        " with; the app's current secrets are left as they are."
    ),
)
def rollback(
    app: str, body: RollbackIn, access: Annotated[Access, requires(Permission.APPS_DEPLOY)]
) -> ReleaseOut:
    assert access.app is not None
    release, _ = releases.rollback(
        access.cp, access.ctx, access.app, version=body.version, strategy=body.strategy
    )
    return _out(release)


class ImageOut(BaseModel):
    image: str = Field(description="what to deploy: the manifest digest, sha256:HEX")
    digest: str
    layers: int


_TAR_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a tar stream of an OCI image layout",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "/images",
    response_model=ImageOut,
    status_code=201,
    summary="Upload an image: a tar of an OCI layout, kept in the organization's store",
    openapi_extra=_TAR_BODY,
)
async def upload_image(
    app: str,
    request: Request,
    access: Annotated[Access, requires(Permission.APPS_DEPLOY)],
    tag: Annotated[
        str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    ] = None,
) -> ImageOut:
    """The body is read whole (capped by ``max_image_upload_bytes`` and in time) before
    any of it is unpacked; the image is then named by its digest, ``sha256:HEX``."""
    assert access.app is not None
    cp = access.cp
    with tempfile.TemporaryFile(dir=cp.data_dir) as spool:
        try:
            async with asyncio.timeout(cp.settings.image_upload_seconds):
                async for chunk in request.stream():
                    spool.write(chunk)
        except TimeoutError as exc:
            raise WaitTimeout("the image upload took too long") from exc
        spool.seek(0)
        manifest = await run_in_threadpool(
            images.upload_image, cp, access.ctx, access.app, spool, tag=tag
        )
    return ImageOut(image=manifest.digest, digest=manifest.digest, layers=len(manifest.layers))


@router.get("/releases", response_model=list[ReleaseOut], summary="Releases, newest first")
def list_releases(
    app: str,
    access: Annotated[Access, requires(Permission.APPS_READ)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[ReleaseOut]:
    assert access.app is not None
    return [_out(r) for r in releases.list_releases(access.cp, access.app.id, limit)]


@router.get("/releases/{version}", response_model=ReleaseOut, summary="One release")
def show_release(
    app: str, version: int, access: Annotated[Access, requires(Permission.APPS_READ)]
) -> ReleaseOut:
    assert access.app is not None
    return _out(releases.show_release(access.cp, access.app.id, version))

"""The installation itself: key rotation, and metrics scrapers' client certificates
(installation operators only)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import mfapolicy
from hangar.controlplane.system import MAX_SCRAPER_DAYS, issue_scraper_cert, rotate_keys

router = GuardedRouter(prefix="/v1/system", tags=["system"])


class RotationOut(BaseModel):
    kek_id: str
    retired: list[str]
    rewrapped: int


@router.post(
    "/rotate-kek",
    response_model=RotationOut,
    summary="A new key-encryption key; every wrapped key re-wrapped; the old one retired",
)
def rotate(access: Annotated[Access, requires(Permission.KEYS_ROTATE)]) -> RotationOut:
    access.check(access.perm, org=None, shown="keys")
    mfapolicy.enforce_step_up(
        access.cp, access.ctx, access.principal, org=None, action=access.perm.label
    )
    done = rotate_keys(access.cp, access.ctx)
    return RotationOut(kek_id=done.kek_id, retired=done.retired, rewrapped=done.rewrapped)


class ScraperCertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63, description="the scraper's name")
    csr: str = Field(max_length=16_384, description="a PEM certificate request for its key")
    days: int = Field(default=90, ge=1, le=MAX_SCRAPER_DAYS)


class ScraperCertOut(BaseModel):
    name: str
    serial: str
    certificate: str
    ca_certificate: str
    expires_at: dt.datetime


@router.post(
    "/metrics-certs",
    response_model=ScraperCertOut,
    status_code=201,
    summary="A client certificate for a metrics scraper (the metrics listener over mutual TLS)",
)
def metrics_cert(
    body: ScraperCertIn, access: Annotated[Access, requires(Permission.HOSTS_WRITE)]
) -> ScraperCertOut:
    access.check(access.perm, org=None, shown="hosts")
    issued = issue_scraper_cert(access.cp, access.ctx, body.name, body.csr, body.days)
    return ScraperCertOut(
        name=body.name,
        serial=issued.serial,
        certificate=issued.pem,
        ca_certificate=access.cp.ca.pem(),
        expires_at=issued.expires_at,
    )

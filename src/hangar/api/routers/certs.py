"""An app's host names and certificates.

No route returns a private key: an imported key goes in, wrapped, and never
comes back out.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import certs
from hangar.controlplane.certs import CertView

router = GuardedRouter(prefix="/v1/apps/{app}/certs", tags=["certs"])


class CertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hostname: str = Field(min_length=1, max_length=253)


class ImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fullchain: str = Field(min_length=1, max_length=64_000)
    private_key: str = Field(min_length=1, max_length=16_000)


class CertOut(BaseModel):
    hostname: str
    app: str
    source: str
    status: str
    detail: str
    last_error: str
    attempts: int
    next_attempt_at: dt.datetime | None
    order_url: str | None
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    renew_at: dt.datetime | None
    issuer: str | None
    names: list[str]
    serial: str | None
    fingerprint: str | None
    dns: str = Field(description="what to point the host name's DNS records at")
    proven: bool = Field(
        description="the app holds the name: it proved control (a validated ACME order or"
        " the DNS TXT record); only then does the edge route and certify it"
    )
    proof: str = Field(description="the DNS TXT record that proves control, until it is proven")
    created_by: str
    created_at: dt.datetime


def _out(access: Access, v: CertView) -> CertOut:
    return CertOut(
        hostname=v.hostname,
        app=v.app,
        source=v.source,
        status=v.status,
        detail=v.detail,
        last_error=v.last_error,
        attempts=v.attempts,
        next_attempt_at=v.next_attempt_at,
        order_url=v.order_url,
        not_before=v.not_before,
        not_after=v.not_after,
        renew_at=v.renew_at,
        issuer=v.info.issuer if v.info else None,
        names=list(v.info.sans) if v.info else [],
        serial=v.info.serial if v.info else None,
        fingerprint=v.info.fingerprint if v.info else None,
        dns=_dns(access, v.hostname),
        proven=v.proven,
        proof=v.proof,
        created_by=v.created_by,
        created_at=v.created_at,
    )


def _dns(access: Access, hostname: str) -> str:
    target = access.cp.settings.edge_dns_target or "this installation's edge"
    return f"point {hostname} (A/AAAA records, or a CNAME) at {target}"


@router.get("", response_model=list[CertOut], summary="The app's host names and certificates")
def list_(app: str, access: Annotated[Access, requires(Permission.CERTS_READ)]) -> list[CertOut]:
    assert access.app is not None
    return [_out(access, v) for v in certs.certificates(access.cp, access.app)]


@router.post(
    "",
    response_model=CertOut,
    status_code=201,
    summary="Add a host name; its ACME certificate is ordered in the background",
)
def add(
    app: str,
    body: CertIn,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> CertOut:
    assert access.app is not None
    added = certs.add_hostname(access.cp, access.ctx, access.app, body.hostname)
    access.cp.wake_acme()
    return _out(access, added)


@router.get("/{hostname}", response_model=CertOut, summary="One host name: order, status, errors")
def show(
    app: str, hostname: str, access: Annotated[Access, requires(Permission.CERTS_READ)]
) -> CertOut:
    assert access.app is not None
    return _out(access, certs.certificate(access.cp, access.app, hostname))


@router.post(
    "/{hostname}/check",
    response_model=CertOut,
    summary="Try a pending or failed order again now, and show where it stands",
)
def check(
    app: str,
    hostname: str,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> CertOut:
    assert access.app is not None
    shown = certs.retry_now(access.cp, access.app, hostname)
    access.cp.wake_acme()
    return _out(access, shown)


@router.post(
    "/{hostname}/verify",
    response_model=CertOut,
    summary="Prove control of the host name by its DNS TXT record; the app then holds it",
)
def verify(
    app: str,
    hostname: str,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> CertOut:
    assert access.app is not None
    shown = certs.verify_hostname(access.cp, access.ctx, access.app, hostname)
    access.cp.wake_acme()
    return _out(access, shown)


@router.post(
    "/{hostname}/renew",
    response_model=CertOut,
    summary="Renew an ACME certificate now (a new key), not at two thirds of its life",
)
def renew(
    app: str,
    hostname: str,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> CertOut:
    assert access.app is not None
    shown = certs.request_renewal(access.cp, access.ctx, access.app, hostname)
    access.cp.wake_acme()
    return _out(access, shown)


@router.put(
    "/{hostname}",
    response_model=CertOut,
    summary="Import a certificate chain and private key for a host name",
)
def import_(
    app: str,
    hostname: str,
    body: ImportIn,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> CertOut:
    assert access.app is not None
    shown = certs.import_chain(
        access.cp, access.ctx, access.app, hostname, body.fullchain, body.private_key
    )
    return _out(access, shown)


@router.delete("/{hostname}", status_code=204, summary="Stop answering on a host name")
def remove(
    app: str, hostname: str, access: Annotated[Access, requires(Permission.CERTS_WRITE)]
) -> None:
    assert access.app is not None
    certs.remove_hostname(access.cp, access.ctx, access.app, hostname)

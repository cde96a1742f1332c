"""An app's host names and certificates; the edge's ACME answers; the edge's status.

No route returns a private key: an imported key goes in, wrapped, and never
comes back out.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from hangar.api.guard import PUBLIC, Access, GuardedRouter, requires
from hangar.api.loops import wake_loops
from hangar.auth.rbac import Permission
from hangar.controlplane.certs import (
    CertView,
    add_certificate,
    get_certificate,
    import_certificate,
    list_certificates,
    remove_certificate,
    view,
)
from hangar.domain.routing import ACME_CHALLENGE_PREFIX
from hangar.errors import NotFound, ValidationError
from hangar.store.tables import AcmeChallenge, App, Certificate

router = GuardedRouter(prefix="/v1/apps/{app}/certs", tags=["certs"])
edge_router = GuardedRouter(tags=["edge"])


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
    created_by: str
    created_at: dt.datetime


def _out(v: CertView, dns: str) -> CertOut:
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
        dns=dns,
        created_by=v.created_by,
        created_at=v.created_at,
    )


def _dns(access: Access, hostname: str) -> str:
    target = access.cp.settings.edge_dns_target or "this installation's edge"
    return f"point {hostname} (A/AAAA records, or a CNAME) at {target}"


def _show(access: Access, cert: Certificate, app: str) -> CertOut:
    return _out(view(cert, app), _dns(access, cert.hostname))


def _audit(
    access: Access, session: Session, action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    assert access.org is not None
    access.cp.audit.record(
        session, access.ctx, org_id=access.org.id, action=action, target=target, detail=detail
    )


def _wake_issuer(request: Request) -> None:
    issuer = getattr(request.app.state, "issuer", None)
    if issuer is not None:
        issuer.wake()


@router.get("", response_model=list[CertOut], summary="The app's host names and certificates")
def list_(app: str, access: Annotated[Access, requires(Permission.CERTS_READ)]) -> list[CertOut]:
    assert access.app is not None
    with access.cp.db.read() as session:
        rows = list_certificates(session, access.app)
        return [_show(access, c, app) for c in rows]


@router.post(
    "",
    response_model=CertOut,
    status_code=201,
    summary="Add a host name; its ACME certificate is ordered in the background",
)
def add(
    app: str,
    body: CertIn,
    request: Request,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> CertOut:
    assert access.app is not None and access.org is not None
    with access.cp.db.write() as session:
        row = session.get(App, access.app.id)
        assert row is not None
        cert = add_certificate(
            session,
            row,
            body.hostname,
            actor=access.principal.email,
            edge_domain=access.cp.settings.edge_domain,
        )
        _audit(access, session, "cert.add", f"{app} {cert.hostname}")
        out = _show(access, cert, app)
    _wake_issuer(request)
    wake_loops(request)
    return out


@router.get("/{hostname}", response_model=CertOut, summary="One host name: order, status, errors")
def show(
    app: str, hostname: str, access: Annotated[Access, requires(Permission.CERTS_READ)]
) -> CertOut:
    assert access.app is not None
    with access.cp.db.read() as session:
        cert = get_certificate(session, access.app, hostname)
        return _show(access, cert, app)


@router.post(
    "/{hostname}/check",
    response_model=CertOut,
    summary="Try a pending or failed order again now, and show where it stands",
)
def check(
    app: str,
    hostname: str,
    request: Request,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> CertOut:
    assert access.app is not None
    with access.cp.db.write() as session:
        cert = get_certificate(session, access.app, hostname)
        if cert.source == "acme" and cert.status in ("pending", "failed"):
            cert.next_attempt_at = dt.datetime.now(dt.UTC)
        out = _show(access, cert, app)
    _wake_issuer(request)
    return out


@router.post(
    "/{hostname}/renew",
    response_model=CertOut,
    summary="Renew an ACME certificate now (a new key), not at two thirds of its life",
)
def renew(
    app: str,
    hostname: str,
    request: Request,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> CertOut:
    assert access.app is not None and access.org is not None
    with access.cp.db.write() as session:
        cert = get_certificate(session, access.app, hostname)
        if cert.source != "acme":
            raise ValidationError(
                f"{cert.hostname} has an imported certificate; Hangar cannot renew it",
                hint=f"hangar certs import {cert.hostname} --fullchain … --private-key …",
            )
        cert.next_attempt_at = dt.datetime.now(dt.UTC)
        cert.detail = "renewal requested"
        _audit(access, session, "cert.renew-request", f"{app} {cert.hostname}")
        out = _show(access, cert, app)
    _wake_issuer(request)
    return out


@router.put(
    "/{hostname}",
    response_model=CertOut,
    summary="Import a certificate chain and private key for a host name",
)
def import_(
    app: str,
    hostname: str,
    body: ImportIn,
    request: Request,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> CertOut:
    assert access.app is not None and access.org is not None
    with access.cp.db.write() as session:
        row = session.get(App, access.app.id)
        assert row is not None
        cert = import_certificate(
            session,
            access.cp.keyring,
            row,
            hostname,
            body.fullchain,
            body.private_key,
            actor=access.principal.email,
            edge_domain=access.cp.settings.edge_domain,
        )
        out = _show(access, cert, app)
        _audit(
            access,
            session,
            "cert.import",
            f"{app} {cert.hostname}",
            {"fingerprint": out.fingerprint, "not_after": str(out.not_after)},
        )
    wake_loops(request)
    return out


@router.delete("/{hostname}", status_code=204, summary="Stop answering on a host name")
def remove(
    app: str,
    hostname: str,
    request: Request,
    access: Annotated[Access, requires(Permission.CERTS_WRITE)],
) -> None:
    assert access.app is not None and access.org is not None
    with access.cp.db.write() as session:
        remove_certificate(session, access.app, hostname)
        _audit(access, session, "cert.remove", f"{app} {hostname.strip().lower()}")
    wake_loops(request)


@edge_router.get(
    ACME_CHALLENGE_PREFIX + "{token}",
    response_class=PlainTextResponse,
    summary="An HTTP-01 answer, for the ACME server (via the edge)",
)
def acme_challenge(token: str, request: Request, _: Annotated[None, PUBLIC]) -> str:
    cp = request.app.state.cp
    host = request.headers.get("host", "").split(":")[0].lower()
    with cp.db.read() as session:
        row = session.get(AcmeChallenge, token[:128])
        if row is None or row.hostname != host or row.expires_at < dt.datetime.now(dt.UTC):
            raise NotFound("no such challenge")
        return str(row.key_authorization)


class EdgeOut(BaseModel):
    local: bool = Field(description="whether this API's host runs an edge")
    running: bool
    error: str
    routes: list[dict[str, Any]]
    tcp: list[dict[str, Any]]
    proxies: list[dict[str, Any]]


@edge_router.get(
    "/v1/edge",
    response_model=EdgeOut,
    summary="Routes, backends and their health at this host's edge (operators)",
)
def edge_status(
    request: Request, access: Annotated[Access, requires(Permission.EDGE_READ)]
) -> EdgeOut:
    access.check(access.perm, org=None, shown="the edge")
    agent = getattr(request.app.state, "agent", None)
    edge = getattr(agent, "edge", None)
    routes = getattr(agent, "routes", None)
    if edge is None or routes is None:
        return EdgeOut(local=False, running=False, error="", routes=[], tcp=[], proxies=[])
    table = routes()
    status = edge.status()
    return EdgeOut(
        local=True,
        running=bool(status["running"]),
        error=str(status.get("error") or ""),
        routes=[
            {
                "app": r.app,
                "hostnames": list(r.hostnames),
                "force_https": r.force_https,
                "hsts": r.hsts,
                "servers": [
                    {"machine": s.name, "address": s.address, "port": s.port, "up": s.up}
                    for s in r.servers
                ],
            }
            for r in table.http
        ],
        tcp=[
            {
                "app": t.app,
                "port": t.port,
                "tls": t.tls,
                "servers": [{"machine": s.name, "up": s.up} for s in t.servers],
            }
            for t in table.tcp
        ],
        proxies=list(status["proxies"]),
    )

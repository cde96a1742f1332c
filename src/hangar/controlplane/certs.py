"""An app's host names and their certificates: add, import, list, remove.

Adding a host name queues an ACME order (``controlplane.acme`` works it);
importing stores a chain and key the user brings. A host name belongs to one
app in the whole installation. Private keys are wrapped by the KEK before
they touch the store; nothing here returns one.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.routes import cert_key_purpose
from hangar.controlplane.state import ControlPlane
from hangar.crypto.certs import CertInfo, info_of, inspect_bundle, parse_chain
from hangar.crypto.keyring import Keyring
from hangar.domain.routing import validate_hostname
from hangar.errors import Conflict, NotFound, ValidationError
from hangar.store.tables import AcmeChallenge, App, Certificate

__all__ = [
    "CertView",
    "add_certificate",
    "add_hostname",
    "certificate",
    "certificates",
    "challenge_answer",
    "get_certificate",
    "import_certificate",
    "import_chain",
    "list_certificates",
    "remove_certificate",
    "remove_hostname",
    "renew_at",
    "request_renewal",
    "retry_now",
    "view",
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def renew_at(cert: Certificate) -> dt.datetime | None:
    """Two thirds into the certificate's lifetime."""
    if cert.not_before is None or cert.not_after is None:
        return None
    return cert.not_before + (cert.not_after - cert.not_before) * 2 / 3


@dataclass(frozen=True)
class CertView:
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
    info: CertInfo | None
    created_by: str
    created_at: dt.datetime


def view(cert: Certificate, app_name: str) -> CertView:
    info = info_of(parse_chain(cert.fullchain_pem)[0]) if cert.fullchain_pem else None
    return CertView(
        hostname=cert.hostname,
        app=app_name,
        source=cert.source,
        status=cert.status,
        detail=cert.detail,
        last_error=cert.last_error,
        attempts=cert.attempts,
        next_attempt_at=cert.next_attempt_at,
        order_url=cert.order_url,
        not_before=cert.not_before,
        not_after=cert.not_after,
        renew_at=renew_at(cert) if cert.source == "acme" else None,
        info=info,
        created_by=cert.created_by,
        created_at=cert.created_at,
    )


def _check_free(session: Session, app: App, hostname: str, edge_domain: str) -> None:
    if edge_domain and (hostname == edge_domain or hostname.endswith("." + edge_domain)):
        raise ValidationError(
            f"{hostname} is under the edge domain {edge_domain}, which Hangar names itself",
            hint=f"every app already answers on <app>.{edge_domain}",
        )
    held = session.execute(
        select(Certificate).where(Certificate.hostname == hostname)
    ).scalar_one_or_none()
    if held is not None:
        if held.app_id == app.id:
            raise Conflict(f"{hostname} is already added to {app.name}")
        # Another app's, maybe another organization's: say so without naming it.
        raise Conflict(f"{hostname} is already held by another app")


def add_certificate(
    session: Session, app: App, hostname: str, *, actor: str, edge_domain: str
) -> Certificate:
    """Hold ``hostname`` for ``app`` and queue its ACME order."""
    hostname = validate_hostname(hostname)
    _check_free(session, app, hostname, edge_domain)
    now = _now()
    cert = Certificate(
        id=secrets.token_hex(8),
        app_id=app.id,
        hostname=hostname,
        source="acme",
        status="pending",
        detail="waiting for the issuer",
        last_error="",
        attempts=0,
        next_attempt_at=now,
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    session.add(cert)
    session.flush()
    return cert


def import_certificate(
    session: Session,
    keyring: Keyring,
    app: App,
    hostname: str,
    fullchain_pem: str,
    key_pem: str,
    *,
    actor: str,
    edge_domain: str,
) -> Certificate:
    """Store a chain and key the user brings (checked first); replaces the app's own."""
    hostname = validate_hostname(hostname, wildcard=True)
    info = inspect_bundle(hostname, fullchain_pem, key_pem)
    existing = session.execute(
        select(Certificate).where(Certificate.hostname == hostname)
    ).scalar_one_or_none()
    if existing is None or existing.app_id != app.id:
        _check_free(session, app, hostname, edge_domain)
    now = _now()
    cert = existing or Certificate(
        id=secrets.token_hex(8),
        app_id=app.id,
        hostname=hostname,
        created_by=actor,
        created_at=now,
        attempts=0,
    )
    cert.source = "imported"
    cert.status = "imported"
    cert.fullchain_pem = fullchain_pem.strip() + "\n"
    cert.key_wrapped = keyring.wrap(key_pem.encode(), purpose=cert_key_purpose(cert.id))
    cert.not_before = info.not_before
    cert.not_after = info.not_after
    cert.detail = f"imported; issued by {info.issuer}"
    cert.last_error = ""
    cert.order_url = None
    cert.next_attempt_at = None
    cert.updated_at = now
    if existing is None:
        session.add(cert)
    session.flush()
    return cert


def get_certificate(session: Session, app: App, hostname: str) -> Certificate:
    cert = session.execute(
        select(Certificate).where(
            Certificate.hostname == hostname.strip().lower(), Certificate.app_id == app.id
        )
    ).scalar_one_or_none()
    if cert is None:
        raise NotFound(
            f"app {app.name} has no host name {hostname}", hint="hangar certs list --app …"
        )
    return cert


def list_certificates(session: Session, app: App) -> list[Certificate]:
    return list(
        session.execute(
            select(Certificate).where(Certificate.app_id == app.id).order_by(Certificate.hostname)
        ).scalars()
    )


def remove_certificate(session: Session, app: App, hostname: str) -> None:
    session.delete(get_certificate(session, app, hostname))


def certificates(cp: ControlPlane, app: App) -> list[CertView]:
    """The app's host names and their certificates."""
    with cp.db.read() as session:
        return [view(c, app.name) for c in list_certificates(session, app)]


def certificate(cp: ControlPlane, app: App, hostname: str) -> CertView:
    with cp.db.read() as session:
        return view(get_certificate(session, app, hostname), app.name)


def add_hostname(cp: ControlPlane, ctx: AuditContext, app: App, hostname: str) -> CertView:
    """Answer on ``hostname``; the issuer orders its certificate in the background."""
    with change(cp, ctx, org_id=app.org_id, action="cert.add") as (session, event):
        row = session.get(App, app.id)
        assert row is not None
        cert = add_certificate(
            session, row, hostname, actor=ctx.actor, edge_domain=cp.settings.edge_domain
        )
        event.target = f"{app.name} {cert.hostname}"
        return view(cert, app.name)


def retry_now(cp: ControlPlane, app: App, hostname: str) -> CertView:
    """Bring a pending or failed order's next attempt forward to now."""
    with cp.db.write() as session:
        cert = get_certificate(session, app, hostname)
        if cert.source == "acme" and cert.status in ("pending", "failed"):
            cert.next_attempt_at = _now()
        return view(cert, app.name)


def request_renewal(cp: ControlPlane, ctx: AuditContext, app: App, hostname: str) -> CertView:
    """Renew an ACME certificate (with a new key) at the issuer's next round."""
    with change(cp, ctx, org_id=app.org_id, action="cert.renew-request", wake=False) as (
        session,
        event,
    ):
        cert = get_certificate(session, app, hostname)
        if cert.source != "acme":
            raise ValidationError(
                f"{cert.hostname} has an imported certificate; Hangar cannot renew it",
                hint=f"hangar certs import {cert.hostname} --fullchain … --private-key …",
            )
        cert.next_attempt_at = _now()
        cert.detail = "renewal requested"
        event.target = f"{app.name} {cert.hostname}"
        return view(cert, app.name)


def import_chain(
    cp: ControlPlane, ctx: AuditContext, app: App, hostname: str, fullchain: str, key: str
) -> CertView:
    """Serve a chain and key the user brings for ``hostname`` (checked before it is stored)."""
    with change(cp, ctx, org_id=app.org_id, action="cert.import") as (session, event):
        row = session.get(App, app.id)
        assert row is not None
        cert = import_certificate(
            session,
            cp.keyring,
            row,
            hostname,
            fullchain,
            key,
            actor=ctx.actor,
            edge_domain=cp.settings.edge_domain,
        )
        shown = view(cert, app.name)
        event.target = f"{app.name} {cert.hostname}"
        event.detail = {
            "fingerprint": shown.info.fingerprint if shown.info else None,
            "not_after": str(shown.not_after),
        }
        return shown


def remove_hostname(cp: ControlPlane, ctx: AuditContext, app: App, hostname: str) -> None:
    """Stop answering on ``hostname``; its certificate and key go."""
    target = f"{app.name} {hostname.strip().lower()}"
    with change(cp, ctx, org_id=app.org_id, action="cert.remove", target=target) as (session, _):
        remove_certificate(session, app, hostname)


def challenge_answer(cp: ControlPlane, token: str, hostname: str) -> str:
    """The key authorization of an unexpired HTTP-01 challenge for ``hostname``."""
    with cp.db.read() as session:
        row = session.get(AcmeChallenge, token[:128])
    if row is None or row.hostname != hostname or row.expires_at < _now():
        raise NotFound("no such challenge")
    return str(row.key_authorization)

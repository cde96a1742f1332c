"""An app's host names and their certificates: add, import, list, remove.

Adding a host name queues an ACME order (``controlplane.acme`` works it);
importing stores a chain and key the user brings. Any app may *claim* a
name; a name is *held* by one app in the whole installation, and only once
that app proved control of it: an ACME order validated for it, or (for an
imported certificate or a wildcard) a DNS TXT record ``hangar certs verify``
finds (``controlplane.dnsproof``). A claim not yet proven blocks no one, and
the edge neither routes nor certifies a name until it is held. Private keys
are wrapped by the KEK before they touch the store; nothing here returns one.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.dnsproof import new_token, proof_name, require_proof, resolver_of
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
    "holder",
    "import_certificate",
    "import_chain",
    "list_certificates",
    "remove_certificate",
    "remove_hostname",
    "renew_at",
    "request_renewal",
    "retry_now",
    "verify_hostname",
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
    proven: bool = False
    proof: str = ""  # the TXT record that proves control, while not proven


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
        proven=cert.proven_at is not None,
        proof=""
        if cert.proven_at is not None or not cert.proof_token
        else f'TXT {proof_name(cert.hostname)} "{cert.proof_token}"',
    )


def holder(session: Session, hostname: str) -> Certificate | None:
    """The claim that holds ``hostname`` (proven), if any."""
    return session.execute(
        select(Certificate).where(
            Certificate.hostname == hostname, Certificate.proven_at.is_not(None)
        )
    ).scalar_one_or_none()


def _check_free(session: Session, app: App, hostname: str, edge_domain: str) -> None:
    """Refuse a name under the edge domain, the app's own again, or one another app holds.

    Another app's claim that has not proven control blocks nothing.
    """
    if edge_domain and (
        hostname.removeprefix("*.") == edge_domain or hostname.endswith("." + edge_domain)
    ):
        raise ValidationError(
            f"{hostname} is under the edge domain {edge_domain}, which Hangar names itself",
            hint=f"every app already answers on <app>.{edge_domain}",
        )
    own = session.execute(
        select(Certificate).where(Certificate.hostname == hostname, Certificate.app_id == app.id)
    ).scalar_one_or_none()
    if own is not None:
        raise Conflict(f"{hostname} is already added to {app.name}")
    held = holder(session, hostname)
    if held is not None and held.app_id != app.id:
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
        proof_token=new_token(),
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
        select(Certificate).where(Certificate.hostname == hostname, Certificate.app_id == app.id)
    ).scalar_one_or_none()
    if existing is None:
        _check_free(session, app, hostname, edge_domain)
    now = _now()
    cert = existing or Certificate(
        id=secrets.token_hex(8),
        app_id=app.id,
        hostname=hostname,
        created_by=actor,
        created_at=now,
        attempts=0,
        proof_token=new_token(),
    )
    # A certificate anyone can make for any name proves nothing: the name is
    # held only once its TXT record is found (or if the app already held it).
    if cert.proof_token is None:
        cert.proof_token = new_token()
    cert.source = "imported"
    cert.status = "imported"
    cert.fullchain_pem = fullchain_pem.strip() + "\n"
    cert.key_wrapped = keyring.wrap(key_pem.encode(), purpose=cert_key_purpose(cert.id))
    cert.not_before = info.not_before
    cert.not_after = info.not_after
    cert.detail = f"imported; issued by {info.issuer}"
    if cert.proven_at is None:
        cert.detail += (
            f"; not served until control is proven: publish TXT {proof_name(hostname)}"
            f' "{cert.proof_token}", then `hangar certs verify {hostname}`'
        )
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


def verify_hostname(cp: ControlPlane, ctx: AuditContext, app: App, hostname: str) -> CertView:
    """Look for the name's TXT proof; once found, the app holds the name.

    Raises ValidationError if the record is not there (nothing changes), and
    Conflict if another app proved control first.
    """
    with cp.db.read() as session:
        cert = get_certificate(session, app, hostname)
        if cert.proven_at is not None:
            return view(cert, app.name)
        name, token = cert.hostname, cert.proof_token or ""
    # The lookup runs outside any transaction: a slow resolver holds no lock.
    require_proof(name, token, resolver_of(cp.settings.dns_proof_resolver))
    with change(cp, ctx, org_id=app.org_id, action="cert.verify") as (session, event):
        cert = get_certificate(session, app, hostname)
        held = holder(session, cert.hostname)
        if held is not None and held.id != cert.id:
            raise Conflict(f"{cert.hostname} is already held by another app")
        cert.proven_at = _now()
        cert.updated_at = cert.proven_at
        if cert.source == "imported":
            cert.detail = cert.detail.split("; not served until", 1)[0]
        else:
            cert.next_attempt_at = cert.proven_at  # order now: the name is this app's
        event.target = f"{app.name} {cert.hostname}"
        return view(cert, app.name)


def challenge_answer(cp: ControlPlane, token: str, hostname: str) -> str:
    """The key authorization of an unexpired HTTP-01 challenge for ``hostname``."""
    with cp.db.read() as session:
        row = session.get(AcmeChallenge, token[:128])
    if row is None or row.hostname != hostname or row.expires_at < _now():
        raise NotFound("no such challenge")
    return str(row.key_authorization)

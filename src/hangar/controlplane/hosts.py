"""Hosts joining, renewing and leaving: join tokens and client certificates.

A join token is made by an operator, shown once, and stored only as a hash;
it expires quickly and buys exactly one host. The host sends a certificate
request for a key it made itself; the internal CA signs it as a client
certificate that names the host. From then on the host is known by that
certificate alone, and only the serials recorded here are accepted: removing
a host, or renewing its certificate, ends the old one.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hangar.crypto.ca import InternalCA
from hangar.crypto.digests import hash_secret, verify_secret
from hangar.crypto.peercert import IssuedCert, serial_hex
from hangar.domain.jointoken import JoinToken as TokenText
from hangar.domain.jointoken import format_join_token, parse_join_token
from hangar.domain.names import validate_dns_label
from hangar.errors import AuthError, Conflict, NotFound, ValidationError
from hangar.store.tables import Host, JoinToken, Machine, Volume

__all__ = [
    "IssuedCert",
    "make_join_token",
    "redeem_join_token",
    "remove_host",
    "renew_host_cert",
    "serial_hex",
]

HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def validate_host_name(name: str) -> str:
    if not HOST_NAME.fullmatch(name):
        raise ValidationError(
            f"host name {name!r} is not valid: 1-63 lowercase letters, digits and hyphens,"
            " starting with a letter"
        )
    # And the rules every DNS label Hangar takes keeps (domain/names.py).
    return validate_dns_label(name, what="host name")


def make_join_token(
    session: Session,
    ca: InternalCA,
    *,
    name: str | None,
    region: str,
    ttl: dt.timedelta,
    actor: str,
    edge: bool = False,
) -> tuple[JoinToken, str]:
    """A new one-time join token: its row, and its text (shown once, never stored)."""
    if name is not None:
        validate_host_name(name)
        if session.execute(select(Host.id).where(Host.name == name)).first() is not None:
            raise Conflict(f"a host named {name!r} already exists")
    token = TokenText(
        id=f"jt_{secrets.token_hex(8)}", secret=secrets.token_urlsafe(32), pin=ca.fingerprint()
    )
    now = _now()
    row = JoinToken(
        id=token.id,
        secret_hash=hash_secret(token.secret),
        name=name,
        region=region,
        created_by=actor,
        created_at=now,
        expires_at=now + ttl,
        used_at=None,
        host_id=None,
        edge=edge,
    )
    session.add(row)
    session.flush()
    return row, format_join_token(token)


def redeem_join_token(
    session: Session,
    ca: InternalCA,
    text: str,
    csr_pem: str,
    *,
    name: str,
    lifetime: dt.timedelta,
    memory_mb: int = 0,
) -> tuple[Host, IssuedCert]:
    """Trade a join token for a new host and its client certificate.

    Raises AuthError for a token that is unknown, wrong, used or expired; the
    caller audits the refusal. Nothing is written unless all of it succeeds.
    """
    parsed = parse_join_token(text)
    row = session.execute(
        select(JoinToken).where(JoinToken.id == parsed.id).with_for_update()
    ).scalar_one_or_none()
    if row is None:
        raise AuthError("the join token is not valid")
    verify_secret(parsed.secret, row.secret_hash, what="join token")
    if row.used_at is not None:
        raise AuthError("the join token was already used", hint="make a new one")
    now = _now()
    if row.expires_at <= now:
        raise AuthError("the join token has expired", hint="make a new one")
    name = validate_host_name(row.name or name)
    if session.execute(select(Host.id).where(Host.name == name)).first() is not None:
        raise Conflict(f"a host named {name!r} already exists", hint="join with another --name")
    highest = session.execute(select(func.max(Host.number))).scalar_one_or_none() or 0
    host = Host(
        id=f"host_{secrets.token_hex(8)}",
        name=name,
        region=row.region,
        number=highest + 1,
        state="active",
        memory_mb=memory_mb,
        created_at=now,
        last_seen=now,
        edge=row.edge,
    )
    issued = IssuedCert(ca.issue_host_cert(csr_pem.encode(), host.id, lifetime=lifetime))
    host.cert_serial = issued.serial
    host.cert_expires_at = issued.expires_at
    session.add(host)
    row.used_at = now
    row.host_id = host.id
    session.flush()
    return host, issued


def renew_host_cert(
    session: Session, ca: InternalCA, host_id: str, csr_pem: str, *, lifetime: dt.timedelta
) -> IssuedCert:
    """A new certificate for a joined host; the current one stays valid until it is used."""
    host = session.get(Host, host_id)
    if host is None or host.state == "removed":
        raise AuthError("this host is not part of the installation")
    issued = IssuedCert(ca.issue_host_cert(csr_pem.encode(), host.id, lifetime=lifetime))
    host.prev_cert_serial = host.cert_serial
    host.cert_serial = issued.serial
    host.cert_expires_at = issued.expires_at
    return issued


def remove_host(session: Session, name: str) -> Host:
    """Take a host out of the installation: its certificates stop working at once."""
    host = session.execute(select(Host).where(Host.name == name)).scalar_one_or_none()
    if host is None or host.state == "removed":
        raise NotFound(f"host {name!r} not found")
    # Destroyed machines count until the host reports them gone.
    live = session.execute(
        select(func.count()).select_from(Machine).where(Machine.host_id == host.id)
    ).scalar_one()
    if live:
        raise Conflict(
            f"host {name!r} still has {live} machine(s)",
            hint="cordon it, then destroy or replace its machines first",
        )
    # A volume's data lives only on its host: removing the host would strand it.
    volumes = session.execute(
        select(func.count())
        .select_from(Volume)
        .where(Volume.host_id == host.id, Volume.state != "destroyed")
    ).scalar_one()
    if volumes:
        raise Conflict(
            f"host {name!r} still keeps {volumes} volume(s), whose data lives only there",
            hint="destroy them first (`hangar volumes list --app APP` shows each one's host)",
        )
    host.state = "removed"
    host.cert_serial = host.prev_cert_serial = None
    return host

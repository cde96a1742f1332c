"""Organizations' log sinks: configured here, fed by ``LogShipper``.

A sink is a kind (a driver in ``telemetry.sinks``) and a URL. Its URL must
be http(s), carry no credentials (they would be stored and shown in
plain text) and resolve to public addresses only, unless the operator
allows its host (``allowed_log_sink_hosts``): the control plane calls it on
the organization's behalf and must not become a way into the private
network. Adding and removing are audited.

A sink's credential (a Splunk HEC token, an Elasticsearch API key or user
and password) is write-only, as secrets are: it is wrapped by the KEK under
a purpose bound to the organization and the sink, so the row it sits in is
the only one it unwraps for; listings say only which kind of credential a
sink has; audit events and errors never carry it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select

from hangar.audit.log import AuditContext
from hangar.auth.tokens import new_id
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane
from hangar.errors import NotFound, ValidationError
from hangar.images.registry import internal_addresses
from hangar.store.tables import LogSinkRow, Org
from hangar.telemetry.sinks import CREDENTIALS, DRIVERS, KNOWN_KINDS, Credential

__all__ = [
    "SinkOut",
    "add_sink",
    "check_sink_url",
    "credential_purpose",
    "list_sinks",
    "remove_sink",
    "sink_credential",
]

MAX_SINKS = 8  # per organization
MAX_CREDENTIAL = 4096
_INDEX = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class SinkOut:
    id: str
    kind: str
    url: str
    index: str | None
    auth: str | None  # the credential's scheme, never the credential
    created_by: str
    created_at: dt.datetime


def credential_purpose(org_id: str, sink_id: str) -> str:
    return f"log-sink-credential:{org_id}:{sink_id}"


def _out(row: LogSinkRow, auth: str | None) -> SinkOut:
    return SinkOut(row.id, row.kind, row.url, row.index_name, auth, row.created_by, row.created_at)


def _check_credential(kind: str, credential: Credential | None) -> None:
    schemes, required = CREDENTIALS[kind]
    if credential is None:
        if required:
            raise ValidationError(
                f"a {kind} sink needs a credential",
                hint="give the HEC token on stdin: hangar logs sinks add splunk-hec URL --token -",
            )
        return
    if credential.scheme not in schemes:
        raise ValidationError(
            f"a {kind} sink takes no {credential.scheme} credential",
            hint=f"it takes: {', '.join(schemes) or 'none'}",
        )
    for what, value in (("credential", credential.secret), ("user name", credential.username)):
        if len(value.encode()) > MAX_CREDENTIAL:
            raise ValidationError(f"the sink's {what} is longer than {MAX_CREDENTIAL} bytes")
        if any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
            # It goes into an HTTP header: no spaces, controls or other characters.
            raise ValidationError(f"the sink's {what} is printable ASCII without spaces")
    if not credential.secret:
        raise ValidationError("the sink's credential is empty")
    if credential.scheme == "basic" and (not credential.username or ":" in credential.username):
        raise ValidationError("basic authentication needs a user name without ':'")
    if credential.scheme != "basic" and credential.username:
        raise ValidationError(f"a {credential.scheme} credential has no user name")


def _check_index(kind: str, index: str | None) -> None:
    if index is None:
        return
    if kind == "loki":
        raise ValidationError("a loki sink has no index: streams are labelled instead")
    if not _INDEX.fullmatch(index):
        raise ValidationError(
            f"index {index!r} is not an index name",
            hint="lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
        )


def check_sink_url(url: str, allowed: list[str]) -> None:
    """ValidationError unless ``url`` is one the control plane may ship to."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"https": 443, "tls": 6514}.get(parts.scheme, 80)
    except ValueError as exc:
        raise ValidationError(f"sink URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https", "tls") or not parts.hostname:
        raise ValidationError(f"sink URL {url!r} is not an http(s) URL (or tls:// for syslog)")
    if parts.username or parts.password:
        raise ValidationError(
            "a sink URL cannot carry credentials",
            hint="Hangar ships to sinks that accept it by address; credentials are not kept",
        )
    if parts.query or parts.fragment:
        raise ValidationError("a sink URL is a base URL, without query or fragment")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise ValidationError("a sink URL is printable ASCII without spaces")
    host = parts.hostname
    if host in allowed or parts.netloc in allowed:
        return
    unreachable = ValidationError(
        f"sink host {host} unreachable",
        hint="a sink on a private or local address must be allowed by name in the"
        " server's allowed_log_sink_hosts setting",
    )
    try:
        refused = internal_addresses(host, port)
    except OSError as exc:
        raise unreachable from exc
    if refused:
        raise unreachable


def _check_kind(kind: str) -> None:
    if kind in DRIVERS:
        return
    if kind in KNOWN_KINDS:
        raise ValidationError(
            f"Hangar does not ship logs to {kind} yet",
            hint=f"supported: {', '.join(sorted(DRIVERS))}",
        )
    raise ValidationError(f"unknown sink kind {kind!r}", hint=f"one of {', '.join(KNOWN_KINDS)}")


def add_sink(
    cp: ControlPlane,
    ctx: AuditContext,
    org: Org,
    kind: str,
    url: str,
    *,
    credential: Credential | None = None,
    index: str | None = None,
) -> SinkOut:
    """Add a sink; its credential is kept only wrapped by the KEK."""
    _check_kind(kind)
    scheme = urlsplit(url).scheme
    if (kind == "syslog") != (scheme == "tls"):
        raise ValidationError(
            "a syslog sink is tls://host[:port] (RFC 5425); other sinks are http(s)",
            hint="Hangar sends syslog over TLS only",
        )
    if kind == "syslog" and urlsplit(url).path not in ("", "/"):
        raise ValidationError("a syslog sink's URL has no path")
    _check_credential(kind, credential)
    _check_index(kind, index)
    check_sink_url(url, cp.settings.allowed_log_sink_hosts)
    sink_id = new_id("sink")
    sealed = (
        cp.keyring.wrap(credential.dumps(), purpose=credential_purpose(org.id, sink_id))
        if credential is not None
        else None
    )
    auth = credential.scheme if credential is not None else None
    with change(cp, ctx, org_id=org.id, action="logs.sink.add", wake=False) as (session, event):
        count = len(session.execute(select(LogSinkRow.id).where(LogSinkRow.org_id == org.id)).all())
        if count >= MAX_SINKS:
            raise ValidationError(f"an organization has at most {MAX_SINKS} log sinks")
        row = LogSinkRow(
            id=sink_id,
            org_id=org.id,
            kind=kind,
            url=url,
            index_name=index,
            credential=sealed,
            auth=auth,
            created_by=ctx.actor,
            created_at=dt.datetime.now(dt.UTC),
        )
        session.add(row)
        event.target = row.id
        event.detail = {"kind": kind, "url": url, "index": index, "auth": auth}
    return _out(row, auth)


def list_sinks(cp: ControlPlane, org: Org) -> list[SinkOut]:
    with cp.db.read() as session:
        rows = session.execute(
            select(LogSinkRow).where(LogSinkRow.org_id == org.id).order_by(LogSinkRow.created_at)
        ).scalars()
        return [_out(r, r.auth) for r in rows]


def sink_credential(cp: ControlPlane, row: LogSinkRow) -> Credential | None:
    """The sink's credential, unwrapped for the caller's use in memory only."""
    if row.credential is None:
        return None
    return Credential.loads(
        cp.keyring.unwrap(row.credential, purpose=credential_purpose(row.org_id, row.id))
    )


def remove_sink(cp: ControlPlane, ctx: AuditContext, org: Org, sink_id: str) -> None:
    with change(cp, ctx, org_id=org.id, action="logs.sink.remove", wake=False) as (
        session,
        event,
    ):
        row = session.get(LogSinkRow, sink_id)
        if row is None or row.org_id != org.id:
            raise NotFound(f"log sink {sink_id!r} not found")
        event.target = sink_id
        event.detail = {"kind": row.kind, "url": row.url}
        session.delete(row)

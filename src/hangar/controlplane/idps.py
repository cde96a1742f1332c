"""The installation's identity providers (``hangar idps``), configured by operators.

A provider's client secret is write-only: wrapped by the KEK under a
purpose bound to the provider's id, unwrapped only in memory to talk to the
provider; no listing, event or error shows it.
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import func, select

from hangar.audit.log import AuditContext
from hangar.auth.oidc import ProviderConfig, check_issuer_url
from hangar.auth.tokens import new_id
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane
from hangar.domain.names import validate_dns_label
from hangar.errors import Conflict, NotFound, ValidationError
from hangar.store.tables import IdentityProvider, PendingSignin, UserIdentity

__all__ = [
    "add_idp",
    "find_idp",
    "list_idps",
    "provider_config",
    "remove_idp",
    "secret_purpose",
]

_SCOPE = re.compile(r"^[!#-\[\]-~]{1,64}$")
_CLAIM = re.compile(r"^[A-Za-z0-9_:/.-]{1,64}$")
_CLIENT_ID = re.compile(r"^[!-~]{1,255}$")


def secret_purpose(idp_id: str) -> str:
    return f"idp-client-secret:{idp_id}"


def list_idps(cp: ControlPlane) -> list[IdentityProvider]:
    with cp.db.read() as session:
        return list(
            session.execute(select(IdentityProvider).order_by(IdentityProvider.name)).scalars()
        )


def find_idp(cp: ControlPlane, name: str) -> IdentityProvider:
    with cp.db.read() as session:
        row = session.execute(
            select(IdentityProvider).where(IdentityProvider.name == name[:63])
        ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"identity provider {name!r} not found", hint="hangar idps list")
    return row


def provider_config(cp: ControlPlane, row: IdentityProvider) -> ProviderConfig:
    """The provider as the OIDC client needs it (its secret unwrapped, in memory only)."""
    secret = None
    if row.client_secret is not None:
        secret = cp.keyring.unwrap(row.client_secret, purpose=secret_purpose(row.id)).decode()
    return ProviderConfig(
        name=row.name,
        issuer=row.issuer,
        client_id=row.client_id,
        client_secret=secret,
        scopes=row.scopes,
        groups_claim=row.groups_claim,
    )


def add_idp(
    cp: ControlPlane,
    ctx: AuditContext,
    *,
    name: str,
    issuer: str,
    client_id: str,
    client_secret: str | None,
    scopes: list[str],
    groups_claim: str,
) -> IdentityProvider:
    """Configure a provider; everything is checked before anything is written."""
    validate_dns_label(name, what="identity provider name")
    check_issuer_url(issuer)
    if not _CLIENT_ID.match(client_id):
        raise ValidationError("the client id must be 1-255 visible ASCII characters")
    if client_secret is not None and not (0 < len(client_secret) <= 1024):
        raise ValidationError("the client secret must be 1-1024 characters")
    scopes = list(dict.fromkeys(["openid", *scopes]))
    if len(scopes) > 16 or not all(_SCOPE.match(s) for s in scopes):
        raise ValidationError("scopes are up to 16 words of visible ASCII")
    if not _CLAIM.match(groups_claim):
        raise ValidationError(f"{groups_claim!r} is not a claim name")
    now = dt.datetime.now(dt.UTC)
    with change(cp, ctx, org_id=None, action="idp.add", target=name, wake=False) as (
        session,
        event,
    ):
        if session.execute(
            select(IdentityProvider.id).where(IdentityProvider.name == name)
        ).first():
            raise Conflict(f"identity provider {name!r} already exists")
        idp_id = new_id("idp")
        row = IdentityProvider(
            id=idp_id,
            name=name,
            issuer=issuer,
            client_id=client_id,
            client_secret=(
                cp.keyring.wrap(client_secret.encode(), purpose=secret_purpose(idp_id))
                if client_secret
                else None
            ),
            scopes=" ".join(scopes),
            groups_claim=groups_claim,
            created_by=ctx.actor,
            created_at=now,
        )
        session.add(row)
        event.detail = {
            "issuer": issuer,
            "client_id": client_id,
            "client_secret": "set" if client_secret else "none",
            "scopes": scopes,
            "groups_claim": groups_claim,
        }
    return row


def remove_idp(cp: ControlPlane, ctx: AuditContext, name: str) -> None:
    """Forget a provider; people who signed in through it keep their sessions until they end."""
    with change(cp, ctx, org_id=None, action="idp.remove", target=name, wake=False) as (
        session,
        event,
    ):
        row = session.execute(
            select(IdentityProvider).where(IdentityProvider.name == name[:63])
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"identity provider {name!r} not found", hint="hangar idps list")
        linked = session.execute(
            select(func.count()).select_from(UserIdentity).where(UserIdentity.idp_id == row.id)
        ).scalar_one()
        session.query(PendingSignin).filter(PendingSignin.idp_id == row.id).delete()
        session.query(UserIdentity).filter(UserIdentity.idp_id == row.id).delete()
        session.delete(row)
        event.detail = {"issuer": row.issuer, "identities_forgotten": linked}

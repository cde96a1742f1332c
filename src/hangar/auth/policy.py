"""Organizations' identity policies: how their members must sign in.

Stored one key a row (``org_policies``), each value JSON; a key with no row
has its default. The keys (``hangar orgs policy set ORG KEY=VALUE``):

``sso_idp``           the identity provider members must sign in through
                      ("" : any); a session through another one does not
                      reach the organization
``email_domains``     the e-mail domains members' addresses may have ([] : any)
``group_roles``       IdP group -> role (admin, member, viewer): a person in
                      such a group becomes a member with that role when they
                      sign in (just-in-time), and their role follows the groups;
                      only with ``sso_idp`` set (groups are that provider's)
``session_lifetime``  seconds a session lasts (900 .. 604800; 43200)
``idle_timeout``      seconds of inactivity that end a session (300 .. 86400; 3600)

A person in several organizations gets the shortest lifetime and idle
timeout among them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.auth.rbac import Role
from hangar.auth.sessions import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LIFETIME,
    MAX_IDLE_TIMEOUT_S,
    MAX_LIFETIME_S,
    MIN_IDLE_TIMEOUT_S,
    MIN_LIFETIME_S,
)
from hangar.errors import ValidationError
from hangar.store.tables import OrgPolicyValue

__all__ = ["IdentityPolicy", "load_policies", "load_policy", "parse_assignments", "save_policy"]

_DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_GROUP = re.compile(r"^[A-Za-z0-9 _.@:/=,+-]{1,128}$")
_IDP = re.compile(r"^$|^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class IdentityPolicy(BaseModel):
    """One organization's identity policy; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sso_idp: Annotated[str, Field(max_length=63)] = ""
    email_domains: Annotated[list[str], Field(max_length=32)] = []
    group_roles: Annotated[dict[str, Role], Field(max_length=64)] = {}
    session_lifetime: Annotated[int, Field(ge=MIN_LIFETIME_S, le=MAX_LIFETIME_S)] = int(
        DEFAULT_LIFETIME.total_seconds()
    )
    idle_timeout: Annotated[int, Field(ge=MIN_IDLE_TIMEOUT_S, le=MAX_IDLE_TIMEOUT_S)] = int(
        DEFAULT_IDLE_TIMEOUT.total_seconds()
    )

    @field_validator("sso_idp")
    @classmethod
    def _idp_name(cls, value: str) -> str:
        if not _IDP.match(value):
            raise ValueError("an identity provider's name is a DNS label")
        return value

    @field_validator("email_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        out = []
        for domain in value:
            domain = domain.strip().lower()
            if not _DOMAIN.match(domain):
                raise ValueError(f"{domain!r} is not a domain name")
            out.append(domain)
        return sorted(set(out))

    @field_validator("group_roles")
    @classmethod
    def _groups(cls, value: dict[str, Role]) -> dict[str, Role]:
        for group in value:
            if not _GROUP.match(group):
                raise ValueError(f"{group!r} is not a group name this policy can hold")
        return value

    def allows_email(self, email: str) -> bool:
        """Whether ``email``'s domain is one this policy allows (any, when none are named)."""
        if not self.email_domains:
            return True
        return email.rpartition("@")[2].lower() in self.email_domains

    def role_for_groups(self, groups: list[str]) -> Role | None:
        """The highest role any of ``groups`` maps to; None when none maps."""
        roles = [self.group_roles[g] for g in groups if g in self.group_roles]
        return max(roles, key=lambda r: r.rank) if roles else None

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_KEYS = tuple(IdentityPolicy.model_fields)


def _from_rows(rows: list[tuple[str, str]]) -> IdentityPolicy:
    values: dict[str, Any] = {}
    for key, text in rows:
        if key in _KEYS:
            values[key] = json.loads(text)
    return IdentityPolicy.model_validate(values)


def load_policy(session: Session, org_id: str) -> IdentityPolicy:
    rows = session.execute(
        select(OrgPolicyValue.key, OrgPolicyValue.value).where(OrgPolicyValue.org_id == org_id)
    ).all()
    return _from_rows([(r[0], r[1]) for r in rows])


def load_policies(session: Session, org_ids: list[str]) -> dict[str, IdentityPolicy]:
    """Each of ``org_ids``' policy (the default for those with none set)."""
    found: dict[str, list[tuple[str, str]]] = {o: [] for o in org_ids}
    if org_ids:
        for org_id, key, value in session.execute(
            select(OrgPolicyValue.org_id, OrgPolicyValue.key, OrgPolicyValue.value).where(
                OrgPolicyValue.org_id.in_(org_ids)
            )
        ).all():
            found[org_id].append((key, value))
    return {org_id: _from_rows(rows) for org_id, rows in found.items()}


def save_policy(
    session: Session, org_id: str, before: IdentityPolicy, after: IdentityPolicy
) -> dict[str, Any]:
    """Write the keys that changed; returns ``{key: {"from": .., "to": ..}}``."""
    now = dt.datetime.now(dt.UTC)
    changed: dict[str, Any] = {}
    old, new = before.as_json(), after.as_json()
    defaults = IdentityPolicy().as_json()
    for key in _KEYS:
        if old[key] == new[key]:
            continue
        changed[key] = {"from": old[key], "to": new[key]}
        row = session.get(OrgPolicyValue, (org_id, key))
        if new[key] == defaults[key]:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(
                OrgPolicyValue(org_id=org_id, key=key, value=json.dumps(new[key]), updated_at=now)
            )
        else:
            row.value, row.updated_at = json.dumps(new[key]), now
    return changed


def parse_assignments(
    current: IdentityPolicy, assignments: Mapping[str, Any], *, unset: list[str]
) -> IdentityPolicy:
    """``current`` with ``assignments`` applied and ``unset`` keys back to their defaults.

    ValidationError naming the key for an unknown key or a bad value; nothing
    is written here.
    """
    for key in [*assignments, *unset]:
        if key not in _KEYS:
            raise ValidationError(
                f"{key!r} is not an identity policy key", hint="keys: " + ", ".join(_KEYS)
            )
    values = current.as_json()
    defaults = IdentityPolicy().as_json()
    for key in unset:
        values[key] = defaults[key]
    values.update(assignments)
    try:
        policy = IdentityPolicy.model_validate(values)
    except Exception as exc:
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ValidationError(f"policy {where}: {first.get('msg')}") from None
        raise ValidationError(f"invalid policy: {exc}") from None
    if policy.group_roles and not policy.sso_idp:
        # A group's name means something at one provider only: any other
        # provider's administrator could put people in a group of that name.
        raise ValidationError(
            "group_roles needs sso_idp: the provider whose groups they are",
            hint="e.g. hangar orgs policy set ORG sso_idp=corp group_roles=eng:member",
        )
    return policy

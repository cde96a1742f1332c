"""Organizations and their members."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.pagination import Limit, Page, decode_cursor, page_of
from hangar.auth.policy import parse_assignments
from hangar.auth.rbac import CONFIGURABLE, Grants, Permission, Role
from hangar.auth.stepup import POLICY_KEYS, MfaPolicy
from hangar.controlplane import mfapolicy, orgs
from hangar.domain.names import DnsLabel, EmailAddress
from hangar.errors import ValidationError
from hangar.store.tables import Org

router = GuardedRouter(prefix="/v1/orgs", tags=["orgs"])


class OrgOut(BaseModel):
    id: str
    name: str
    created_at: dt.datetime
    role: Role | None = None
    # For each configurable permission, the roles that hold it (shown one at a time).
    permissions: dict[str, list[Role]] | None = None


class GrantItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    permission: str = Field(
        min_length=1,
        max_length=32,
        description="one of: " + ", ".join(p.label for p in CONFIGURABLE),
    )


class OrgUpdate(BaseModel):
    """Give or take the configurable permissions; revocations apply before grants."""

    model_config = ConfigDict(extra="forbid")
    grant: list[GrantItem] = Field(default_factory=list, max_length=16)
    revoke: list[GrantItem] = Field(default_factory=list, max_length=16)


class OrgCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: DnsLabel


class MemberOut(BaseModel):
    user_id: str
    email: str
    role: Role
    created_at: dt.datetime


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: EmailAddress = Field(description="stored NFKC-normalized and lowercased")
    role: Role = Role.MEMBER


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


def _org_out(org: Org, access: Access) -> OrgOut:
    return OrgOut(
        id=org.id,
        name=org.name,
        created_at=org.created_at,
        role=access.principal.roles.get(org.id),
    )


@router.get("", response_model=Page[OrgOut], summary="List organizations you belong to")
def list_orgs(
    access: Annotated[Access, requires(Permission.ORGS_READ)],
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[OrgOut]:
    after = decode_cursor(cursor, str)
    visible = [
        o for o in access.principal.visible_orgs() if access.allows(Permission.ORGS_READ, org_id=o)
    ]
    rows = orgs.list_orgs(access.cp, visible, after, limit + 1)
    return page_of(rows, limit, lambda o: _org_out(o, access), lambda o: o.name)


@router.post("", response_model=OrgOut, status_code=201, summary="Create an organization")
def create_org(
    body: OrgCreate, access: Annotated[Access, requires(Permission.ORGS_CREATE)]
) -> OrgOut:
    name = body.name
    access.check(Permission.ORGS_CREATE, org=None, shown=f"organization {name!r}")
    org = orgs.create_org(access.cp, access.ctx, name, admin_id=access.principal.user_id)
    return OrgOut(id=org.id, name=org.name, created_at=org.created_at, role=Role.ADMIN)


def _with_grants(out: OrgOut, grants: Grants) -> OrgOut:
    out.permissions = {p.label: grants.roles(p) for p in CONFIGURABLE}
    return out


@router.get("/{org}", response_model=OrgOut, summary="Show an organization")
def show_org(org: str, access: Annotated[Access, requires(Permission.ORGS_READ)]) -> OrgOut:
    assert access.org is not None
    return _with_grants(_org_out(access.org, access), orgs.get_grants(access.cp, access.org))


def _changes(items: list[GrantItem]) -> list[tuple[Role, Permission]]:
    out = []
    for item in items:
        try:
            perm = Permission.named(item.permission)
        except ValueError:
            raise ValidationError(
                f"unknown permission {item.permission!r}",
                hint="configurable: " + ", ".join(p.label for p in CONFIGURABLE),
            ) from None
        out.append((item.role, perm))
    return out


@router.patch(
    "/{org}",
    response_model=OrgOut,
    summary="Grant or revoke the configurable permissions (logs:read, machines:exec) per role",
)
def update_org(
    org: str,
    body: OrgUpdate,
    access: Annotated[Access, requires(Permission.ORGS_WRITE, step_up=True)],
) -> OrgOut:
    assert access.org is not None
    grants = orgs.set_grants(
        access.cp,
        access.ctx,
        access.org,
        grant=_changes(body.grant),
        revoke=_changes(body.revoke),
    )
    return _with_grants(_org_out(access.org, access), grants)


def _member_out(member: orgs.Member) -> MemberOut:
    membership, user = member
    return MemberOut(
        user_id=user.id,
        email=user.email,
        role=Role(membership.role),
        created_at=membership.created_at,
    )


@router.get("/{org}/members", response_model=Page[MemberOut], summary="List members")
def list_members(
    org: str,
    access: Annotated[Access, requires(Permission.MEMBERS_READ)],
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[MemberOut]:
    assert access.org is not None
    after = decode_cursor(cursor, str)
    rows = orgs.list_members(access.cp, access.org, after, limit + 1)
    return page_of(rows, limit, _member_out, lambda r: r[1].email)


@router.post(
    "/{org}/members",
    response_model=MemberOut,
    status_code=201,
    summary="Add a member (the user is created if new)",
)
def add_member(
    org: str,
    body: MemberAdd,
    access: Annotated[Access, requires(Permission.MEMBERS_WRITE, step_up=True)],
) -> MemberOut:
    assert access.org is not None
    return _member_out(orgs.add_member(access.cp, access.ctx, access.org, body.email, body.role))


@router.patch("/{org}/members/{email}", response_model=MemberOut, summary="Change a role")
def set_role(
    org: str,
    email: str,
    body: MemberUpdate,
    access: Annotated[Access, requires(Permission.MEMBERS_WRITE, step_up=True)],
) -> MemberOut:
    assert access.org is not None
    return _member_out(orgs.set_role(access.cp, access.ctx, access.org, email, body.role))


@router.delete("/{org}/members/{email}", status_code=204, summary="Remove a member")
def remove_member(
    org: str,
    email: str,
    access: Annotated[Access, requires(Permission.MEMBERS_WRITE, step_up=True)],
) -> None:
    assert access.org is not None
    orgs.remove_member(access.cp, access.ctx, access.org, email)


class PolicyUpdate(BaseModel):
    """Keys to set (``set``) and keys back to their defaults (``unset``)."""

    model_config = ConfigDict(extra="forbid")
    set: dict[str, Any] = Field(default_factory=dict, max_length=16)
    unset: list[str] = Field(default_factory=list, max_length=16)


@router.get("/{org}/policy", summary="Show an organization's identity policy")
def show_policy(org: str, access: Annotated[Access, requires(Permission.ORGS_READ)]) -> Any:
    assert access.org is not None
    return {
        **orgs.get_policy(access.cp, access.org).as_json(),
        **mfapolicy.get_policy(access.cp, access.org.id).as_dict(),
    }


@router.patch(
    "/{org}/policy",
    summary="Change an organization's identity policy (a sensitive action: it needs a step-up)",
)
def set_policy(
    org: str, body: PolicyUpdate, access: Annotated[Access, requires(Permission.ORGS_WRITE)]
) -> Any:
    assert access.org is not None
    if not body.set and not body.unset:
        raise ValidationError("nothing to change: give keys to set or unset")
    # The second-factor keys go to their own policy; every other key is the
    # sign-in policy's, which refuses any it does not know.
    mfa_set = {k: v for k, v in body.set.items() if k in POLICY_KEYS}
    mfa_unset = [k for k in body.unset if k in POLICY_KEYS]
    rest_set = {k: v for k, v in body.set.items() if k not in POLICY_KEYS}
    rest_unset = [k for k in body.unset if k not in POLICY_KEYS]
    # Both halves are validated before either is written.
    parse_assignments(orgs.get_policy(access.cp, access.org), rest_set, unset=rest_unset)
    mfa = mfapolicy.get_policy(access.cp, access.org.id)
    defaults = MfaPolicy().as_dict()
    mfa_changes = {**{k: defaults[k] for k in mfa_unset}, **mfa_set}
    mfa.with_changes(mfa_changes)
    # The sign-in half's step-up is checked before either half is written, so a
    # refused request changes nothing.
    if rest_set or rest_unset:
        mfapolicy.enforce_step_up(
            access.cp, access.ctx, access.principal, org=access.org, action="org.set_policy"
        )
    if mfa_changes:
        mfa = mfapolicy.set_policy(access.cp, access.ctx, access.principal, access.org, mfa_changes)
    identity = orgs.get_policy(access.cp, access.org)
    if rest_set or rest_unset:
        identity = orgs.set_policy(access.cp, access.ctx, access.org, rest_set, rest_unset)
    return {**identity.as_json(), **mfa.as_dict()}

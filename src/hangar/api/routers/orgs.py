"""Organizations and their members."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.api.pagination import Limit, Page, decode_cursor, page_of
from hangar.auth.rbac import Permission, Role
from hangar.auth.tokens import new_id
from hangar.domain.names import validate_dns_label, validate_email
from hangar.errors import Conflict, NotFound
from hangar.store.tables import Membership, Org, User

router = GuardedRouter(prefix="/v1/orgs", tags=["orgs"])


class OrgOut(BaseModel):
    id: str
    name: str
    created_at: dt.datetime
    role: Role | None = None


class OrgCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)


class MemberOut(BaseModel):
    user_id: str
    email: str
    role: Role
    created_at: dt.datetime


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=3, max_length=254)
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
    query = select(Org).where(Org.id.in_(visible)).order_by(Org.name).limit(limit + 1)
    if after is not None:
        query = query.where(Org.name > after)
    with access.cp.db.read() as session:
        rows = list(session.execute(query).scalars())
    return page_of(rows, limit, lambda o: _org_out(o, access), lambda o: o.name)


@router.post("", response_model=OrgOut, status_code=201, summary="Create an organization")
def create_org(
    body: OrgCreate, access: Annotated[Access, requires(Permission.ORGS_CREATE)]
) -> OrgOut:
    name = validate_dns_label(body.name, what="organization name")
    access.check(Permission.ORGS_CREATE, org=None, shown=f"organization {name!r}")
    now = dt.datetime.now(dt.UTC)
    with access.cp.db.write() as session:
        if session.execute(select(Org.id).where(Org.name == name)).first():
            raise Conflict(f"organization {name!r} already exists")
        org = Org(id=new_id("org"), name=name, created_at=now)
        session.add(org)
        session.flush()
        session.add(
            Membership(
                org_id=org.id,
                user_id=access.principal.user_id,
                role=Role.ADMIN.value,
                created_at=now,
            )
        )
        access.cp.audit.record(session, access.ctx, org_id=org.id, action="org.create", target=name)
    return OrgOut(id=org.id, name=org.name, created_at=org.created_at, role=Role.ADMIN)


@router.get("/{org}", response_model=OrgOut, summary="Show an organization")
def show_org(org: str, access: Annotated[Access, requires(Permission.ORGS_READ)]) -> OrgOut:
    assert access.org is not None
    return _org_out(access.org, access)


@router.get("/{org}/members", response_model=Page[MemberOut], summary="List members")
def list_members(
    org: str,
    access: Annotated[Access, requires(Permission.MEMBERS_READ)],
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[MemberOut]:
    assert access.org is not None
    after = decode_cursor(cursor, str)
    query = (
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.org_id == access.org.id)
        .order_by(User.email)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(User.email > after)
    with access.cp.db.read() as session:
        rows = session.execute(query).all()
    return page_of(
        rows,
        limit,
        lambda r: MemberOut(
            user_id=r[1].id, email=r[1].email, role=Role(r[0].role), created_at=r[0].created_at
        ),
        lambda r: r[1].email,
    )


def _admins_left(session: Session, org_id: str, without: str) -> int:
    return session.execute(
        select(func.count())
        .select_from(Membership)
        .where(
            Membership.org_id == org_id,
            Membership.role == Role.ADMIN.value,
            Membership.user_id != without,
        )
    ).scalar_one()


@router.post(
    "/{org}/members",
    response_model=MemberOut,
    status_code=201,
    summary="Add a member (the user is created if new)",
)
def add_member(
    org: str, body: MemberAdd, access: Annotated[Access, requires(Permission.MEMBERS_WRITE)]
) -> MemberOut:
    assert access.org is not None
    email = validate_email(body.email)
    now = dt.datetime.now(dt.UTC)
    with access.cp.db.write() as session:
        user = session.execute(select(User).where(User.email == email)).scalar_one_or_none()
        if user is None:
            user = User(id=new_id("usr"), email=email, is_operator=False, created_at=now)
            session.add(user)
            session.flush()
        elif session.get(Membership, (access.org.id, user.id)) is not None:
            raise Conflict(
                f"{email} is already a member of {access.org.name}",
                hint="change the role with `hangar orgs members set-role`",
            )
        member = Membership(
            org_id=access.org.id, user_id=user.id, role=body.role.value, created_at=now
        )
        session.add(member)
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="member.add",
            target=email,
            detail={"role": body.role.value},
        )
    return MemberOut(user_id=user.id, email=email, role=body.role, created_at=now)


def _membership(session: Session, org: Org, email: str) -> tuple[Membership, User]:
    row = session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.org_id == org.id, User.email == email.lower())
    ).one_or_none()
    if row is None:
        raise NotFound(f"{email} is not a member of {org.name}")
    return row[0], row[1]


@router.patch("/{org}/members/{email}", response_model=MemberOut, summary="Change a role")
def set_role(
    org: str,
    email: str,
    body: MemberUpdate,
    access: Annotated[Access, requires(Permission.MEMBERS_WRITE)],
) -> MemberOut:
    assert access.org is not None
    with access.cp.db.write() as session:
        member, user = _membership(session, access.org, email)
        if (
            member.role == Role.ADMIN.value
            and body.role is not Role.ADMIN
            and _admins_left(session, access.org.id, user.id) == 0
        ):
            raise Conflict(
                f"{user.email} is the last admin of {access.org.name}",
                hint="make someone else admin first",
            )
        old = member.role
        member.role = body.role.value
        access.cp.audit.record(
            session,
            access.ctx,
            org_id=access.org.id,
            action="member.set_role",
            target=user.email,
            detail={"from": old, "to": body.role.value},
        )
    return MemberOut(
        user_id=user.id, email=user.email, role=body.role, created_at=member.created_at
    )


@router.delete("/{org}/members/{email}", status_code=204, summary="Remove a member")
def remove_member(
    org: str, email: str, access: Annotated[Access, requires(Permission.MEMBERS_WRITE)]
) -> None:
    assert access.org is not None
    with access.cp.db.write() as session:
        member, user = _membership(session, access.org, email)
        if member.role == Role.ADMIN.value and _admins_left(session, access.org.id, user.id) == 0:
            raise Conflict(
                f"{user.email} is the last admin of {access.org.name}",
                hint="make someone else admin first",
            )
        session.delete(member)
        access.cp.audit.record(
            session, access.ctx, org_id=access.org.id, action="member.remove", target=user.email
        )

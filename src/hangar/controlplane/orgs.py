"""Organizations and their members."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.auth.policy import IdentityPolicy, load_policy, parse_assignments, save_policy
from hangar.auth.rbac import CONFIGURABLE, NO_ROLE, Grants, Permission, Role
from hangar.auth.sessions import SessionService
from hangar.auth.tokens import grants_from_rows, new_id
from hangar.controlplane.changes import change
from hangar.controlplane.offboard import offboard
from hangar.controlplane.state import ControlPlane
from hangar.domain.names import normalize_email, validate_dns_label
from hangar.errors import Conflict, NotFound, ValidationError
from hangar.store.tables import IdentityProvider, Membership, Org, OrgGrant, User, UserSession

__all__ = [
    "add_member",
    "create_org",
    "find_org",
    "get_grants",
    "get_org",
    "get_policy",
    "list_members",
    "list_orgs",
    "named_or_only",
    "remove_member",
    "set_grants",
    "set_policy",
    "set_role",
]

Member = tuple[Membership, User]


def find_org(cp: ControlPlane, name: str) -> Org:
    """The organization named ``name``; NotFound if there is none."""
    with cp.db.read() as session:
        org = session.execute(select(Org).where(Org.name == name)).scalar_one_or_none()
    if org is None:
        raise NotFound(f"organization {name!r} not found")
    return org


def get_org(cp: ControlPlane, org_id: str) -> Org | None:
    with cp.db.read() as session:
        return session.get(Org, org_id)


def named_or_only(
    cp: ControlPlane, name: str | None, visible: list[str], *, ask: str, hint: str
) -> Org:
    """The organization named ``name``, or else the only one of ``visible``.

    ValidationError(``ask``) when no name is given and there is not exactly one.
    """
    if name is not None:
        return find_org(cp, name)
    if len(visible) != 1:
        raise ValidationError(ask, hint=hint)
    org = get_org(cp, visible[0])
    if org is None:
        raise NotFound("organization not found")
    return org


def list_orgs(cp: ControlPlane, org_ids: list[str], after: str | None, limit: int) -> list[Org]:
    """Of ``org_ids``, up to ``limit`` organizations named after ``after``, by name."""
    query = select(Org).where(Org.id.in_(org_ids)).order_by(Org.name).limit(limit)
    if after is not None:
        query = query.where(Org.name > after)
    with cp.db.read() as session:
        return list(session.execute(query).scalars())


def create_org(cp: ControlPlane, ctx: AuditContext, name: str, *, admin_id: str) -> Org:
    """A new organization whose first admin is ``admin_id``."""
    validate_dns_label(name, what="organization name")
    now = dt.datetime.now(dt.UTC)
    with change(cp, ctx, org_id=None, action="org.create", target=name, wake=False) as (
        session,
        event,
    ):
        if session.execute(select(Org.id).where(Org.name == name)).first():
            raise Conflict(f"organization {name!r} already exists")
        org = Org(id=new_id("org"), name=name, created_at=now)
        session.add(org)
        session.flush()
        session.add(
            Membership(org_id=org.id, user_id=admin_id, role=Role.ADMIN.value, created_at=now)
        )
        event.org_id = org.id
    return org


def list_members(cp: ControlPlane, org: Org, after: str | None, limit: int) -> list[Member]:
    """Up to ``limit`` members whose email sorts after ``after``, by email."""
    query = (
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.org_id == org.id)
        .order_by(User.email)
        .limit(limit)
    )
    if after is not None:
        query = query.where(User.email > after)
    with cp.db.read() as session:
        return [(m, u) for m, u in session.execute(query).all()]


def add_member(cp: ControlPlane, ctx: AuditContext, org: Org, email: str, role: Role) -> Member:
    """``email`` joins ``org`` with ``role`` (the user is made if new)."""
    email = normalize_email(email)
    now = dt.datetime.now(dt.UTC)
    detail = {"role": role.value}
    with change(
        cp, ctx, org_id=org.id, action="member.add", target=email, detail=detail, wake=False
    ) as (session, _):
        user = session.execute(select(User).where(User.email == email)).scalar_one_or_none()
        if user is None:
            user = User(id=new_id("usr"), email=email, is_operator=False, created_at=now)
            session.add(user)
            session.flush()
        elif session.get(Membership, (org.id, user.id)) is not None:
            raise Conflict(
                f"{email} is already a member of {org.name}",
                hint="change the role with `hangar orgs members set-role`",
            )
        member = Membership(org_id=org.id, user_id=user.id, role=role.value, created_at=now)
        session.add(member)
    return member, user


def _member(session: Session, org: Org, email: str) -> Member:
    email = normalize_email(email)
    row = session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.org_id == org.id, User.email == email)
    ).one_or_none()
    if row is None:
        raise NotFound(f"{email} is not a member of {org.name}")
    return row[0], row[1]


def _keep_an_admin(session: Session, org: Org, member: Member) -> None:
    """Conflict if ``member`` is the organization's last admin."""
    membership, user = member
    if membership.role != Role.ADMIN.value:
        return
    others = session.execute(
        select(func.count())
        .select_from(Membership)
        .where(
            Membership.org_id == org.id,
            Membership.role == Role.ADMIN.value,
            Membership.user_id != user.id,
        )
    ).scalar_one()
    if others == 0:
        raise Conflict(
            f"{user.email} is the last admin of {org.name}", hint="make someone else admin first"
        )


def set_role(cp: ControlPlane, ctx: AuditContext, org: Org, email: str, role: Role) -> Member:
    with change(cp, ctx, org_id=org.id, action="member.set_role", wake=False) as (
        session,
        event,
    ):
        member = _member(session, org, email)
        if role is not Role.ADMIN:
            _keep_an_admin(session, org, member)
        membership, user = member
        event.target, event.detail = user.email, {"from": membership.role, "to": role.value}
        membership.role = role.value
    return member


def remove_member(cp: ControlPlane, ctx: AuditContext, org: Org, email: str) -> None:
    """Remove a member and, at once, their sessions, tokens and devices (``offboard``)."""
    with change(cp, ctx, org_id=org.id, action="member.remove") as (session, event):
        member = _member(session, org, email)
        _keep_an_admin(session, org, member)
        session.delete(member[0])
        session.flush()
        event.target = member[1].email
        event.detail = offboard(session, member[1], org_id=org.id).detail()


def _grants(session: Session, org: Org) -> Grants:
    rows = session.execute(
        select(OrgGrant.org_id, OrgGrant.permission, OrgGrant.least_role).where(
            OrgGrant.org_id == org.id
        )
    ).all()
    return grants_from_rows([(r[0], r[1], r[2]) for r in rows]).get(org.id, Grants())


def get_grants(cp: ControlPlane, org: Org) -> Grants:
    """Which roles of ``org`` hold each configurable permission."""
    with cp.db.read() as session:
        return _grants(session, org)


Change = tuple[Role, Permission]


def set_grants(
    cp: ControlPlane,
    ctx: AuditContext,
    org: Org,
    *,
    grant: list[Change],
    revoke: list[Change],
) -> Grants:
    """Give (``grant``) or take (``revoke``) configurable permissions to or from roles.

    Revocations apply first, then grants; a request whose result would undo
    one of its own parts (granting and revoking the same thing) is refused
    and changes nothing. Recorded as ``org.set_grants`` with before and after.
    """
    for _, perm in grant + revoke:
        if perm not in CONFIGURABLE:
            raise ValidationError(
                f"{perm.label} cannot be granted per organization",
                hint="configurable: " + ", ".join(p.label for p in CONFIGURABLE),
            )
    if not grant and not revoke:
        raise ValidationError("nothing to change: give grants or revocations")
    now = dt.datetime.now(dt.UTC)
    with change(cp, ctx, org_id=org.id, action="org.set_grants", target=org.name, wake=False) as (
        session,
        event,
    ):
        before = _grants(session, org)
        after = before
        for role, perm in revoke:
            after = after.revoke(perm, role)
        for role, perm in grant:
            after = after.grant(perm, role)
        for role, perm in revoke:
            if after.holds(perm, role):
                raise ValidationError(
                    f"the request both grants and revokes {perm.label} for {role}",
                    hint="roles above one that holds a permission hold it too",
                )
        for perm in CONFIGURABLE:
            row = session.get(OrgGrant, (org.id, perm.label))
            if perm not in after.least:
                if row is not None:
                    session.delete(row)
                continue
            least = after.least[perm]
            value = least.value if least is not None else NO_ROLE
            if row is None:
                session.add(
                    OrgGrant(org_id=org.id, permission=perm.label, least_role=value, updated_at=now)
                )
            elif row.least_role != value:
                row.least_role, row.updated_at = value, now
        event.detail = {"from": before.as_labels(), "to": after.as_labels()}
    return after


def get_policy(cp: ControlPlane, org: Org) -> IdentityPolicy:
    """``org``'s identity policy (defaults for keys never set)."""
    with cp.db.read() as session:
        return load_policy(session, org.id)


def set_policy(
    cp: ControlPlane, ctx: AuditContext, org: Org, assignments: dict[str, Any], unset: list[str]
) -> IdentityPolicy:
    """Change keys of ``org``'s identity policy; recorded as ``org.set_policy`` with each change.

    Every key and value is checked before anything is written; a policy
    naming an identity provider that does not exist is refused.
    """
    with change(cp, ctx, org_id=org.id, action="org.set_policy", target=org.name, wake=False) as (
        session,
        event,
    ):
        before = load_policy(session, org.id)
        after = parse_assignments(before, assignments, unset=unset)
        if (
            after.sso_idp
            and not session.execute(
                select(IdentityProvider.id).where(IdentityProvider.name == after.sso_idp)
            ).first()
        ):
            raise ValidationError(
                f"no identity provider is called {after.sso_idp!r}", hint="hangar idps list"
            )
        event.detail = save_policy(session, org.id, before, after)
        ended = _end_sessions_outside(session, org.id, before, after)
        if ended:
            event.detail["sessions_ended"] = ended
    return after


def _end_sessions_outside(
    session: Session, org_id: str, before: IdentityPolicy, after: IdentityPolicy
) -> int:
    """End the members' sessions a tightened policy no longer admits (how many).

    A session's organizations are fixed when it is made: one made through
    another provider (or for an address now outside the domains) would
    otherwise keep reaching the organization for the rest of its lifetime.
    """
    if after.sso_idp == before.sso_idp and after.email_domains == before.email_domains:
        return 0
    now = dt.datetime.now(dt.UTC)
    rows = session.execute(
        select(UserSession.id, UserSession.idp, User.email)
        .join(Membership, Membership.user_id == UserSession.user_id)
        .join(User, User.id == UserSession.user_id)
        .where(
            Membership.org_id == org_id,
            UserSession.revoked_at.is_(None),
            UserSession.expires_at > now,
        )
    ).all()
    ended = 0
    for session_id, idp, email in rows:
        if (after.sso_idp and idp != after.sso_idp) or not after.allows_email(email):
            ended += SessionService.revoke(session, session_id, now)
    return ended

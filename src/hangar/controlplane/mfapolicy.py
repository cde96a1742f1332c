"""Organizations' second-factor policy: read, change, and enforce it.

``enforce_member`` refuses a member of an organization that requires a
second factor when they have none that satisfies it (unless the
organization accepts their identity provider's MFA and their session
carries it). ``enforce_step_up`` refuses a sensitive action whose
credential's second factor is older than the organization allows. Both
audit their refusals; a waiver (an automation token where the organization
allows them, an operator without any factor on an installation-wide action)
is audited as ``auth.step-up-waived``: nothing passes unrecorded.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from hangar.audit.log import AuditContext
from hangar.auth.stepup import MfaPolicy, MfaRequired, require_fresh_factor
from hangar.auth.tokens import Principal
from hangar.controlplane.changes import change
from hangar.controlplane.factors import AUTOMATION_KINDS, factor_kinds, step_up_time
from hangar.controlplane.state import ControlPlane
from hangar.errors import PermissionDenied, audited
from hangar.store.tables import Membership, Org, OrgMfaPolicy, Token

__all__ = ["enforce_member", "enforce_step_up", "get_policy", "set_policy", "strictest_org"]


def _policy(row: OrgMfaPolicy | None) -> MfaPolicy:
    if row is None:
        return MfaPolicy()
    return MfaPolicy(
        require_mfa=row.require_mfa,
        accept_idp_mfa=row.accept_idp_mfa,
        allow_totp=row.allow_totp,
        step_up_minutes=row.step_up_minutes,
        automation_tokens=row.automation_tokens,
    )


def strictest_org(cp: ControlPlane, user_id: str) -> Org | None:
    """Of the person's organizations that require a second factor, the shortest step-up window."""
    with cp.db.read() as session:
        return session.execute(
            select(Org)
            .join(OrgMfaPolicy, OrgMfaPolicy.org_id == Org.id)
            .join(Membership, Membership.org_id == Org.id)
            .where(Membership.user_id == user_id, OrgMfaPolicy.require_mfa != "off")
            .order_by(OrgMfaPolicy.step_up_minutes, Org.name)
            .limit(1)
        ).scalar_one_or_none()


def get_policy(cp: ControlPlane, org_id: str) -> MfaPolicy:
    with cp.db.read() as session:
        return _policy(session.get(OrgMfaPolicy, org_id))


def _satisfies(
    policy: MfaPolicy, kinds: set[str], principal: Principal, verified_at: dt.datetime | None
) -> bool:
    if policy.satisfied_by(kinds):
        return True
    # The identity provider's own MFA, as the session's sign-in recorded it.
    return policy.accept_idp_mfa and principal.session_id is not None and verified_at is not None


def enforce_member(cp: ControlPlane, ctx: AuditContext, principal: Principal, org: Org) -> None:
    """Raise ``MfaRequired`` (audited) if ``org`` requires a factor this member lacks."""
    with cp.db.read() as session:
        policy = _policy(session.get(OrgMfaPolicy, org.id))
        if not policy.enforced:
            return
        kinds = factor_kinds(session, principal.user_id)
    if _satisfies(policy, kinds, principal, principal.mfa_verified_at):
        return
    need = "a security key" if policy.require_mfa == "webauthn" else "a second factor"
    exc = MfaRequired(
        f"organization {org.name!r} requires {need}, and you have none enrolled that counts",
        hint="enrol one: `hangar auth factors add-webauthn`"
        + ("" if policy.require_mfa == "webauthn" else " (or `add-totp`)"),
    )
    _refuse(cp, ctx, org.id, "auth.mfa-required", org.name, exc)
    raise audited(exc)


def enforce_step_up(
    cp: ControlPlane,
    ctx: AuditContext,
    principal: Principal,
    *,
    org: Org | None,
    action: str,
) -> None:
    """Raise ``StepUpRequired`` (audited) unless ``action`` may go ahead without one.

    ``org`` None: an installation-wide action (KEK rotation), held to the
    default window whenever the operator has a second factor.
    """
    with cp.db.read() as session:
        kind = session.execute(
            select(Token.kind).where(Token.id == principal.token_id)
        ).scalar_one_or_none()
        policy = _policy(session.get(OrgMfaPolicy, org.id)) if org is not None else MfaPolicy()
        has_factor = bool(factor_kinds(session, principal.user_id))
        fresh = step_up_time(session, principal)
    org_id = org.id if org is not None else None
    target = org.name if org is not None else "installation"
    if org is not None and not policy.enforced:
        return
    if org is None and not has_factor:
        _waive(cp, ctx, org_id, action, target, "the operator has no second factor enrolled")
        return
    if kind in AUTOMATION_KINDS:
        if policy.automation_tokens:
            _waive(cp, ctx, org_id, action, target, f"{kind} token (automation_tokens = true)")
            return
        exc: PermissionDenied = PermissionDenied(
            f"{action} needs a fresh second factor, which an {kind} token cannot carry",
            hint="use your own login and `hangar auth step-up`, or an admin sets "
            "`hangar orgs policy set ORG automation_tokens=true`",
        )
        _refuse(cp, ctx, org_id, "auth.step-up", target, exc, wanted=action)
        raise audited(exc)
    stepped = Principal(
        user_id=principal.user_id,
        email=principal.email,
        is_operator=principal.is_operator,
        token_id=principal.token_id,
        scope=principal.scope,
        session_id=principal.session_id,
        mfa_verified_at=fresh,
    )
    try:
        require_fresh_factor(stepped, policy.step_up_minutes)
    except PermissionDenied as exc:
        _refuse(cp, ctx, org_id, "auth.step-up", target, exc, wanted=action)
        raise audited(exc) from None


def set_policy(
    cp: ControlPlane,
    ctx: AuditContext,
    principal: Principal,
    org: Org,
    changes: dict[str, Any],
) -> MfaPolicy:
    """Apply ``changes`` (validated first; nothing changes on an error)."""
    before = get_policy(cp, org.id)
    after = before.with_changes(changes)
    with cp.db.read() as session:
        kinds = factor_kinds(session, principal.user_id)
    if after.enforced and not _satisfies(after, kinds, principal, principal.mfa_verified_at):
        raise MfaRequired(
            "this policy would lock you out: you have no second factor it accepts",
            hint="enrol one first: `hangar auth factors add-webauthn`",
        )
    # Loosening or tightening the policy is itself a sensitive action, held to
    # the shorter of the two policies' windows.
    if before.enforced or after.enforced:
        minutes = min(before.step_up_minutes, after.step_up_minutes)
        _step_up_under(cp, ctx, principal, org, minutes, "org.policy")
    with change(cp, ctx, org_id=org.id, action="org.policy", target=org.name, wake=False) as (
        session,
        event,
    ):
        row = session.get(OrgMfaPolicy, org.id)
        if row is None:
            row = OrgMfaPolicy(org_id=org.id)
            session.add(row)
        row.require_mfa = after.require_mfa
        row.accept_idp_mfa = after.accept_idp_mfa
        row.allow_totp = after.allow_totp
        row.step_up_minutes = after.step_up_minutes
        row.automation_tokens = after.automation_tokens
        row.updated_at = dt.datetime.now(dt.UTC)
        event.detail = {
            "changed": {k: v for k, v in after.as_dict().items() if before.as_dict()[k] != v},
        }
    return after


def _step_up_under(
    cp: ControlPlane,
    ctx: AuditContext,
    principal: Principal,
    org: Org,
    minutes: int,
    action: str,
) -> None:
    with cp.db.read() as session:
        fresh = step_up_time(session, principal)
    stepped = Principal(
        user_id=principal.user_id,
        email=principal.email,
        is_operator=principal.is_operator,
        token_id=principal.token_id,
        scope=principal.scope,
        session_id=principal.session_id,
        mfa_verified_at=fresh,
    )
    try:
        require_fresh_factor(stepped, minutes)
    except PermissionDenied as exc:
        _refuse(cp, ctx, org.id, "auth.step-up", org.name, exc, wanted=action)
        raise audited(exc) from None


def _refuse(
    cp: ControlPlane,
    ctx: AuditContext,
    org_id: str | None,
    action: str,
    target: str,
    exc: PermissionDenied,
    *,
    wanted: str | None = None,
) -> None:
    detail: dict[str, Any] = {"reason": exc.message}
    if wanted:
        detail["for"] = wanted
    with cp.db.write() as session:
        cp.audit.record(
            session, ctx, org_id=org_id, action=action, target=target, outcome="denied",
            detail=detail,
        )  # fmt: skip


def _waive(
    cp: ControlPlane,
    ctx: AuditContext,
    org_id: str | None,
    action: str,
    target: str,
    reason: str,
) -> None:
    with cp.db.write() as session:
        cp.audit.record(
            session,
            ctx,
            org_id=org_id,
            action="auth.step-up-waived",
            target=target,
            detail={"for": action, "reason": reason},
        )

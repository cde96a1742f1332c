"""``/v1/orgs/{org}/policy``: an organization's identity policy (its second-factor keys)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body
from pydantic import BaseModel

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import mfapolicy

router = GuardedRouter(prefix="/v1/orgs", tags=["orgs"])


class PolicyOut(BaseModel):
    require_mfa: str
    accept_idp_mfa: bool
    allow_totp: bool
    step_up_minutes: int
    automation_tokens: bool


@router.get("/{org}/policy", response_model=PolicyOut, summary="Show the identity policy")
def show_policy(org: str, access: Annotated[Access, requires(Permission.ORGS_READ)]) -> PolicyOut:
    assert access.org is not None
    return PolicyOut(**mfapolicy.get_policy(access.cp, access.org.id).as_dict())


@router.patch(
    "/{org}/policy",
    response_model=PolicyOut,
    summary="Change the identity policy (a sensitive action: it needs a fresh second factor)",
)
def set_policy(
    org: str,
    changes: Annotated[dict[str, Any], Body(max_length=16)],
    access: Annotated[Access, requires(Permission.ORGS_WRITE)],
) -> PolicyOut:
    assert access.org is not None
    after = mfapolicy.set_policy(access.cp, access.ctx, access.principal, access.org, changes)
    return PolicyOut(**after.as_dict())

"""Operators disable and enable users (offboarding everywhere at once)."""

from __future__ import annotations

from typing import Annotated, Any

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import mfapolicy, users

router = GuardedRouter(prefix="/v1/users", tags=["users"])


@router.post("/{email}/disable", summary="Disable a user: end their sessions, tokens, devices")
def disable_user(
    email: str, access: Annotated[Access, requires(Permission.USERS_WRITE)]
) -> dict[str, Any]:
    return users.disable_user(access.cp, access.ctx, email[:254])


@router.post("/{email}/enable", status_code=204, summary="Let a disabled user sign in again")
def enable_user(email: str, access: Annotated[Access, requires(Permission.USERS_WRITE)]) -> None:
    # Letting someone back in is sensitive; disabling (offboarding) stays quick.
    mfapolicy.enforce_step_up(
        access.cp, access.ctx, access.principal, org=None, action="users.enable"
    )
    users.enable_user(access.cp, access.ctx, email[:254])

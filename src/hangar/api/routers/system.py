"""The installation itself: key rotation (installation operators only)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import mfapolicy
from hangar.controlplane.system import rotate_keys

router = GuardedRouter(prefix="/v1/system", tags=["system"])


class RotationOut(BaseModel):
    kek_id: str
    retired: list[str]
    rewrapped: int


@router.post(
    "/rotate-kek",
    response_model=RotationOut,
    summary="A new key-encryption key; every wrapped key re-wrapped; the old one retired",
)
def rotate(access: Annotated[Access, requires(Permission.KEYS_ROTATE)]) -> RotationOut:
    access.check(access.perm, org=None, shown="keys")
    mfapolicy.enforce_step_up(
        access.cp, access.ctx, access.principal, org=None, action=access.perm.label
    )
    done = rotate_keys(access.cp, access.ctx)
    return RotationOut(kek_id=done.kek_id, retired=done.retired, rewrapped=done.rewrapped)

"""The installation itself: rotating the key-encryption key, audited."""

from __future__ import annotations

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.keys import Rotation, rotate_kek
from hangar.controlplane.state import ControlPlane

__all__ = ["rotate_keys"]


def rotate_keys(cp: ControlPlane, ctx: AuditContext) -> Rotation:
    """A new KEK, every wrapped key re-wrapped under it, the old one retired; then recorded.

    The rotation commits in steps of its own, so its event is written once
    it has finished.
    """
    done = rotate_kek(cp)
    detail = {"retired": done.retired, "rewrapped": done.rewrapped}
    with change(
        cp, ctx, org_id=None, action="kek.rotate", target=done.kek_id, detail=detail, wake=False
    ):
        pass
    return done

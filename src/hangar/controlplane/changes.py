"""Every change a person makes: one transaction, its audit event, then the wake-up.

``change`` is the only way a service writes on a person's behalf::

    with change(cp, ctx, org_id=app.org_id, action="release.create", target=name) as (
        session,
        event,
    ):
        release = create_release(session, ...)
        event.detail["digest"] = release.image_digest

The block's writes and the audit event commit together or not at all: if
the block raises, nothing is recorded and nothing changes; if the event
cannot be written, the change rolls back with it ("no event, no change").
Only after the commit are the server's loops woken, so they never look for
a change that is not there yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext
from hangar.controlplane.state import ControlPlane

__all__ = ["Event", "change", "record_refusal"]


@dataclass
class Event:
    """The audit event a change records; the block may fill in its target and detail."""

    action: str
    target: str
    org_id: str | None
    detail: dict[str, Any] = field(default_factory=dict)


@contextmanager
def change(
    cp: ControlPlane,
    ctx: AuditContext,
    *,
    org_id: str | None,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
    wake: bool = True,
) -> Iterator[tuple[Session, Event]]:
    """A write transaction that records ``action`` when the block finishes.

    ``wake=False`` for changes the loops do not act on (members, tokens, leases).
    """
    event = Event(action=action, target=target, org_id=org_id, detail=dict(detail or {}))
    with cp.db.write() as session:
        yield session, event
        if not event.target:
            raise ValueError(f"the {event.action} event names no target")
        cp.audit.record(
            session,
            ctx,
            org_id=event.org_id,
            action=event.action,
            target=event.target,
            detail=event.detail,
        )
    if wake:
        cp.wake()


def record_refusal(
    cp: ControlPlane,
    ctx: AuditContext,
    *,
    org_id: str | None,
    action: str,
    target: str,
    reason: str,
    outcome: str = "denied",
    status: int | None = None,
) -> None:
    """Record a refused attempt, in a transaction of its own: the attempt changed nothing.

    ``outcome`` is "denied" (known caller, not allowed) or "failure" (not
    authenticated); ``status`` is the HTTP status answered, when there is one.
    """
    detail: dict[str, object] = {"reason": reason}
    if status is not None:
        detail["status"] = status
    with cp.db.write() as session:
        cp.audit.record(
            session,
            ctx,
            org_id=org_id,
            action=action,
            target=target,
            outcome=outcome,
            detail=detail,
        )

"""Writing and reading the audit trail in the store.

``AuditLog.record`` appends an event inside the caller's transaction, so the
event and the change it describes commit together or not at all: if the event
cannot be written, the change fails too (fail closed). Checkpoints signed in a
transaction go to the witnesses once it commits (never when it rolls back).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.audit.chain import (
    GENESIS,
    SYSTEM_CHAIN,
    Checkpoint,
    Event,
    VerifyResult,
    checkpoint_message,
    event_hash,
    verify_chain,
)
from hangar.audit.witness import Witnesses
from hangar.crypto.signing import AuditSigner
from hangar.store.tables import AuditCheckpoint, AuditEvent, AuditHead

__all__ = ["AuditContext", "AuditLog", "chain_for"]


def chain_for(org_id: str | None) -> str:
    return org_id or SYSTEM_CHAIN


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class AuditContext:
    """Who is acting and from where: filled in once per request."""

    actor: str
    token_id: str | None
    request_id: str | None
    client_addr: str | None


def row_to_event(row: AuditEvent) -> Event:
    return Event(
        chain=row.chain,
        seq=row.seq,
        time=row.time,
        actor=row.actor,
        token_id=row.token_id,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        request_id=row.request_id,
        client_addr=row.client_addr,
        detail=json.loads(row.detail),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


_PENDING = "hangar.audit.pending_checkpoints"


class AuditLog:
    def __init__(
        self,
        signer: AuditSigner,
        *,
        checkpoint_every: int = 100,
        witnesses: Witnesses | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self._signer = signer
        self.checkpoint_every = checkpoint_every
        self.witnesses = witnesses or Witnesses([])

    def record(
        self,
        session: Session,
        ctx: AuditContext,
        *,
        org_id: str | None,
        action: str,
        target: str,
        outcome: str = "success",
        detail: dict[str, Any] | None = None,
    ) -> Event:
        """Append one event to the organization's chain in ``session``'s transaction."""
        chain = chain_for(org_id)
        head = session.execute(
            select(AuditHead).where(AuditHead.chain == chain).with_for_update()
        ).scalar_one_or_none()
        if head is None:
            head = AuditHead(chain=chain, seq=0, hash=GENESIS, checkpointed_seq=0)
            session.add(head)
        event = Event(
            chain=chain,
            seq=head.seq + 1,
            time=_now(),
            actor=ctx.actor,
            token_id=ctx.token_id,
            action=action,
            target=target,
            outcome=outcome,
            request_id=ctx.request_id,
            client_addr=ctx.client_addr,
            detail=detail or {},
            prev_hash=head.hash,
        )
        digest = event_hash(head.hash, event.hashed_fields())
        session.add(
            AuditEvent(
                chain=chain,
                seq=event.seq,
                time=event.time,
                actor=event.actor,
                token_id=event.token_id,
                action=action,
                target=target,
                outcome=outcome,
                request_id=event.request_id,
                client_addr=event.client_addr,
                detail=json.dumps(event.detail, sort_keys=True),
                prev_hash=head.hash,
                hash=digest,
            )
        )
        head.seq, head.hash = event.seq, digest
        if event.seq - head.checkpointed_seq >= self.checkpoint_every:
            self._checkpoint(session, head)
        session.flush()
        return Event(**{**event.__dict__, "hash": digest})

    def _checkpoint(self, session: Session, head: AuditHead) -> None:
        time = _now()
        signature = self._signer.sign(checkpoint_message(head.chain, head.seq, head.hash, time))
        session.add(
            AuditCheckpoint(
                chain=head.chain,
                seq=head.seq,
                head_hash=head.hash,
                time=time,
                signature=signature.hex(),
            )
        )
        head.checkpointed_seq = head.seq
        if self.witnesses:
            self._witness_after_commit(
                session, Checkpoint(head.chain, head.seq, head.hash, time, signature.hex())
            )

    def _witness_after_commit(self, session: Session, checkpoint: Checkpoint) -> None:
        pending: list[Checkpoint] | None = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = []

            def committed(_: Session) -> None:
                done = list(pending)
                pending.clear()
                self.witnesses.publish(done)

            def rolled_back(_: Session) -> None:
                pending.clear()

            sa_event.listen(session, "after_commit", committed)
            sa_event.listen(session, "after_rollback", rolled_back)
        pending.append(checkpoint)

    def checkpoint_all(self, session: Session) -> int:
        """Sign the head of every chain that moved since its last checkpoint."""
        heads = session.execute(select(AuditHead).with_for_update()).scalars().all()
        moved = [h for h in heads if h.seq > h.checkpointed_seq]
        for head in moved:
            self._checkpoint(session, head)
        return len(moved)


def iter_events(
    session: Session, chain: str, *, after_seq: int = 0, batch: int = 1000
) -> Iterator[Event]:
    """Every event of ``chain`` in sequence order, read in batches."""
    while True:
        rows = (
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.chain == chain, AuditEvent.seq > after_seq)
                .order_by(AuditEvent.seq)
                .limit(batch)
            )
            .scalars()
            .all()
        )
        for row in rows:
            yield row_to_event(row)
        if len(rows) < batch:
            return
        after_seq = rows[-1].seq


def load_checkpoints(session: Session, chain: str) -> list[Checkpoint]:
    rows = session.execute(
        select(AuditCheckpoint).where(AuditCheckpoint.chain == chain).order_by(AuditCheckpoint.seq)
    ).scalars()
    return [Checkpoint(r.chain, r.seq, r.head_hash, r.time, r.signature) for r in rows]


def chains(session: Session) -> list[str]:
    names = set(session.execute(select(AuditHead.chain)).scalars())
    names |= set(session.execute(select(AuditEvent.chain).distinct()).scalars())
    names |= set(session.execute(select(AuditCheckpoint.chain).distinct()).scalars())
    return sorted(names)


def verify_stored_chain(session: Session, chain: str, signer_public: Any) -> VerifyResult:
    return verify_chain(
        chain, iter_events(session, chain), load_checkpoints(session, chain), signer_public
    )

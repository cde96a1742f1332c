"""The audit hash chain: canonical encoding, hashing and verification (pure).

Each organization has its own chain (so an organization can verify its own
trail without seeing anyone else's); events that belong to no organization,
such as a request with a forged token, go to the ``system`` chain.

An event's hash is ``SHA-256(prev_hash || canonical_json(fields))`` where the
fields include the chain name and sequence number, so editing, dropping or
reordering any event breaks the chain at that point. A checkpoint is an
Ed25519 signature over ``canonical_json({chain, seq, head_hash, time})``;
cutting events off the tail behind the newest checkpoint is detected because
the signed head no longer exists. Checkpoints a witness recorded outside the
database (see ``witness``) are held against the chain the same way, so
deleting the checkpoints from the database as well, or a whole chain, is
detected too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hangar.crypto.signing import verify_signature
from hangar.errors import IntegrityError

__all__ = [
    "GENESIS",
    "SYSTEM_CHAIN",
    "Checkpoint",
    "Event",
    "VerifyResult",
    "canonical",
    "checkpoint_message",
    "event_hash",
    "verify_chain",
]

GENESIS = "0" * 64
SYSTEM_CHAIN = "system"

HASHED_FIELDS = (
    "chain",
    "seq",
    "time",
    "actor",
    "token_id",
    "action",
    "target",
    "outcome",
    "request_id",
    "client_addr",
    "detail",
)


def canonical(value: Mapping[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Event:
    chain: str
    seq: int
    time: str
    actor: str
    token_id: str | None
    action: str
    target: str
    outcome: str
    request_id: str | None
    client_addr: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""

    def hashed_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HASHED_FIELDS}


@dataclass(frozen=True)
class Checkpoint:
    chain: str
    seq: int
    head_hash: str
    time: str
    signature: str


def event_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\x00" + canonical(fields)).hexdigest()


def checkpoint_message(chain: str, seq: int, head_hash: str, time: str) -> bytes:
    return canonical({"chain": chain, "seq": seq, "head_hash": head_hash, "time": time})


def verify_checkpoint(public_key: Ed25519PublicKey, cp: Checkpoint) -> None:
    """Raise ``IntegrityError`` unless ``cp`` was signed by ``public_key`` as it reads."""
    try:
        verify_signature(
            public_key,
            bytes.fromhex(cp.signature),
            checkpoint_message(cp.chain, cp.seq, cp.head_hash, cp.time),
        )
    except ValueError as exc:  # a signature that is not even hex
        raise IntegrityError(f"checkpoint {cp.seq} of {cp.chain}: malformed signature") from exc


@dataclass(frozen=True)
class VerifyResult:
    chain: str
    ok: bool
    events: int
    checkpoints: int
    first_bad_seq: int | None = None
    reason: str = ""
    witnessed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "ok": self.ok,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "witnessed": self.witnessed,
        }


def verify_chain(
    chain: str,
    events: Iterable[Event],
    checkpoints: Iterable[Checkpoint],
    public_key: Ed25519PublicKey,
    witnessed: Iterable[Checkpoint] = (),
) -> VerifyResult:
    """Check one chain; report the first sequence number where it breaks.

    ``events`` must be in the order the store returns by sequence number.
    ``witnessed`` are checkpoints of this chain a witness recorded (their
    signatures already checked): the chain must still reach each of them,
    with the same head.
    """
    expected_seq = 1
    prev = GENESIS
    hashes: dict[int, str] = {}
    count = 0

    def bad(seq: int, reason: str) -> VerifyResult:
        return VerifyResult(chain, False, count, 0, seq, reason)

    for event in events:
        count += 1
        if event.chain != chain:
            return bad(event.seq, f"event {event.seq} belongs to chain {event.chain!r}")
        if event.seq != expected_seq:
            if event.seq > expected_seq:
                return bad(expected_seq, f"event {expected_seq} is missing")
            return bad(event.seq, f"event {event.seq} is out of order")
        if event.prev_hash != prev:
            return bad(event.seq, f"event {event.seq} does not link to event {event.seq - 1}")
        if event_hash(prev, event.hashed_fields()) != event.hash:
            return bad(event.seq, f"event {event.seq} was altered")
        hashes[event.seq] = event.hash
        prev = event.hash
        expected_seq += 1

    last_seq = expected_seq - 1
    cps = sorted(checkpoints, key=lambda c: c.seq)
    for cp in cps:
        if cp.chain != chain:
            return bad(cp.seq, f"checkpoint {cp.seq} belongs to chain {cp.chain!r}")
        try:
            verify_checkpoint(public_key, cp)
        except IntegrityError:
            return bad(cp.seq, f"checkpoint at event {cp.seq} has a bad signature")
        if cp.seq > last_seq:
            return bad(
                last_seq + 1,
                f"events {last_seq + 1}..{cp.seq} were removed (signed checkpoint at {cp.seq})",
            )
        if hashes[cp.seq] != cp.head_hash:
            return bad(cp.seq, f"event {cp.seq} does not match its signed checkpoint")
    seen = sorted(witnessed, key=lambda c: c.seq)
    for cp in seen:
        if cp.chain != chain:
            return bad(cp.seq, f"the witnessed checkpoint {cp.seq} belongs to chain {cp.chain!r}")
    if seen and count == 0:
        return bad(1, f"the chain is missing: a witness saw it reach event {seen[-1].seq}")
    for cp in seen:
        if cp.seq > last_seq:
            return bad(
                last_seq + 1,
                f"the chain ends at event {last_seq}, but a witness saw it reach event "
                f"{seen[-1].seq}: events {last_seq + 1}..{seen[-1].seq} were removed",
            )
        if hashes[cp.seq] != cp.head_hash:
            return bad(cp.seq, f"event {cp.seq} does not match the checkpoint a witness saw")
    return VerifyResult(chain, True, count, len(cps), witnessed=len(seen))

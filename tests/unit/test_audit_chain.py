from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hangar.audit.chain import (
    GENESIS,
    Checkpoint,
    Event,
    checkpoint_message,
    event_hash,
    verify_chain,
)
from hangar.crypto.signing import AuditSigner, public_key_from_pem

SIGNER = AuditSigner.create()
PUBLIC = public_key_from_pem(SIGNER.public_pem())


def build(n: int, chain: str = "org_x") -> list[Event]:
    events: list[Event] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        e = Event(
            chain=chain,
            seq=seq,
            time=f"2026-01-01T00:00:{seq:02d}+00:00",
            actor="a@example.com",
            token_id="tok",
            action="app.create",
            target=f"app{seq}",
            outcome="success",
            request_id=f"req{seq}",
            client_addr="127.0.0.1",
            detail={"n": seq},
            prev_hash=prev,
        )
        digest = event_hash(prev, e.hashed_fields())
        events.append(dataclasses.replace(e, hash=digest))
        prev = digest
    return events


def sign(event: Event) -> Checkpoint:
    time = "2026-01-02T00:00:00+00:00"
    sig = SIGNER.sign(checkpoint_message(event.chain, event.seq, event.hash, time))
    return Checkpoint(event.chain, event.seq, event.hash, time, sig.hex())


def test_intact_chain_verifies() -> None:
    events = build(10)
    result = verify_chain("org_x", events, [sign(events[4]), sign(events[9])], PUBLIC)
    assert result.ok and result.events == 10 and result.checkpoints == 2


def test_edited_event_is_found() -> None:
    events = build(10)
    events[6] = dataclasses.replace(events[6], target="something-else")
    result = verify_chain("org_x", events, [], PUBLIC)
    assert not result.ok and result.first_bad_seq == 7 and "altered" in result.reason


def test_edit_with_recomputed_hash_breaks_the_next_link() -> None:
    events = build(10)
    forged = dataclasses.replace(events[3], outcome="denied")
    events[3] = dataclasses.replace(
        forged, hash=event_hash(forged.prev_hash, forged.hashed_fields())
    )
    result = verify_chain("org_x", events, [], PUBLIC)
    assert not result.ok and result.first_bad_seq == 5


def test_dropped_event_is_found() -> None:
    events = build(10)
    del events[2]
    result = verify_chain("org_x", events, [], PUBLIC)
    assert not result.ok and result.first_bad_seq == 3 and "missing" in result.reason


def test_reordered_events_are_found() -> None:
    events = build(10)
    events[4], events[5] = events[5], events[4]
    result = verify_chain("org_x", events, [], PUBLIC)
    assert not result.ok and result.first_bad_seq == 5


def test_tail_cut_behind_a_checkpoint_is_found() -> None:
    events = build(10)
    checkpoint = sign(events[9])
    result = verify_chain("org_x", events[:7], [checkpoint], PUBLIC)
    assert not result.ok and result.first_bad_seq == 8 and "removed" in result.reason


def test_forged_checkpoint_is_found() -> None:
    events = build(5)
    other = AuditSigner.create()
    time = "2026-01-02T00:00:00+00:00"
    bad = Checkpoint(
        "org_x",
        5,
        events[4].hash,
        time,
        other.sign(checkpoint_message("org_x", 5, events[4].hash, time)).hex(),
    )
    result = verify_chain("org_x", events, [bad], PUBLIC)
    assert not result.ok and "signature" in result.reason


def test_rewritten_chain_does_not_match_its_checkpoint() -> None:
    events = build(6)
    checkpoint = sign(events[5])
    rewritten = build(6)
    rewritten = [dataclasses.replace(e, time=e.time.replace("00:00:", "00:01:")) for e in rewritten]
    prev = GENESIS
    fixed = []
    for e in rewritten:
        e = dataclasses.replace(e, prev_hash=prev)
        e = dataclasses.replace(e, hash=event_hash(prev, e.hashed_fields()))
        fixed.append(e)
        prev = e.hash
    result = verify_chain("org_x", fixed, [checkpoint], PUBLIC)
    assert not result.ok and result.first_bad_seq == 6


mutations = st.sampled_from(["edit", "drop", "swap", "relink"])


@given(st.integers(min_value=2, max_value=30), st.data(), mutations)
def test_any_single_tampering_is_detected(n: int, data: st.DataObject, how: str) -> None:
    events = build(n)
    i = data.draw(st.integers(0, n - 2))
    if how == "edit":
        events[i] = dataclasses.replace(events[i], actor="mallory@example.com")
    elif how == "drop":
        del events[i]
    elif how == "swap":
        events[i], events[i + 1] = events[i + 1], events[i]
    else:
        events[i + 1] = dataclasses.replace(events[i + 1], prev_hash=GENESIS)
    assert not verify_chain("org_x", events, [], PUBLIC).ok


@pytest.mark.parametrize("n", [0, 1])
def test_short_chains(n: int) -> None:
    assert verify_chain("org_x", build(n), [], PUBLIC).ok

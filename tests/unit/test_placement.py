"""Placement: which host takes a new machine."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hangar.domain.placement import Candidate, place
from hangar.errors import Conflict

REGIONS = ["local", "ams", "iad"]


@st.composite
def hosts(draw: st.DrawFn) -> list[Candidate]:
    numbers = draw(st.lists(st.integers(1, 50), unique=True, max_size=6))
    return [
        Candidate(
            id=f"host_{n}",
            number=n,
            region=draw(st.sampled_from(REGIONS[1:])),
            state=draw(st.sampled_from(["active", "active", "cordoned", "removed"])),
            memory_mb=draw(st.sampled_from([0, 512, 1024, 4096])),
            machines=draw(st.integers(0, 8)),
            used_mb=draw(st.sampled_from([0, 256, 512, 1024, 3072])),
        )
        for n in numbers
    ]


regions = st.sampled_from([None, *REGIONS])
memory = st.sampled_from([64, 256, 512, 1024])


def eligible(host: Candidate, region: str | None, memory_mb: int) -> bool:
    in_region = region in (None, "local") or host.region == region
    return host.state == "active" and in_region and host.has_room(memory_mb)


@given(hosts(), regions, memory)
def test_placement_picks_an_active_host_with_room_in_the_region(
    candidates: list[Candidate], region: str | None, memory_mb: int
) -> None:
    fits = [h for h in candidates if eligible(h, region, memory_mb)]
    if not fits:
        with pytest.raises(Conflict):
            place(candidates, region, memory_mb)
        return
    chosen = place(candidates, region, memory_mb)
    assert chosen.state == "active"  # never a cordoned or removed host
    assert chosen.memory_mb == 0 or chosen.used_mb + memory_mb <= chosen.memory_mb
    assert region in (None, "local") or chosen.region == region
    # The least loaded host that fits, the lowest number among equals.
    assert (chosen.machines, chosen.number) == min((h.machines, h.number) for h in fits)


@given(hosts(), regions, memory, st.randoms())
def test_placement_is_deterministic(
    candidates: list[Candidate], region: str | None, memory_mb: int, rnd: random.Random
) -> None:
    shuffled = list(candidates)
    rnd.shuffle(shuffled)
    try:
        chosen = place(candidates, region, memory_mb)
    except Conflict as exc:
        with pytest.raises(Conflict, match=re.escape(str(exc))):
            place(shuffled, region, memory_mb)
    else:
        assert place(shuffled, region, memory_mb) == chosen


def test_placement_errors_say_what_to_do() -> None:
    full = Candidate("h1", 1, "ams", "active", memory_mb=512, used_mb=512)
    cordoned = Candidate("h2", 2, "ams", "cordoned", memory_mb=0)
    with pytest.raises(Conflict, match="no active host can take a machine in iad") as none:
        place([full, cordoned], "iad", 64)
    assert "uncordon" in str(none.value.hint)
    with pytest.raises(Conflict, match="no active host in ams has 64 MB free") as room:
        place([full, cordoned], "ams", 64)
    assert "less memory" in str(room.value.hint)
    with pytest.raises(Conflict) as anywhere:
        place([cordoned], None, 64)
    assert str(anywhere.value) == "no active host can take a machine"
    # A host that has not said its memory takes anything; "local" means anywhere.
    assert (
        place([full, Candidate("h3", 3, "iad", "active", 0, 40, 1 << 20)], "local", 64).id == "h3"
    )

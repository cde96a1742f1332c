"""Placement (pure): which host a new machine runs on.

The control plane gathers each host's state, region, memory and load from
the store and asks ``place`` for one. The rule:

- only an ``active`` host takes machines (a cordoned or removed one never);
- in the region asked for, if any (``local`` means anywhere: the all-in-one
  host's region);
- with room: its memory less what its machines take, at least the machine's
  memory; a host that has not said how much memory it has takes anything;
- of those, the one with the fewest machines, then the lowest number, so the
  same hosts always give the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hangar.errors import Conflict

__all__ = ["Candidate", "place"]


@dataclass(frozen=True)
class Candidate:
    """A host as placement sees it."""

    id: str
    number: int
    region: str
    state: str  # active, cordoned, removed
    memory_mb: int  # 0: not said; anything fits
    machines: int = 0  # how many machines it has (not counting destroyed ones)
    used_mb: int = 0  # what those machines take

    def has_room(self, memory_mb: int) -> bool:
        return not self.memory_mb or self.used_mb + memory_mb <= self.memory_mb


def place(hosts: Iterable[Candidate], region: str | None, memory_mb: int) -> Candidate:
    """The host for a machine of ``memory_mb`` (in ``region``); Conflict if none can take it."""
    anywhere = not region or region == "local"
    where = "" if anywhere else f" in {region}"
    active = [h for h in hosts if h.state == "active" and (anywhere or h.region == region)]
    if not active:
        raise Conflict(
            f"no active host can take a machine{where}",
            hint="uncordon a host, or add one with `hangar hosts join-token`",
        )
    room = [h for h in active if h.has_room(memory_mb)]
    if not room:
        raise Conflict(
            f"no active host{where} has {memory_mb} MB free for another machine",
            hint="add a host, or give machines less memory in [[vm]]",
        )
    return min(room, key=lambda h: (h.machines, h.number))

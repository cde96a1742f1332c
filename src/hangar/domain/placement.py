"""Placement (pure): which host a new machine runs on.

The control plane gathers each host's state, region, memory and load from
the store and asks ``place`` for one. The rule:

- only an ``active`` host takes machines (a cordoned or removed one never);
- in the region asked for, if any (``local`` means anywhere: the all-in-one
  host's region);
- with room: its memory less what its machines take, at least the machine's
  memory; a host that has not said how much memory it has takes anything;
- of those, the one with the fewest machines, then the lowest number, so the
  same hosts always give the same answer;
- a machine that mounts a volume runs where the volume lives (``pinned``):
  that host, if it is active and has room, or none at all.
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


def place(
    hosts: Iterable[Candidate], region: str | None, memory_mb: int, pinned: str | None = None
) -> Candidate:
    """The host for a machine of ``memory_mb`` (in ``region``); Conflict if none can take it.

    ``pinned``: the id of the only host the machine may run on (its volume's).
    """
    if pinned is not None:
        return _pinned(hosts, pinned, memory_mb)
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


def _pinned(hosts: Iterable[Candidate], pinned: str, memory_mb: int) -> Candidate:
    host = next((h for h in hosts if h.id == pinned), None)
    if host is None or host.state != "active":
        raise Conflict(
            "the machine's volume lives on a host that takes no machines now",
            hint="uncordon that host (`hangar hosts list`), or use a volume on another host",
        )
    if not host.has_room(memory_mb):
        raise Conflict(
            f"the host of the machine's volume has not {memory_mb} MB free for another machine",
            hint="give machines less memory in [[vm]], or use a volume on another host",
        )
    return host

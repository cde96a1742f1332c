"""Machine lifecycle (pure): the states of Fly Machines and the moves between them.

::

    created ──start──▶ starting ──▶ started ──stop──▶ stopping ──▶ stopped
       │                  │            │  ▲                          │
       │                  ▼            │  └──────── restarting ◀─────┤ (restart policy)
       │               failed ◀────────┘ crash loop or start error   │
       └──────────────▶ destroying ──▶ destroyed ◀───────────────────┘
                 replacing: a new version takes a started machine's place

Every transition the control plane records goes through ``transition``, which
raises ``Conflict`` for a move the table does not allow, so no code path can
invent one.
"""

from __future__ import annotations

from enum import StrEnum

from hangar.errors import Conflict

__all__ = ["TERMINAL", "MachineState", "can_transition", "transition"]


class MachineState(StrEnum):
    CREATED = "created"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    RESTARTING = "restarting"
    REPLACING = "replacing"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    FAILED = "failed"


S = MachineState
TERMINAL = frozenset({S.DESTROYED})

_ALLOWED: dict[MachineState, frozenset[MachineState]] = {
    S.CREATED: frozenset({S.STARTING, S.DESTROYING, S.FAILED}),
    S.STARTING: frozenset({S.STARTED, S.STOPPED, S.FAILED, S.DESTROYING}),
    S.STARTED: frozenset(
        {S.STOPPING, S.STOPPED, S.RESTARTING, S.REPLACING, S.FAILED, S.DESTROYING}
    ),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.DESTROYING}),
    S.STOPPED: frozenset({S.STARTING, S.RESTARTING, S.REPLACING, S.FAILED, S.DESTROYING}),
    S.RESTARTING: frozenset({S.STARTED, S.STOPPED, S.FAILED, S.DESTROYING}),
    S.REPLACING: frozenset({S.STARTING, S.STARTED, S.FAILED, S.DESTROYING}),
    S.FAILED: frozenset({S.STARTING, S.REPLACING, S.DESTROYING}),
    S.DESTROYING: frozenset({S.DESTROYED}),
    S.DESTROYED: frozenset(),
}


def can_transition(current: MachineState, target: MachineState) -> bool:
    return target == current or target in _ALLOWED[current]


def transition(current: MachineState, target: MachineState) -> MachineState:
    """``target`` if the move is allowed (staying put always is); Conflict otherwise."""
    if not can_transition(current, target):
        raise Conflict(f"a {current} machine cannot become {target}")
    return target

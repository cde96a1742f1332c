"""Machine lifecycle (pure): the states of Fly Machines and the moves between them.

::

    created ──start──▶ starting ──▶ started ──stop──▶ stopping ──▶ stopped
       │                  │            │  ▲                          │
       │                  ▼            │  └──────── restarting ◀─────┤ (restart policy)
       │               failed ◀────────┘ crash loop or start error   │
       └──────────────▶ destroying ──▶ destroyed ◀───────────────────┘
                 replacing: a new version takes a started machine's place

Every change of a machine's recorded state goes through ``transition``,
which raises ``Conflict`` for a move the table does not allow, so no code
path can invent one.

Most states are recorded from what a host's agent reports (``created`` is
set when the control plane makes the machine). A report is observed
reality, sampled once a tick, so it sees the results of moves, not every
step between them; the table therefore also allows these moves that the
reports make:

- ``created -> started``: the agent started the machine before its first
  report;
- ``created -> stopped``: a short-lived machine (a one-off, a release
  command) ran and exited between two reports;
- ``started -> starting``: a machine meant to run vanished from its host
  (the host rebooted, the runtime lost it) and is on its way back up;
- ``stopped -> started``: a stop was followed by a start, or the restart
  policy brought it back, between two reports; or an agent that restarted
  found it running and adopted it;
- ``failed -> started``: a restart, or a new version, brought a failed
  machine back;
- ``failed -> stopped``: a failed machine that is meant to be stopped is
  reported gone from its host.

So between the states a report can record (``OBSERVED``) every move is
allowed: each is something a host can see happen between two reports. What
stays impossible: going back to ``created``, leaving ``destroyed``, reaching
``destroyed`` except through ``destroying``, and the moves out of the
control plane's own intermediate states (``stopping``, ``restarting``,
``replacing``, ``destroying``) that their meaning rules out.
"""

from __future__ import annotations

from enum import StrEnum

from hangar.errors import Conflict

__all__ = ["OBSERVED", "TERMINAL", "MachineState", "can_transition", "transition"]


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
# The states a host's report records.
OBSERVED = frozenset({S.STARTING, S.STARTED, S.STOPPED, S.FAILED})

_ALLOWED: dict[MachineState, frozenset[MachineState]] = {
    S.CREATED: frozenset({S.STARTING, S.STARTED, S.STOPPED, S.DESTROYING, S.FAILED}),
    S.STARTING: frozenset({S.STARTED, S.STOPPED, S.FAILED, S.DESTROYING}),
    S.STARTED: frozenset(
        {S.STARTING, S.STOPPING, S.STOPPED, S.RESTARTING, S.REPLACING, S.FAILED, S.DESTROYING}
    ),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.DESTROYING}),
    S.STOPPED: frozenset(
        {S.STARTING, S.STARTED, S.RESTARTING, S.REPLACING, S.FAILED, S.DESTROYING}
    ),
    S.RESTARTING: frozenset({S.STARTED, S.STOPPED, S.FAILED, S.DESTROYING}),
    S.REPLACING: frozenset({S.STARTING, S.STARTED, S.FAILED, S.DESTROYING}),
    S.FAILED: frozenset({S.STARTING, S.STARTED, S.STOPPED, S.REPLACING, S.DESTROYING}),
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

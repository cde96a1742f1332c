"""The nouns of a deploy (pure): a release, its machines, and the moves a plan is made of.

``domain.deploys.plan`` reads a ``Release`` and its app's ``Machine``s and
answers a ``DeployPlan``: a few of the moves below, which
``controlplane.deployer`` applies to the store. Each move is plain data, so
a plan can be compared, logged and property-tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hangar.domain.machines import MachineState


class ReleaseStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


FINISHED = frozenset({ReleaseStatus.COMPLETE, ReleaseStatus.FAILED})


@dataclass(frozen=True)
class ReleaseCommand:
    """The release's ``release_command`` and how far it got."""

    command: str
    machine_id: str | None = None  # the one-off machine running it, once made
    started_at: float | None = None


@dataclass(frozen=True)
class Rollout:
    """A running release's progress."""

    previous: int | None  # the version live before it (None: a first deploy)
    touched: tuple[str, ...] = ()  # every machine it moved to the new version
    batch: tuple[str, ...] = ()  # the machines it waits for now
    batch_started_at: float | None = None
    # Out of the edge's rotation, finishing their requests before they move.
    draining: tuple[str, ...] = ()
    drain_started_at: float | None = None
    # Blue-green: the new set, out of rotation until the switch; then the
    # old set, out of rotation and kept until the grace period ends.
    standby: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    switched_at: float | None = None
    edge_at_switch: tuple[int, int] | None = None  # the edge's counts when it switched
    # Rolling back: why, and since when (the release fails once it is done).
    failure: str = ""
    rollback_started_at: float | None = None


@dataclass(frozen=True)
class Release:
    version: int
    strategy: str  # "immediate" moves every machine at once; the others roll
    status: ReleaseStatus
    max_unavailable: float = 1.0  # a count (>= 1) or a fraction of the machines (< 1)
    max_unavailable_percent: float | None = None  # if set: this percentage, not the above
    wait_timeout: float = 300.0
    drain_timeout: float = 0.0  # how long a machine out of rotation finishes its requests
    bluegreen_grace: float = 0.0  # how long a blue-green keeps the old set after the switch
    # Blue-green: switch back if the edge answers more than this share of
    # requests with a 5xx within error_window of the switch (None: off).
    max_error_rate: float | None = None
    error_window: float = 30.0
    min_requests: int = 20  # fewer requests than this in the window decide nothing
    # What the edge has answered for the app so far: (responses, 5xx); None: unknown.
    edge_counts: tuple[int, int] | None = None
    needs_health: bool = False  # the app has checks: ready means passing them
    command: ReleaseCommand | None = None
    previous: int | None = None  # for a pending release: the version live now
    rollout: Rollout | None = None  # for a running release


@dataclass(frozen=True)
class Machine:
    id: str
    version: int  # the version it should run
    desired: str = "started"  # started, stopped or destroyed
    # A MachineState's value, as the store holds it: one the planner does not
    # know (a row from a newer version, say) is simply neither ready nor failed.
    state: str = MachineState.CREATED
    healthy: bool | None = None
    running_version: int | None = None
    exit_code: int | None = None
    detail: str = ""
    one_off: bool = False
    lease_expires_at: float | None = None


@dataclass(frozen=True)
class RunReleaseCommand:
    """Make a one-off machine at the release's version running ``command``."""

    command: str


@dataclass(frozen=True)
class StartRelease:
    """Mark the release running, remembering the version live before it."""

    previous: int | None


@dataclass(frozen=True)
class CreateMachine:
    """Make the app's first machine at ``version``; it is the first batch."""

    version: int


@dataclass(frozen=True)
class CreateStandby:
    """Blue-green: make ``count`` machines at ``version``, out of rotation; they are the batch."""

    count: int
    version: int


@dataclass(frozen=True)
class DrainMachines:
    """Take these machines out of the edge's rotation; they move once drained."""

    machine_ids: tuple[str, ...]


@dataclass(frozen=True)
class Switch:
    """Blue-green: the new set enters rotation and the old set leaves it, at once."""

    retired: tuple[str, ...]


@dataclass(frozen=True)
class SwitchBack:
    """Blue-green, after its switch: the old set serves again at once; the new set goes."""

    machine_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class BatchDone:
    """The batch runs the new version, ready: stop waiting for it."""


@dataclass(frozen=True)
class UpdateMachines:
    """Move these machines to ``version`` (desired started); they are the new batch."""

    machine_ids: tuple[str, ...]
    version: int


@dataclass(frozen=True)
class DestroyMachine:
    machine_id: str


@dataclass(frozen=True)
class RollBack:
    """Put ``version`` back on these machines; ``None``: destroy them (a first deploy,
    or a blue-green's new set). The release then waits for them before it fails."""

    machine_ids: tuple[str, ...]
    version: int | None
    reason: str = ""


@dataclass(frozen=True)
class Revert:
    """Rolling back: put ``version`` back on these machines (drained first, if they served)."""

    machine_ids: tuple[str, ...]
    version: int


@dataclass(frozen=True)
class Wait:
    reason: str


@dataclass(frozen=True)
class MarkReleased:
    """Every serving machine runs the new version: the release is complete."""


@dataclass(frozen=True)
class Fail:
    reason: str


Action = (
    RunReleaseCommand
    | StartRelease
    | CreateMachine
    | CreateStandby
    | DrainMachines
    | Switch
    | SwitchBack
    | BatchDone
    | UpdateMachines
    | DestroyMachine
    | RollBack
    | Revert
    | Wait
    | MarkReleased
    | Fail
)


@dataclass(frozen=True)
class DeployPlan:
    actions: tuple[Action, ...] = ()

"""Deploys (pure): how a release rolls out to an app's machines, one move at a time.

``plan(release, machines, now)`` looks at a release and the machines of its
app and returns the next move as a ``DeployPlan``; ``controlplane.deployer``
applies it to the store. A plan is small (one step of the rollout), so the
deployer calls ``plan`` again on every tick until the release is finished.
Its progress lives in the release itself (``Rollout``, ``ReleaseCommand``),
so a control plane killed mid-deploy resumes (or rolls back) where it was.

The moves, per release:

1. pending, with a ``release_command``: run it once in a one-off machine
   (``RunReleaseCommand``) and wait; when it exited 0 its machine is
   destroyed and the release starts; any other exit, a vanished machine or
   no exit within ``wait_timeout`` destroys it and fails the release
   before a single serving machine changed;
2. pending: remember the version live now and start (``StartRelease``); an
   app with no machines gets its first one at the new version
   (``CreateMachine``);
3. running: wait until the current batch runs the new version, started and
   healthy (every check passing, if the app has checks; ``BatchDone``), then
   update the next batch (``UpdateMachines``): every machine for
   ``immediate``, ``max_unavailable`` of them otherwise; a leased machine is
   skipped until its lease ends;
4. a batch with a failed machine, or still not ready after ``wait_timeout``,
   puts the previous version back on every machine the release touched (a
   first deploy destroys them: there is nothing to go back to) and fails
   the release (``RollBack``, ``Fail``); when no serving machine is left on
   another version the release is ``complete`` (``MarkReleased``).

A finished release plans nothing. One-off machines (other than the release
command's own) and machines being destroyed are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from hangar.domain.machines import MachineState

__all__ = [
    "Action",
    "BatchDone",
    "CreateMachine",
    "DeployPlan",
    "DestroyMachine",
    "Fail",
    "Machine",
    "MarkReleased",
    "Release",
    "ReleaseCommand",
    "ReleaseStatus",
    "RollBack",
    "Rollout",
    "RunReleaseCommand",
    "StartRelease",
    "UpdateMachines",
    "Wait",
    "batch_size",
    "plan",
]


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


@dataclass(frozen=True)
class Release:
    version: int
    strategy: str  # "immediate" moves every machine at once; the others roll
    status: ReleaseStatus
    max_unavailable: float = 1.0  # a count (>= 1) or a fraction of the machines (< 1)
    wait_timeout: float = 300.0
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
    """Put ``version`` back on these machines; ``None``: destroy them (a first deploy)."""

    machine_ids: tuple[str, ...]
    version: int | None


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
    | BatchDone
    | UpdateMachines
    | DestroyMachine
    | RollBack
    | Wait
    | MarkReleased
    | Fail
)


@dataclass(frozen=True)
class DeployPlan:
    actions: tuple[Action, ...] = ()


def batch_size(release: Release, remaining: int, total: int) -> int:
    """How many of ``remaining`` machines (of ``total`` serving ones) one batch moves."""
    if release.strategy == "immediate":
        return remaining
    unavailable = release.max_unavailable
    return max(1, math.ceil(unavailable * total) if unavailable < 1 else int(unavailable))


def _ready(machine: Machine, release: Release) -> bool:
    return (
        machine.running_version == release.version
        and machine.state == MachineState.STARTED
        and (machine.healthy is True if release.needs_health else machine.healthy is not False)
    )


def _serving(machine: Machine) -> bool:
    return machine.desired != "destroyed" and not machine.one_off


def plan(release: Release, machines: Sequence[Machine], now: float) -> DeployPlan:
    """The release's next move. ``machines``: the app's, in the order they were made.

    Only serving machines (not one-off, not being destroyed) are deployed to;
    the release command's machine is looked up among ``machines`` by its id.
    """
    if release.status in FINISHED:
        return DeployPlan()
    actions: list[Action] = []
    serving = [m for m in machines if _serving(m)]
    if release.status == ReleaseStatus.PENDING:
        if release.command is not None:
            done, moves = _release_command(release, release.command, machines, now)
            actions.extend(moves)
            if not done:
                return DeployPlan(tuple(actions))
        actions.append(StartRelease(release.previous))
        if not serving:
            actions.append(CreateMachine(release.version))
        return DeployPlan(tuple(actions))

    rollout = release.rollout or Rollout(previous=None)
    batch = [m for m in serving if m.id in rollout.batch]
    if batch:
        if not all(_ready(m, release) for m in batch):
            failed = [m for m in batch if m.state == MachineState.FAILED]
            started = rollout.batch_started_at
            waited = now - (started if started is not None else now)
            if failed or waited > release.wait_timeout:
                return _roll_back(rollout, serving, failed, waited)
            return DeployPlan((Wait("the batch is not ready yet"),))
        actions.append(BatchDone())

    remaining = [m for m in serving if m.version != release.version]
    if not remaining:
        actions.append(MarkReleased())
        return DeployPlan(tuple(actions))
    # A leased machine is someone else's to drive until the lease ends.
    free = [m for m in remaining if m.lease_expires_at is None or m.lease_expires_at <= now]
    if not free:
        actions.append(Wait("every machine left to update is leased"))
        return DeployPlan(tuple(actions))
    size = batch_size(release, len(free), len(serving))
    actions.append(UpdateMachines(tuple(m.id for m in free[:size]), release.version))
    return DeployPlan(tuple(actions))


def _release_command(
    release: Release, command: ReleaseCommand, machines: Sequence[Machine], now: float
) -> tuple[bool, list[Action]]:
    """Whether the release command exited 0, and the moves that say so or fail the release."""
    if command.machine_id is None:
        return False, [RunReleaseCommand(command.command)]
    machine = next((m for m in machines if m.id == command.machine_id), None)
    started = command.started_at if command.started_at is not None else now
    waited = now - started
    if machine is not None and machine.state not in (MachineState.STOPPED, MachineState.FAILED):
        if waited <= release.wait_timeout:
            return False, [Wait("the release command is running")]
        reason = f"release_command did not finish within {waited:.0f}s"
    elif machine is not None and machine.state == MachineState.STOPPED and machine.exit_code == 0:
        return True, [DestroyMachine(machine.id)]
    elif machine is None:
        reason = "release_command's machine disappeared"
    else:
        reason = (
            f"release_command exited {machine.exit_code}"
            if machine.exit_code is not None
            else f"release_command could not run: {machine.detail}"
        )
        reason += f" (see `hangar logs -m {machine.id}`)"
    moves: list[Action] = [DestroyMachine(machine.id)] if machine is not None else []
    return False, [*moves, Fail(reason)]


def _roll_back(
    rollout: Rollout, serving: Sequence[Machine], failed: Sequence[Machine], waited: float
) -> DeployPlan:
    touched = tuple(m.id for m in serving if m.id in rollout.touched)
    if failed:
        first = failed[0]
        reason = f"machine {first.id} failed: {first.detail or f'exit {first.exit_code}'}"
    else:
        reason = f"machines were not healthy within {waited:.0f}s"
    if rollout.previous is not None:
        reason += f"; rolled back to v{rollout.previous}"
    return DeployPlan((RollBack(touched, rollout.previous), Fail(reason)))

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
3. running, by strategy:

   - ``rolling``: take the next batch (``max_unavailable`` machines, a
     count or a fraction of the serving ones) out of the edge's rotation
     (``DrainMachines``), give their requests ``drain_timeout`` to finish,
     then move them to the new version (``UpdateMachines``) and wait until
     they run it, started and healthy (every check passing, if the app has
     checks; ``BatchDone``); a leased machine is skipped until its lease ends;
   - ``canary``: the same, but the first batch is one machine: no second
     machine moves until the canary passed its checks;
   - ``immediate``: one batch of every machine;
   - ``bluegreen``: a full new set beside the old one (``CreateStandby``),
     out of rotation until every new machine is ready; then the edge
     switches to the new set all at once (``Switch``: the old set leaves
     rotation in the same change); the old set is kept for
     ``bluegreen_grace`` (at least ``drain_timeout``), then destroyed;

4. a batch with a failed machine, or still not ready after ``wait_timeout``,
   rolls back (``RollBack``): the machines that do not serve the new version
   get the previous one at once; those that serve it are drained and given
   the previous version ``max_unavailable`` at a time (``DrainMachines``,
   ``Revert``), as a rolling deploy would; a first deploy, or a blue-green's
   new set, is destroyed instead (it never served, or there is nothing to
   go back to). The release stays running, rolling back, until those
   machines run the previous version again (or are gone), and only then
   fails (``Fail``) saying it rolled back; if they do not within
   ``wait_timeout`` of the failure, it fails saying so.
   When no serving machine is left on another version the release is
   ``complete`` (``MarkReleased``).

``phase(release)`` says, in words, what a running release is doing.
A finished release plans nothing. One-off machines (other than the release
command's own) and machines being destroyed are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hangar.domain.deploy_moves import (
    FINISHED,
    Action,
    BatchDone,
    CreateMachine,
    CreateStandby,
    DeployPlan,
    DestroyMachine,
    DrainMachines,
    Fail,
    Machine,
    MarkReleased,
    Release,
    ReleaseCommand,
    ReleaseStatus,
    Revert,
    RollBack,
    Rollout,
    RunReleaseCommand,
    StartRelease,
    Switch,
    SwitchBack,
    UpdateMachines,
    Wait,
)
from hangar.domain.machines import MachineState

__all__ = [
    "FINISHED",
    "Action",
    "BatchDone",
    "CreateMachine",
    "CreateStandby",
    "DeployPlan",
    "DestroyMachine",
    "DrainMachines",
    "Fail",
    "Machine",
    "MarkReleased",
    "Release",
    "ReleaseCommand",
    "ReleaseStatus",
    "Revert",
    "RollBack",
    "Rollout",
    "RunReleaseCommand",
    "StartRelease",
    "Switch",
    "SwitchBack",
    "UpdateMachines",
    "Wait",
    "batch_size",
    "out_of_rotation",
    "phase",
    "plan",
]


def batch_size(release: Release, remaining: int, total: int) -> int:
    """How many of ``remaining`` machines (of ``total`` serving ones) one batch moves."""
    if release.strategy == "immediate":
        return remaining
    if release.max_unavailable_percent is not None:
        return max(1, math.ceil(release.max_unavailable_percent * total / 100))
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
    if rollout.rollback_started_at is not None:
        return _rolling_back(release, rollout, serving, now)
    batch = [m for m in serving if m.id in rollout.batch]
    if batch:
        if not all(_ready(m, release) for m in batch):
            failed = [m for m in batch if m.state == MachineState.FAILED]
            started = rollout.batch_started_at
            waited = now - (started if started is not None else now)
            if failed or waited > release.wait_timeout:
                return _roll_back(release, rollout, serving, failed, waited)
            return DeployPlan((Wait("the batch is not ready yet"),))
        actions.append(BatchDone())

    if release.strategy == "bluegreen":
        return DeployPlan((*actions, *_blue_green(release, rollout, serving, now)))

    if rollout.draining:
        drained = [m for m in serving if m.id in rollout.draining]
        started = rollout.drain_started_at if rollout.drain_started_at is not None else now
        if drained and now - started < release.drain_timeout:
            actions.append(Wait("machines out of rotation are finishing their requests"))
            return DeployPlan(tuple(actions))
        if drained:
            actions.append(UpdateMachines(tuple(m.id for m in drained), release.version))
            return DeployPlan(tuple(actions))

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
    if release.strategy == "canary" and not rollout.touched:
        size = 1  # the canary: nothing else moves until it passed its checks
    ids = tuple(m.id for m in free[:size])
    if release.drain_timeout > 0:
        actions.append(DrainMachines(ids))
    else:
        actions.append(UpdateMachines(ids, release.version))
    return DeployPlan(tuple(actions))


def _blue_green(
    release: Release, rollout: Rollout, serving: Sequence[Machine], now: float
) -> list[Action]:
    """A blue-green's next move once its batch (the new set) is ready, or before it exists."""
    if rollout.switched_at is None:
        if not rollout.standby:
            old = [m for m in serving if m.version != release.version]
            if not old:
                return [MarkReleased()]
            return [CreateStandby(len(old), release.version)]
        retired = tuple(m.id for m in serving if m.id not in rollout.standby)
        return [Switch(retired)]
    watching = release.max_error_rate is not None
    if watching and now - rollout.switched_at <= release.error_window:
        errors = _error_rate(release, rollout)
        if errors is not None:
            new = tuple(m.id for m in serving if m.id in rollout.standby)
            return [SwitchBack(new, errors)]
    grace = max(
        release.bluegreen_grace, release.drain_timeout, release.error_window if watching else 0.0
    )
    if now - rollout.switched_at < grace:
        return [Wait("the old set is kept until its grace period ends")]
    old = [m for m in serving if m.id in rollout.retired]
    free = [m for m in old if m.lease_expires_at is None or m.lease_expires_at <= now]
    if old and not free:
        return [Wait("every old machine left to stop is leased")]
    if old:
        return [DestroyMachine(m.id) for m in free]
    return [MarkReleased()]


def _error_rate(release: Release, rollout: Rollout) -> str | None:
    """Why to switch back, if the edge's 5xx share since the switch is over the limit."""
    if release.edge_counts is None or release.max_error_rate is None:
        return None
    total, errors = release.edge_counts
    base_total, base_errors = rollout.edge_at_switch or (0, 0)
    if total < base_total or errors < base_errors:
        base_total, base_errors = 0, 0  # the edge's counters restarted (a reload)
    answered, failed = total - base_total, errors - base_errors
    if answered < release.min_requests or failed / answered <= release.max_error_rate:
        return None
    return (
        f"the edge answered {failed} of {answered} requests with 5xx after the switch"
        f" (over {release.max_error_rate:.0%})"
    )


def _rolling_back(
    release: Release, rollout: Rollout, serving: Sequence[Machine], now: float
) -> DeployPlan:
    """Put the previous version back, as a rolling deploy would (machines that
    serve leave rotation and drain first, ``max_unavailable`` at a time), then
    fail the release once they all run it again."""
    previous = rollout.previous
    # Each step of rolling back gets wait_timeout: from the failure, then from
    # the last batch given the previous version.
    started = rollout.rollback_started_at if rollout.rollback_started_at is not None else now
    if rollout.batch_started_at is not None and rollout.batch_started_at > started:
        started = rollout.batch_started_at
    if previous is None or rollout.standby:
        lingering = [m for m in serving if m.id in (rollout.standby or rollout.touched)]
        if not lingering:
            what = "the new machines were removed" if rollout.standby else ""
            if rollout.standby and rollout.switched_at is not None:
                what = f"switched back to v{previous}; the new machines were removed"
            elif rollout.standby and previous is not None:
                what += f"; v{previous} kept serving"
            return DeployPlan((Fail(rollout.failure + (f"; {what}" if what else "")),))
        if now - started > release.wait_timeout:
            return DeployPlan((_unfinished(release, rollout, lingering, "removal"),))
        return DeployPlan((Wait("rolling back"),))
    back = [m for m in serving if m.id in rollout.touched]
    to_revert = [m for m in back if m.version != previous]
    reverted = [m for m in back if m.version == previous]
    lingering = [
        m
        for m in reverted
        if not (m.running_version == previous and m.state == MachineState.STARTED)
    ]
    if not to_revert and not lingering:
        return DeployPlan((Fail(f"{rollout.failure}; rolled back to v{previous}"),))
    drained = [m for m in to_revert if m.id in rollout.draining]
    if drained:  # bounded by drain_timeout
        drain_started = rollout.drain_started_at if rollout.drain_started_at is not None else now
        if now - drain_started < release.drain_timeout:
            return DeployPlan((Wait("machines out of rotation are finishing their requests"),))
        return DeployPlan((Revert(tuple(m.id for m in drained), previous),))
    if lingering:
        if now - started > release.wait_timeout:
            return DeployPlan((_unfinished(release, rollout, lingering, f"v{previous}"),))
        return DeployPlan((Wait("rolling back"),))
    size = batch_size(release, len(to_revert), len(serving))
    ids = tuple(m.id for m in to_revert[:size])
    if release.drain_timeout > 0:
        return DeployPlan((DrainMachines(ids),))
    return DeployPlan((Revert(ids, previous),))


def _unfinished(
    release: Release, rollout: Rollout, lingering: Sequence[Machine], target: str
) -> Fail:
    names = ", ".join(m.id for m in lingering)
    return Fail(
        f"{rollout.failure}; rolling back did not finish within"
        f" {release.wait_timeout:.0f}s: {names} not yet at {target}"
    )


def out_of_rotation(rollout: Rollout | None) -> frozenset[str]:
    """Machines a running release keeps out of the edge's rotation, whatever their health."""
    if rollout is None:
        return frozenset()
    held = set(rollout.draining) | set(rollout.retired)
    if rollout.switched_at is None or rollout.rollback_started_at is not None:
        held |= set(rollout.standby)  # a new set never serves before its switch
    return frozenset(held)


def phase(release: Release) -> str:
    """What the release is doing now, in a few words (for ``hangar releases``, ``status``)."""
    if release.status == ReleaseStatus.COMPLETE:
        return "released"
    if release.status == ReleaseStatus.FAILED:
        return "failed"
    if release.status == ReleaseStatus.PENDING:
        if release.command is not None and release.command.machine_id is not None:
            return "running release_command"
        return "pending"
    rollout = release.rollout or Rollout(previous=None)
    if rollout.rollback_started_at is not None:
        if rollout.standby:
            return "removing the new set"
        if rollout.previous is None:
            return "removing"
        if rollout.draining:
            return f"draining {len(rollout.draining)} to roll back to v{rollout.previous}"
        return f"rolling back to v{rollout.previous}"
    if release.strategy == "bluegreen":
        if rollout.switched_at is not None:
            return f"switched; keeping {len(rollout.retired)} old for the grace period"
        if rollout.standby:
            return f"starting {len(rollout.standby)} new (not serving yet)"
        return "starting"
    if rollout.draining:
        return f"draining {len(rollout.draining)}"
    if rollout.batch:
        if release.strategy == "canary" and len(rollout.touched) == 1:
            return "canary: checking 1"
        return f"checking {len(rollout.batch)} of {release.strategy}"
    return release.strategy


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
    release: Release,
    rollout: Rollout,
    serving: Sequence[Machine],
    failed: Sequence[Machine],
    waited: float,
) -> DeployPlan:
    """Start rolling back: what never served goes back (or away) at once; what
    serves the new version is rolled back, drained, batch by batch."""
    if failed:
        first = failed[0]
        reason = f"machine {first.id} failed: {first.detail or f'exit {first.exit_code}'}"
    else:
        reason = f"machines were not healthy within {waited:.0f}s"
    if rollout.standby:  # blue-green: the new set never served; it goes
        new = tuple(m.id for m in serving if m.id in rollout.standby)
        return DeployPlan((RollBack(new, None, reason),))
    touched = [m for m in serving if m.id in rollout.touched]
    if rollout.previous is None:
        return DeployPlan((RollBack(tuple(m.id for m in touched), None, reason),))
    broken = tuple(m.id for m in touched if not _ready(m, release))
    return DeployPlan((RollBack(broken, rollout.previous, reason),))

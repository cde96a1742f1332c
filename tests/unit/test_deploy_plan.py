"""The deploy planner, driven to the end against a model of the agent."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hangar.domain import deploys
from hangar.domain.deploys import (
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
    batch_size,
    out_of_rotation,
    phase,
    plan,
)
from hangar.domain.machines import MachineState

OLD, NEW = 1, 2
S = MachineState
# What a machine of the new version does once the agent has it: comes up
# healthy, comes up with a failing check, crashes, exits cleanly at once, or
# never gets past starting.
OUTCOMES = ["good", "unhealthy", "crash", "exits", "slow"]
# What the release command does: exits 0, exits 4, runs forever, or its machine vanishes.
COMMAND_OUTCOMES = ["ok", "exit", "hang", "vanish"]


@dataclasses.dataclass
class World:
    """A release, its app's machines and the agent's behaviour, advanced together."""

    release: Release
    machines: dict[str, Machine]
    outcomes: list[str]
    command_outcome: str
    now: float = 1000.0
    created: int = 0

    def outcome(self, machine_id: str) -> str:
        return self.outcomes[sum(map(ord, machine_id)) % len(self.outcomes)]

    def serving(self) -> list[Machine]:
        return [m for m in self.machines.values() if m.desired != "destroyed" and not m.one_off]

    def apply(self, planned: DeployPlan) -> None:
        """The deployer's apply, on the model."""
        r = self.release
        for action in planned.actions:
            match action:
                case RunReleaseCommand():
                    self.machines["cmd"] = Machine("cmd", r.version, one_off=True)
                    assert r.command is not None
                    command = dataclasses.replace(r.command, machine_id="cmd", started_at=self.now)
                    r = dataclasses.replace(r, command=command)
                case DestroyMachine(machine_id=mid):
                    self.machines[mid] = dataclasses.replace(
                        self.machines[mid], desired="destroyed"
                    )
                case StartRelease(previous=previous):
                    rollout = Rollout(previous, batch_started_at=self.now)
                    r = dataclasses.replace(r, status=ReleaseStatus.RUNNING, rollout=rollout)
                case CreateMachine(version=version):
                    mid = f"new{self.created}"
                    self.created += 1
                    self.machines[mid] = Machine(mid, version)
                    assert r.rollout is not None
                    rollout = dataclasses.replace(
                        r.rollout, touched=(*r.rollout.touched, mid), batch=(mid,)
                    )
                    r = dataclasses.replace(r, rollout=rollout)
                case CreateStandby(count=count, version=version):
                    made = []
                    for _ in range(count):
                        mid = f"new{self.created}"
                        self.created += 1
                        self.machines[mid] = Machine(mid, version)
                        made.append(mid)
                    assert r.rollout is not None
                    rollout = dataclasses.replace(
                        r.rollout,
                        touched=(*r.rollout.touched, *made),
                        standby=tuple(made),
                        batch=tuple(made),
                        batch_started_at=self.now,
                    )
                    r = dataclasses.replace(r, rollout=rollout)
                case DrainMachines(machine_ids=ids):
                    assert r.rollout is not None
                    rollout = dataclasses.replace(
                        r.rollout, draining=ids, drain_started_at=self.now
                    )
                    r = dataclasses.replace(r, rollout=rollout)
                case Switch(retired=retired):
                    assert r.rollout is not None
                    rollout = dataclasses.replace(r.rollout, retired=retired, switched_at=self.now)
                    r = dataclasses.replace(r, rollout=rollout)
                case BatchDone():
                    assert r.rollout is not None
                    r = dataclasses.replace(r, rollout=dataclasses.replace(r.rollout, batch=()))
                case UpdateMachines(machine_ids=ids, version=version):
                    for mid in ids:
                        self.machines[mid] = dataclasses.replace(
                            self.machines[mid], version=version, desired="started"
                        )
                    assert r.rollout is not None
                    rollout = dataclasses.replace(
                        r.rollout,
                        touched=(*r.rollout.touched, *ids),
                        batch=ids,
                        batch_started_at=self.now,
                        draining=(),
                    )
                    r = dataclasses.replace(r, rollout=rollout)
                case RollBack(machine_ids=ids, version=version, reason=reason):
                    assert r.rollout is not None
                    rollout = dataclasses.replace(
                        r.rollout, failure=reason, rollback_started_at=self.now, batch=()
                    )
                    r = dataclasses.replace(r, rollout=rollout)
                    for mid in ids:
                        m = self.machines[mid]
                        self.machines[mid] = (
                            dataclasses.replace(m, desired="destroyed")
                            if version is None
                            else dataclasses.replace(m, version=version)
                        )
                case Revert(machine_ids=ids, version=version):
                    for mid in ids:
                        self.machines[mid] = dataclasses.replace(
                            self.machines[mid], version=version
                        )
                    assert r.rollout is not None
                    rollout = dataclasses.replace(r.rollout, draining=(), batch_started_at=self.now)
                    r = dataclasses.replace(r, rollout=rollout)
                case MarkReleased():
                    r = dataclasses.replace(r, status=ReleaseStatus.COMPLETE)
                case Fail():
                    r = dataclasses.replace(r, status=ReleaseStatus.FAILED)
                case Wait():
                    pass
        self.release = r

    def tick(self) -> None:
        """The agent: every machine does what its outcome says, at once."""
        for mid, m in list(self.machines.items()):
            if m.desired == "destroyed":
                del self.machines[mid]
            elif mid == "cmd":
                c = self.command_outcome
                if c == "vanish":
                    del self.machines[mid]
                elif c == "hang":
                    self.machines[mid] = dataclasses.replace(m, state=S.STARTED)
                else:
                    code = 0 if c == "ok" else 4
                    self.machines[mid] = dataclasses.replace(m, state=S.STOPPED, exit_code=code)
            elif m.one_off:
                continue
            elif m.version != NEW or self.outcome(mid) == "good":
                self.machines[mid] = up(m)
            elif self.outcome(mid) == "unhealthy":
                self.machines[mid] = dataclasses.replace(
                    m, state=S.STARTED, running_version=m.version, healthy=False
                )
            elif self.outcome(mid) == "crash":
                self.machines[mid] = dataclasses.replace(
                    m, state=S.FAILED, running_version=m.version, exit_code=1, healthy=None
                )
            elif self.outcome(mid) == "exits":
                self.machines[mid] = dataclasses.replace(
                    m, state=S.STOPPED, running_version=m.version, exit_code=0, healthy=None
                )
            else:
                self.machines[mid] = dataclasses.replace(
                    m, state=S.STARTING, running_version=None, healthy=None
                )


def up(m: Machine) -> Machine:
    return dataclasses.replace(m, state=S.STARTED, running_version=m.version, healthy=True)


def ready(m: Machine, needs_health: bool) -> bool:
    healthy = m.healthy is True if needs_health else m.healthy is not False
    return m.state == S.STARTED and m.running_version == m.version and healthy


@st.composite
def worlds(draw: st.DrawFn) -> World:
    count = draw(st.integers(0, 6))
    leases = draw(st.lists(st.one_of(st.none(), st.floats(900, 1100)), min_size=6, max_size=6))
    machines = {
        f"m{i}": up(Machine(f"m{i}", OLD, lease_expires_at=leases[i])) for i in range(count)
    }
    # Bystanders the release must leave alone: a one-off, and a machine being destroyed.
    machines["once"] = up(Machine("once", 7, one_off=True))
    machines["gone"] = up(Machine("gone", OLD, desired="destroyed"))
    command = draw(st.one_of(st.none(), st.just("sh -c migrate")))
    release = Release(
        version=NEW,
        strategy=draw(st.sampled_from(["immediate", "rolling", "canary", "bluegreen"])),
        status=ReleaseStatus.PENDING,
        max_unavailable=draw(st.sampled_from([0.2, 0.5, 0.99, 1.0, 2.0, 3.0])),
        max_unavailable_percent=draw(st.sampled_from([None, 1.0, 25.0, 50.0, 100.0])),
        wait_timeout=draw(st.floats(1, 60)),
        drain_timeout=draw(st.sampled_from([0.0, 1.0, 5.0])),
        bluegreen_grace=draw(st.sampled_from([0.0, 3.0, 30.0])),
        needs_health=draw(st.booleans()),
        command=ReleaseCommand(command) if command else None,
        previous=OLD if count else None,
    )
    outcomes = draw(st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=4))
    return World(release, machines, outcomes, draw(st.sampled_from(COMMAND_OUTCOMES)))


def bound(world: World) -> int:
    """Steps within which any release finishes when the clock moves >= 1s a step."""
    r = world.release
    per_wait = math.ceil(r.wait_timeout + r.drain_timeout) + 4
    batches = len(world.serving()) + 1
    leases = 200  # every lease has ended 100s after the start
    # Rolling back waits for the machines it moved as a batch waits for them.
    return (2 * batches + 2) * per_wait + leases + math.ceil(r.bluegreen_grace)


def run(world: World, steps: st.DataObject) -> list[DeployPlan]:
    plans = []
    limit = bound(world)
    for _ in range(limit):
        if world.release.status in (ReleaseStatus.COMPLETE, ReleaseStatus.FAILED):
            return plans
        planned = plan(world.release, list(world.machines.values()), world.now)
        assert phase(world.release)  # every state has words for `hangar releases`
        check_plan(world, planned)
        plans.append(planned)
        world.apply(planned)
        check_availability(world)
        world.tick()
        world.now += steps.draw(st.floats(1, 10), label="dt")
    raise AssertionError(f"release not finished within {limit} steps")


def check_plan(world: World, planned: DeployPlan) -> None:
    """The plan names only machines it may touch."""
    r = world.release
    serving = {m.id: m for m in world.serving()}
    for action in planned.actions:
        match action:
            case UpdateMachines(machine_ids=ids):
                assert ids and len(set(ids)) == len(ids)
                for mid in ids:
                    m = serving[mid]  # never a one-off, never one being destroyed
                    assert m.version != r.version
                    assert m.lease_expires_at is None or m.lease_expires_at <= world.now
                assert r.strategy != "bluegreen"  # a blue-green never moves a machine
                assert r.rollout is not None
                if r.drain_timeout > 0:  # each left rotation and drained first
                    assert set(ids) == set(r.rollout.draining)
                    assert r.rollout.drain_started_at is not None
                    assert world.now - r.rollout.drain_started_at >= r.drain_timeout
                if r.strategy == "canary" and not r.rollout.touched:
                    assert len(ids) == 1  # the canary goes alone
                else:
                    assert len(ids) <= batch_size(r, len(ids), len(serving))
            case DrainMachines(machine_ids=ids):
                assert r.strategy != "bluegreen" and r.drain_timeout > 0
                assert r.rollout is not None
                rolling_back = r.rollout.rollback_started_at is not None
                for mid in ids:
                    if rolling_back:  # it serves the new version: it drains, then goes back
                        assert mid in r.rollout.touched and serving[mid].version == r.version
                    else:
                        assert serving[mid].version != r.version
            case Revert(machine_ids=ids, version=version):
                assert r.rollout is not None and r.rollout.rollback_started_at is not None
                assert version == r.rollout.previous and set(ids) <= set(r.rollout.touched)
                assert len(ids) <= batch_size(r, len(ids), len(serving))
                if r.drain_timeout > 0:  # each left rotation and drained first
                    assert set(ids) == set(r.rollout.draining)
                    assert r.rollout.drain_started_at is not None
                    assert world.now - r.rollout.drain_started_at >= r.drain_timeout
            case RollBack(machine_ids=ids, version=version):
                assert r.rollout is not None
                assert set(ids) <= set(r.rollout.touched) and set(ids) <= set(serving)
                if r.rollout.standby:  # a blue-green's failed new set is removed
                    assert version is None and set(ids) <= set(r.rollout.standby)
                    assert r.rollout.switched_at is None
            case DestroyMachine(machine_id=mid):
                if r.strategy == "bluegreen" and r.rollout is not None and r.rollout.switched_at:
                    # The old set, only once its grace period is over.
                    assert mid in r.rollout.retired
                    grace = max(r.bluegreen_grace, r.drain_timeout)
                    assert world.now - r.rollout.switched_at >= grace
                else:
                    assert r.command is not None and mid == r.command.machine_id == "cmd"
            case Fail():
                rollout = r.rollout
                if rollout is not None and rollout.rollback_started_at is not None:
                    # Rolled back, as it says: the machines run the previous version.
                    moved = [m for m in serving.values() if m.id in rollout.touched]
                    if rollout.standby:
                        assert not [m for m in moved if m.id in rollout.standby]
                    elif rollout.previous is None:
                        assert moved == []
                    elif "rolled back to" in action.reason:
                        assert all(m.running_version == rollout.previous for m in moved)
            case _:
                pass


def check_availability(world: World) -> None:
    """While it rolls, a release keeps all but one batch of machines in rotation
    (ready and not held out); a blue-green keeps the whole old set until its switch,
    and no new machine serves before it."""
    r = world.release
    if r.status != ReleaseStatus.RUNNING or r.strategy == "immediate" or r.rollout is None:
        return
    rollout = r.rollout
    if rollout.rollback_started_at is not None:
        return  # failing: the machines it moved are on their way back
    held = out_of_rotation(rollout)
    serving = world.serving()
    in_rotation = [m for m in serving if ready(m, r.needs_health) and m.id not in held]
    if r.strategy == "bluegreen":
        new = [m for m in serving if m.id in rollout.standby]
        old = [m for m in serving if m.id not in rollout.standby]
        if rollout.switched_at is None:
            assert not [m for m in in_rotation if m.id in rollout.standby]
            if rollout.previous is not None and new:
                assert {m.id for m in old} <= {m.id for m in in_rotation}
        else:
            assert not [m for m in in_rotation if m.id in rollout.retired]
            assert {m.id for m in new} <= {m.id for m in in_rotation}
        return
    if serving:
        out = len(serving) - len(in_rotation)
        assert out <= batch_size(r, len(serving), len(serving))


@given(worlds(), st.data())
@settings(max_examples=300, deadline=None)
def test_every_release_finishes_released_or_rolled_back(world: World, data: st.DataObject) -> None:
    before = {m.id: m for m in world.machines.values()}
    plans = run(world, data)
    r = world.release
    world.tick()  # let the agent act on the last plan
    serving = world.serving()
    assert before["once"] == world.machines["once"]  # the bystander one-off is untouched
    assert "gone" not in world.machines  # and the one being destroyed was not revived
    if r.status == ReleaseStatus.COMPLETE:
        assert serving and all(m.version == NEW and ready(m, r.needs_health) for m in serving)
        assert r.command is None or world.command_outcome == "ok"
        return
    assert r.status == ReleaseStatus.FAILED
    if r.rollout is None:  # the release command failed: no serving machine changed
        assert r.command is not None and world.command_outcome != "ok"
        assert {m.id: m.version for m in serving} == {
            m.id: OLD for m in before.values() if m.id.startswith("m")
        }
    elif r.rollout.previous is None:  # a first deploy has nothing to roll back to
        assert serving == []
    else:  # every machine is back on the old version, and runs it
        assert all(m.version == OLD and m.running_version == OLD for m in serving)
    fail = [a for p in plans for a in p.actions if isinstance(a, Fail)]
    assert len(fail) == 1


@given(worlds(), st.data())
@settings(max_examples=100, deadline=None)
def test_a_failing_check_rolls_every_machine_back(world: World, data: st.DataObject) -> None:
    world.outcomes = [data.draw(st.sampled_from(["unhealthy", "crash", "exits", "slow"]))]
    world.release = dataclasses.replace(world.release, needs_health=True, command=None)
    plans = run(world, data)
    assert world.release.status == ReleaseStatus.FAILED
    (rollback,) = [a for p in plans for a in p.actions if isinstance(a, RollBack)]
    if world.release.strategy == "bluegreen" and world.release.previous is not None:
        assert rollback.version is None  # the new set never served: it goes
    else:
        assert rollback.version == world.release.previous
    world.tick()
    serving = world.serving()
    if world.release.previous is None:
        assert serving == []
    else:
        assert serving and all(m.version == OLD and m.running_version == OLD for m in serving)
    (fail,) = [a for p in plans for a in p.actions if isinstance(a, Fail)]
    if world.release.previous is not None and world.release.strategy == "bluegreen":
        assert fail.reason.endswith(f"the new machines were removed; v{OLD} kept serving")
    elif world.release.previous is not None:
        assert fail.reason.endswith(f"; rolled back to v{OLD}")


@given(worlds(), st.data())
@settings(max_examples=100, deadline=None)
def test_healthy_machines_and_a_clean_command_are_released(
    world: World, data: st.DataObject
) -> None:
    world.outcomes, world.command_outcome = ["good"], "ok"
    run(world, data)
    assert world.release.status == ReleaseStatus.COMPLETE


@given(worlds(), st.sampled_from([ReleaseStatus.COMPLETE, ReleaseStatus.FAILED]))
def test_a_finished_release_plans_nothing(world: World, status: ReleaseStatus) -> None:
    release = dataclasses.replace(world.release, status=status, rollout=Rollout(OLD, ("m0",)))
    assert plan(release, list(world.machines.values()), world.now) == DeployPlan()


@given(worlds(), st.data())
@settings(max_examples=50, deadline=None)
def test_plan_is_deterministic(world: World, data: st.DataObject) -> None:
    for _ in range(data.draw(st.integers(0, 5))):
        world.apply(plan(world.release, list(world.machines.values()), world.now))
        world.tick()
        world.now += 3
    machines = list(world.machines.values())
    assert plan(world.release, machines, world.now) == plan(world.release, machines, world.now)


def test_first_deploy_makes_the_first_machine() -> None:
    release = Release(NEW, "rolling", ReleaseStatus.PENDING)
    assert plan(release, [], 0).actions == (StartRelease(None), CreateMachine(NEW))


def test_release_command_runs_first_then_the_release_starts() -> None:
    command = ReleaseCommand("migrate")
    release = Release(NEW, "rolling", ReleaseStatus.PENDING, command=command, previous=OLD)
    machines = [up(Machine("m0", OLD))]
    assert plan(release, machines, 0).actions == (RunReleaseCommand("migrate"),)
    release = dataclasses.replace(release, command=ReleaseCommand("migrate", "cmd", 0.0))
    running = Machine("cmd", NEW, state=S.STARTED, one_off=True)
    assert plan(release, [*machines, running], 5).actions == (
        Wait("the release command is running"),
    )
    done = dataclasses.replace(running, state=S.STOPPED, exit_code=0)
    assert plan(release, [*machines, done], 5).actions == (
        DestroyMachine("cmd"),
        StartRelease(OLD),
    )
    failed = dataclasses.replace(running, state=S.STOPPED, exit_code=4)
    assert plan(release, [*machines, failed], 5).actions == (
        DestroyMachine("cmd"),
        Fail("release_command exited 4 (see `hangar logs -m cmd`)"),
    )
    (late,) = plan(release, [*machines, running], 301).actions[1:]
    assert late == Fail("release_command did not finish within 301s")
    assert plan(release, machines, 5).actions == (Fail("release_command's machine disappeared"),)


@pytest.mark.parametrize(
    ("strategy", "max_unavailable", "moved"),
    [("rolling", 1, 1), ("rolling", 2, 2), ("rolling", 0.5, 3), ("canary", 0.3, 1),
     ("immediate", 1, 5)],
)  # fmt: skip
def test_batch_sizes(strategy: str, max_unavailable: float, moved: int) -> None:
    rollout = Rollout(OLD, batch_started_at=0)
    release = Release(
        NEW, strategy, ReleaseStatus.RUNNING, max_unavailable=max_unavailable, rollout=rollout
    )
    machines = [up(Machine(f"m{i}", OLD)) for i in range(5)]
    (update,) = plan(release, machines, 1).actions
    assert update == UpdateMachines(tuple(f"m{i}" for i in range(moved)), NEW)


def test_a_leased_machine_waits_for_its_lease() -> None:
    release = Release(NEW, "immediate", ReleaseStatus.RUNNING, rollout=Rollout(OLD))
    machines = [up(Machine("m0", OLD, lease_expires_at=50)), up(Machine("m1", OLD))]
    assert plan(release, machines, 10).actions == (UpdateMachines(("m1",), NEW),)
    assert plan(release, machines[:1], 10).actions == (
        Wait("every machine left to update is leased"),
    )
    assert plan(release, machines[:1], 50).actions == (UpdateMachines(("m0",), NEW),)


def test_a_crashed_machine_is_named_in_the_reason() -> None:
    rollout = Rollout(OLD, touched=("m0",), batch=("m0",), batch_started_at=0)
    release = Release(NEW, "rolling", ReleaseStatus.RUNNING, rollout=rollout)
    crashed = Machine("m0", NEW, state=S.FAILED, exit_code=3)
    (rollback,) = plan(release, [crashed, up(Machine("m1", OLD))], 1).actions
    assert rollback == RollBack(("m0",), OLD, "machine m0 failed: exit 3")
    slow = Machine("m0", NEW, state=S.STARTING)
    assert plan(release, [slow], 301).actions == (
        RollBack(("m0",), OLD, "machines were not healthy within 301s"),
    )
    # The release says it rolled back only once the machine runs the old version.
    rolling_back = dataclasses.replace(
        release,
        rollout=dataclasses.replace(
            rollout, batch=(), failure="machine m0 failed: exit 3", rollback_started_at=1
        ),
    )
    still_new = Machine("m0", OLD, state=S.STARTED, running_version=NEW, healthy=True)
    assert plan(rolling_back, [still_new], 2).actions == (Wait("rolling back"),)
    assert phase(rolling_back) == "rolling back to v1"
    assert plan(rolling_back, [up(Machine("m0", OLD))], 3).actions == (
        Fail("machine m0 failed: exit 3; rolled back to v1"),
    )
    assert plan(rolling_back, [still_new], 302).actions == (
        Fail(
            "machine m0 failed: exit 3; rolling back did not finish within 300s: m0 not yet at v1"
        ),
    )


def test_the_module_does_no_io() -> None:
    """Only the standard library and other pure rules are imported by the planner."""
    source = deploys.__file__
    with open(source, encoding="utf-8") as f:
        imports = [line for line in f if line.startswith(("import ", "from "))]
    for line in imports:
        module = line.split()[1]
        assert module in ("__future__", "math", "collections.abc", "dataclasses", "enum") or (
            module.startswith("hangar.domain") or module == "hangar.errors"
        ), line


@given(worlds(), st.data())
@settings(max_examples=100, deadline=None)
def test_a_canary_that_fails_its_check_is_the_only_machine_moved(
    world: World, data: st.DataObject
) -> None:
    world.outcomes = [data.draw(st.sampled_from(["unhealthy", "crash", "exits", "slow"]))]
    world.release = dataclasses.replace(
        world.release, strategy="canary", needs_health=True, command=None
    )
    plans = run(world, data)
    assert world.release.status == ReleaseStatus.FAILED
    moved = {mid for p in plans for a in p.actions if isinstance(a, UpdateMachines)
             for mid in a.machine_ids}  # fmt: skip
    assert len(moved) <= 1


@given(worlds(), st.data())
@settings(max_examples=100, deadline=None)
def test_a_failed_blue_green_never_serves_and_leaves_the_old_set_alone(
    world: World, data: st.DataObject
) -> None:
    world.outcomes = [data.draw(st.sampled_from(["unhealthy", "crash", "exits", "slow"]))]
    world.release = dataclasses.replace(
        world.release, strategy="bluegreen", needs_health=True, command=None
    )
    before = {m.id: m for m in world.serving()}
    plans = run(world, data)  # check_availability: no new machine is ever in rotation
    assert world.release.status == ReleaseStatus.FAILED
    assert not [a for p in plans for a in p.actions if isinstance(a, Switch | UpdateMachines)]
    world.tick()
    if before:
        assert {m.id: m.version for m in world.serving()} == {
            mid: m.version for mid, m in before.items()
        }


def test_blue_green_switches_at_once_and_keeps_the_old_set_for_its_grace() -> None:
    old = [up(Machine(f"m{i}", OLD)) for i in range(3)]
    release = Release(
        NEW, "bluegreen", ReleaseStatus.RUNNING, rollout=Rollout(OLD), bluegreen_grace=30
    )
    assert plan(release, old, 0).actions == (CreateStandby(3, NEW),)
    new = tuple(up(Machine(f"n{i}", NEW)) for i in range(3))
    rollout = Rollout(OLD, touched=("n0", "n1", "n2"), standby=("n0", "n1", "n2"),
                      batch=("n0", "n1", "n2"), batch_started_at=0)  # fmt: skip
    release = dataclasses.replace(release, rollout=rollout)
    assert out_of_rotation(rollout) == {"n0", "n1", "n2"}
    assert plan(release, [*old, *new], 1).actions == (BatchDone(), Switch(("m0", "m1", "m2")))
    switched = dataclasses.replace(rollout, batch=(), retired=("m0", "m1", "m2"), switched_at=1)
    assert out_of_rotation(switched) == {"m0", "m1", "m2"}
    release = dataclasses.replace(release, rollout=switched)
    assert plan(release, [*old, *new], 30).actions == (
        Wait("the old set is kept until its grace period ends"),
    )
    assert plan(release, [*old, *new], 31).actions == tuple(
        DestroyMachine(f"m{i}") for i in range(3)
    )
    assert plan(release, list(new), 32).actions == (MarkReleased(),)


def test_rolling_drains_before_it_moves_and_counts_percentages() -> None:
    machines = [up(Machine(f"m{i}", OLD)) for i in range(8)]
    release = Release(
        NEW, "rolling", ReleaseStatus.RUNNING, rollout=Rollout(OLD),
        max_unavailable_percent=25, drain_timeout=2,
    )  # fmt: skip
    assert plan(release, machines, 0).actions == (DrainMachines(("m0", "m1")),)
    draining = Rollout(OLD, draining=("m0", "m1"), drain_started_at=0)
    release = dataclasses.replace(release, rollout=draining)
    assert out_of_rotation(draining) == {"m0", "m1"}
    assert phase(release) == "draining 2"
    assert plan(release, machines, 1).actions == (
        Wait("machines out of rotation are finishing their requests"),
    )
    assert plan(release, machines, 2).actions == (UpdateMachines(("m0", "m1"), NEW),)


def test_machines_that_serve_the_new_version_drain_before_they_roll_back() -> None:
    served = [up(Machine(f"m{i}", NEW)) for i in range(2)]
    crashed = Machine("m2", NEW, state=S.FAILED, exit_code=1)
    rollout = Rollout(OLD, touched=("m0", "m1", "m2"), batch=("m2",), batch_started_at=0)
    release = Release(NEW, "rolling", ReleaseStatus.RUNNING, rollout=rollout, drain_timeout=2)
    # The crashed one serves nothing: it goes back at once; the others wait their turn.
    (rollback,) = plan(release, [*served, crashed], 1).actions
    assert rollback == RollBack(("m2",), OLD, "machine m2 failed: exit 1")
    back = dataclasses.replace(rollout, batch=(), failure=rollback.reason, rollback_started_at=1)
    release = dataclasses.replace(release, rollout=back)
    m2 = up(Machine("m2", OLD))
    assert plan(release, [*served, m2], 2).actions == (DrainMachines(("m0",)),)
    draining = dataclasses.replace(back, draining=("m0",), drain_started_at=2)
    release = dataclasses.replace(release, rollout=draining)
    assert out_of_rotation(draining) == {"m0"}  # it serves no new request while it drains
    assert phase(release) == "draining 1 to roll back to v1"
    assert plan(release, [*served, m2], 3).actions == (
        Wait("machines out of rotation are finishing their requests"),
    )
    assert plan(release, [*served, m2], 4).actions == (Revert(("m0",), OLD),)
    reverted = dataclasses.replace(draining, draining=(), batch_started_at=4)
    release = dataclasses.replace(release, rollout=reverted)
    starting = Machine("m0", OLD, state=S.STARTING)
    assert plan(release, [starting, served[1], m2], 5).actions == (Wait("rolling back"),)
    assert plan(release, [up(Machine("m0", OLD)), served[1], m2], 6).actions == (
        DrainMachines(("m1",)),
    )


def test_blue_green_switches_back_when_the_edge_answers_5xx_after_the_switch() -> None:
    old = [up(Machine(f"m{i}", OLD)) for i in range(2)]
    new = [up(Machine(f"n{i}", NEW)) for i in range(2)]
    switched = Rollout(OLD, touched=("n0", "n1"), standby=("n0", "n1"), retired=("m0", "m1"),
                       switched_at=10, edge_at_switch=(1000, 3))  # fmt: skip
    release = Release(
        NEW, "bluegreen", ReleaseStatus.RUNNING, rollout=switched, bluegreen_grace=5,
        max_error_rate=0.1, error_window=30,
    )  # fmt: skip

    def at(counts: tuple[int, int] | None, now: float) -> tuple[object, ...]:
        return plan(dataclasses.replace(release, edge_counts=counts), [*old, *new], now).actions

    grace = Wait("the old set is kept until its grace period ends")
    assert at((1100, 13), 11) == (grace,)  # 10 of 100 since the switch: not over 10%
    assert at((1010, 9), 11) == (grace,)  # too few requests to tell
    (back,) = at((1100, 14), 11)
    assert back == SwitchBack(
        ("n0", "n1"), "the edge answered 11 of 100 requests with 5xx after the switch (over 10%)"
    )
    assert at((50, 40), 11) == (
        SwitchBack(
            ("n0", "n1"), "the edge answered 40 of 50 requests with 5xx after the switch (over 10%)"
        ),
    )  # the counters restarted (a reload): counted from zero
    assert at(None, 11) == (grace,)  # the edge cannot say: nothing decided
    # The old set is kept through the whole window, then the watch ends.
    assert at((1100, 13), 39) == (grace,)
    assert at((1100, 90), 41) == tuple(DestroyMachine(f"m{i}") for i in range(2))
    # Switched back: the old set serves again, the new set is held out until it is gone.
    back_rollout = dataclasses.replace(
        switched, retired=(), failure=back.reason, rollback_started_at=11
    )
    assert out_of_rotation(back_rollout) == {"n0", "n1"}
    release = dataclasses.replace(release, rollout=back_rollout)
    assert plan(release, old, 12).actions == (
        Fail(f"{back.reason}; switched back to v1; the new machines were removed"),
    )

"""Releases rolled out by the deployer to machines the agent runs (real runc)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from hangar.agent.reconciler import Reconciler
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.service import Agent
from hangar.config.appconfig import AppConfig, parse_app_config
from hangar.controlplane.deployer import step_all
from hangar.controlplane.machines import (
    active_machines,
    create_machine,
    create_release,
    register_local_host,
)
from hangar.controlplane.state import ControlPlane
from hangar.images.store import Image, ImageStore
from hangar.server.local import StoreLink
from hangar.store.tables import App, AuditEvent, Machine, MachineEvent, Org, Release
from tests.conftest import make_installation
from tests.integration.conftest import BASE_UID, needs_root

pytestmark = [pytest.mark.slow, needs_root]


def config(
    check_path: str = "/healthz",
    greeting: str = "v1",
    wait: str = "20s",
    strategy: str = "rolling",
    extra: str = "",
) -> AppConfig:
    return parse_app_config(f"""
app = "hello"
[env]
  GREETING = "{greeting}"
[http_service]
  internal_port = 8080
  [[http_service.checks]]
    grace_period = "0.1s"
    interval = "0.2s"
    timeout = "1s"
    path = "{check_path}"
[deploy]
  strategy = "{strategy}"
  max_unavailable = 1
  wait_timeout = "{wait}"
  {extra}
[[vm]]
  memory = "64mb"
""")


class World:
    def __init__(self, cp: ControlPlane, agent: Agent, app: App, image: str) -> None:
        self.cp, self.agent, self.app, self.image = cp, agent, app, image
        self.healthy_floor: int | None = None

    def release(self, cfg: AppConfig, strategy: str | None = None) -> int:
        with self.cp.db.write() as s:
            app = s.get(App, self.app.id)
            assert app is not None
            return create_release(
                s, app, image=self.image, config=cfg, strategy=strategy, actor="test"
            ).version

    def machines(self) -> list[Machine]:
        with self.cp.db.read() as s:
            return active_machines(s, self.app.id)

    def in_rotation(self) -> dict[str, bool]:
        """Each machine the edge knows of: in rotation or not, as the routing table says."""
        with self.cp.db.read() as s:
            table = self.cp.routes.build(s)
        return {server.name: server.up for route in table.http for server in route.servers}

    def run_until_done(
        self,
        version: int,
        timeout: float = 90,
        observe: Callable[[], None] | None = None,
    ) -> Release:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.cp.db.write() as s:
                step_all(s, self.cp.audit, time.time())
            if observe is not None:
                observe()
            self.agent.tick(time.time())
            healthy = sum(1 for m in self.machines() if m.healthy and m.state == "started")
            self.healthy_floor = (
                healthy if self.healthy_floor is None else min(self.healthy_floor, healthy)
            )
            with self.cp.db.read() as s:
                release = s.execute(
                    select(Release).where(Release.app_id == self.app.id, Release.version == version)
                ).scalar_one()
            if release.status in ("complete", "failed"):
                return release
            time.sleep(0.1)
        raise AssertionError(f"release v{version} did not finish")


@pytest.fixture
def world(tmp_path: Path, runtime: RuncRuntime, base_dir: Path, hello: Image) -> Iterator[World]:
    inst = make_installation(tmp_path / "data")
    cp = ControlPlane.open(inst.settings)
    with cp.db.write() as s:
        org = s.execute(select(Org)).scalar_one()
        app = App(
            id="app_hello",
            org_id=org.id,
            name="hello",
            created_by="test",
            created_at=org.created_at,
        )
        s.add(app)
        host = register_local_host(s, name="test-host")
    images = ImageStore(base_dir / "images", uid_base=BASE_UID)
    agent = Agent(
        StoreLink.for_host(cp, host.id),
        Reconciler(runtime, images, base_dir / f"agent-{tmp_path.name}"),
        host.id,
    )
    w = World(cp, agent, app, f"oci:{base_dir / 'hello'}:latest")
    yield w
    for machine_id in runtime.list():
        if machine_id.startswith("m_"):
            runtime.remove(machine_id)
    cp.close()


def test_first_deploy_rolling_deploy_and_rollback(world: World, runtime: RuncRuntime) -> None:
    v1 = world.run_until_done(world.release(config()))
    assert v1.status == "complete", v1.detail
    (first,) = world.machines()
    assert first.state == "started" and first.healthy and first.running_version == 1

    # Two more machines at v1, then a rolling release across all three.
    with world.cp.db.write() as s:
        app = s.get(App, world.app.id)
        assert app is not None
        for _ in range(2):
            create_machine(s, app, 1, None)
    world.run_until_done(1)  # settles: nothing pending, just let the agent start them
    deadline = time.monotonic() + 60
    while not all(m.healthy for m in world.machines()) and time.monotonic() < deadline:
        world.agent.tick(time.time())
        time.sleep(0.1)
    assert len(world.machines()) == 3 and all(m.healthy for m in world.machines())

    world.healthy_floor = None
    v2 = world.run_until_done(world.release(config(greeting="v2")))
    assert v2.status == "complete", v2.detail
    assert world.healthy_floor is not None and world.healthy_floor >= 2  # one at a time
    for machine in world.machines():
        assert machine.running_version == 2
        assert b"GREETING=v2" in runtime.exec(machine.id, ["/bin/env"]).stdout

    # A release whose check never passes is rolled back to v2.
    v3 = world.run_until_done(world.release(config(check_path="/nope", wait="3s")))
    assert v3.status == "failed"
    assert "not healthy" in json.loads(v3.detail)["reason"]
    assert "rolled back to v2" in json.loads(v3.detail)["reason"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        m.running_version == 2 and m.healthy for m in world.machines()
    ):
        world.agent.tick(time.time())
        time.sleep(0.1)
    assert all(m.version == 2 and m.running_version == 2 and m.healthy for m in world.machines())

    with world.cp.db.read() as s:
        actions = [e.action for e in s.execute(select(AuditEvent)).scalars()]
    assert actions.count("release.complete") == 2 and "release.failed" in actions

    # Each machine's own history (`machines events`) shows the releases that moved it.
    with world.cp.db.read() as s:
        events = s.execute(select(MachineEvent).order_by(MachineEvent.id)).scalars().all()
    for machine in world.machines():
        moves = [(e.kind, e.detail) for e in events if e.machine_id == machine.id]
        assert ("release", "to v2") in moves
    rolled = {e.machine_id for e in events if (e.kind, e.detail) == ("rollback", "to v2")}
    touched = {e.machine_id for e in events if (e.kind, e.detail) == ("release", "to v3")}
    assert touched and rolled == touched


def three_healthy(world: World) -> list[str]:
    """A first release, then two more machines at it: three healthy machines at v1."""
    v1 = world.run_until_done(world.release(config()))
    assert v1.status == "complete", v1.detail
    with world.cp.db.write() as s:
        app = s.get(App, world.app.id)
        assert app is not None
        for _ in range(2):
            create_machine(s, app, 1, None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        len(world.machines()) == 3 and all(m.healthy for m in world.machines())
    ):
        world.agent.tick(time.time())
        time.sleep(0.1)
    assert all(m.healthy and m.running_version == 1 for m in world.machines())
    return sorted(m.id for m in world.machines())


def release_moves(world: World, version: int) -> set[str]:
    with world.cp.db.read() as s:
        events = s.execute(select(MachineEvent)).scalars().all()
    return {e.machine_id for e in events if (e.kind, e.detail) == ("release", f"to v{version}")}


def test_a_canary_that_fails_its_check_is_the_only_machine_moved(world: World) -> None:
    old = three_healthy(world)
    v2 = world.run_until_done(
        world.release(config(check_path="/nope", wait="3s", strategy="canary"))
    )
    assert v2.status == "failed" and v2.strategy == "canary"
    detail = json.loads(v2.detail)
    assert "rolled back to v1" in detail["reason"] and detail["phase"] == "failed"
    assert len(release_moves(world, 2)) == 1  # the canary, and no other
    # "Rolled back" is what the machines run when the release says so.
    assert sorted(m.id for m in world.machines()) == old
    assert all(m.version == 1 and m.running_version == 1 for m in world.machines())

    v3 = world.run_until_done(world.release(config(greeting="v3", strategy="canary")))
    assert v3.status == "complete"
    assert release_moves(world, 3) == set(old)
    assert all(m.running_version == 3 for m in world.machines())


def test_blue_green_switches_the_edge_at_once(world: World, runtime: RuncRuntime) -> None:
    old = set(three_healthy(world))
    seen: list[dict[str, bool]] = []
    version = world.release(
        config(greeting="v2", strategy="bluegreen", extra='bluegreen_grace = "1s"')
    )
    v2 = world.run_until_done(version, observe=lambda: seen.append(world.in_rotation()))
    assert v2.status == "complete", v2.detail
    new = {m.id for m in world.machines()}
    assert len(new) == 3 and not new & old
    for table in seen:
        serving = {name for name, up in table.items() if up}
        # Never a mix: the old set serves until the switch, then only the new one.
        assert serving <= old or serving <= new, table
        if serving & old:
            assert serving == old  # no old machine leaves before the switch
    assert any(serving == new for serving in ({n for n, up in t.items() if up} for t in seen))
    for machine in world.machines():
        assert b"GREETING=v2" in runtime.exec(machine.id, ["/bin/env"]).stdout
    with world.cp.db.read() as s:
        actions = [e.action for e in s.execute(select(AuditEvent)).scalars()]
    assert "release.switch" in actions


def test_a_failed_blue_green_never_serves(world: World) -> None:
    old = set(three_healthy(world))
    seen: list[dict[str, bool]] = []
    version = world.release(config(check_path="/nope", wait="3s", strategy="bluegreen"))
    v2 = world.run_until_done(version, observe=lambda: seen.append(world.in_rotation()))
    assert v2.status == "failed"
    reason = json.loads(v2.detail)["reason"]
    assert reason.endswith("the new machines were removed; v1 kept serving")
    for table in seen:
        assert {name for name, up in table.items() if up} <= old, table
    assert {m.id for m in world.machines()} == old  # the new set is gone
    assert all(m.running_version == 1 for m in world.machines())


def test_a_machine_leaves_rotation_and_drains_before_it_is_replaced(world: World) -> None:
    three_healthy(world)
    seen: list[tuple[dict[str, bool], dict[str, tuple[int, int | None]]]] = []

    def observe() -> None:
        rows = {m.id: (m.version, m.running_version) for m in world.machines()}
        seen.append((world.in_rotation(), rows))

    version = world.release(config(greeting="v2", extra='drain_timeout = "1s"'))
    v2 = world.run_until_done(version, observe=observe)
    assert v2.status == "complete", v2.detail
    for machine in world.machines():
        moved = next(n for n, (_, rows) in enumerate(seen) if rows[machine.id][0] == 2)
        # Before it was told to move, it ran v1 out of rotation: drained, not stopped.
        drained = [
            n
            for n, (table, rows) in enumerate(seen[:moved])
            if rows[machine.id] == (1, 1) and table[machine.id] is False
        ]
        assert drained, machine.id
    # And at most one machine was out of rotation at a time (max_unavailable 1).
    for table, _ in seen:
        assert sum(1 for up in table.values() if not up) <= 1, table

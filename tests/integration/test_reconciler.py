"""The agent's reconciler against real runc: assignments in, running machines out."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import time
from pathlib import Path

import pytest

from hangar.agent.reconciler import Reconciler
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.contract.assignments import Assignment, CheckSpec
from hangar.domain.addressing import host_slice, machine_address, network_prefix
from hangar.domain.reconcile import ActionKind, RestartPolicy
from hangar.images.store import Image, ImageStore
from tests.integration.conftest import BASE_UID, leftovers, needs_root, wait_for

pytestmark = [pytest.mark.slow, needs_root]
SLICE = host_slice(network_prefix(ipaddress.IPv6Network("fd43:4343::/32"), 1), 1)
CHECK = CheckSpec("http", "http", 8080, interval=0.2, timeout=1, grace_period=0.1, path="/healthz")


def assignment(base_dir: Path, machine_id: str, index: int, **kw: object) -> Assignment:
    values: dict[str, object] = {
        "machine_id": machine_id,
        "app": "hello",
        "version": 1,
        "state": "started",
        "image": f"oci:{base_dir / 'hello'}:latest",
        "memory_mb": 64,
        "address": str(machine_address(SLICE, index)),
        "checks": [CHECK],
        "restart": RestartPolicy("on-failure", max_retries=3, base_delay=0.2),
    }
    values.update(kw)
    return Assignment(**values)  # type: ignore[arg-type]


@pytest.fixture
def reconciler(runtime: RuncRuntime, base_dir: Path, hello: Image) -> Reconciler:
    images = ImageStore(base_dir / "images", uid_base=BASE_UID)
    return Reconciler(runtime, images, base_dir / "agent")


def settle(rec: Reconciler, assignments: list[Assignment], rounds: int = 40) -> None:
    """Reconcile until nothing but waiting is left, as the agent's loop would."""
    for _ in range(rounds):
        outcomes = rec.reconcile(assignments, time.time())
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
        if all(o.action.kind is ActionKind.WAIT for o in outcomes):
            if not outcomes:
                return
            time.sleep(0.1)


def healthy(rec: Reconciler, machine_id: str) -> bool:
    rec.health.tick(time.time())
    return rec.health.healthy(machine_id) is True


def test_lifecycle(reconciler: Reconciler, runtime: RuncRuntime, base_dir: Path) -> None:
    one = assignment(base_dir, "r-1", 2)
    try:
        settle(reconciler, [one])
        assert runtime.state("r-1").status == "running"
        wait_for(lambda: healthy(reconciler, "r-1"))

        # A crash is restarted per policy, keeping the machine's logs.
        lines_before = len(runtime.logs("r-1"))
        runtime.signal("r-1", "SIGKILL")
        wait_for(lambda: runtime.state("r-1").status == "stopped")
        settle(reconciler, [one])
        assert runtime.state("r-1").status == "running"
        assert reconciler.describe("r-1")["restarts"]
        assert len(runtime.logs("r-1")) >= lines_before
        wait_for(lambda: healthy(reconciler, "r-1"))

        # A new version replaces the machine.
        pid_v1 = runtime.state("r-1").pid
        two = assignment(base_dir, "r-1", 2, version=2, env={"GREETING": "v2"})
        settle(reconciler, [two])
        assert runtime.state("r-1").pid != pid_v1
        assert b"GREETING=v2" in runtime.exec("r-1", ["/bin/env"]).stdout
        assert reconciler.describe("r-1")["version"] == 2

        # A restarted agent adopts the healthy machine without touching it.
        pid_v2 = runtime.state("r-1").pid
        fresh = Reconciler(
            RuncRuntime(runtime.state_dir, runtime.bundles_dir, uid_base=BASE_UID),
            reconciler.images,
            base_dir / "agent",
        )
        assert fresh.reconcile([two], time.time()) == []
        assert runtime.state("r-1").pid == pid_v2
        # ...and checks it again, so the edge can put it back in rotation.
        wait_for(lambda: healthy(fresh, "r-1"))

        # Unassigned: removed, with nothing left behind.
        settle(reconciler, [])
        assert leftovers(runtime, "r-1") == []
    finally:
        runtime.remove("r-1")


def test_crash_loop_ends_failed(
    reconciler: Reconciler, runtime: RuncRuntime, base_dir: Path
) -> None:
    bad = assignment(
        base_dir,
        "r-loop",
        3,
        args=["/bin/sh", "-c", "echo dying; exit 7"],
        checks=[],
        restart=RestartPolicy("on-failure", max_retries=2, base_delay=0.05),
    )
    try:
        for _ in range(100):
            reconciler.reconcile([bad], time.time())
            if reconciler.describe("r-loop").get("failed"):
                break
            time.sleep(0.05)
        info = reconciler.describe("r-loop")
        assert info["failed"] and "exited 7 after 2 restarts" in info["reason"]
        assert info["exit_code"] == 7 and len(info["restarts"]) == 2
        assert reconciler.reconcile([bad], time.time() + 3600) == []  # left alone
    finally:
        runtime.remove("r-loop")


def test_one_bad_assignment_does_not_stop_the_others(
    reconciler: Reconciler, runtime: RuncRuntime, base_dir: Path
) -> None:
    good = assignment(base_dir, "r-good", 4)
    missing = assignment(base_dir, "r-bad", 5, image=f"oci:{base_dir / 'nope'}:latest")
    try:
        outcomes = reconciler.reconcile([missing, good], time.time())
        by_id = {o.action.machine_id: o for o in outcomes}
        assert not by_id["r-bad"].ok and "not an OCI image layout" in by_id["r-bad"].error
        assert by_id["r-good"].ok and runtime.state("r-good").status == "running"
        assert leftovers(runtime, "r-bad") == []
    finally:
        runtime.remove("r-good")


def _kill_everything_of(runtime: RuncRuntime, machine_ids: list[str]) -> None:
    """As a reboot would: every shim and every machine process gone at once, SIGKILL."""
    for machine_id in machine_ids:
        machine = runtime.state_dir / "machines" / machine_id
        pids = [int((machine / name).read_text()) for name in ("shim.pid", "container.pid")]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for machine_id in machine_ids:
        wait_for(lambda m=machine_id: runtime.state(m).status == "stopped")  # type: ignore[misc]


def test_after_a_host_restart_each_machine_comes_back_as_its_policy_says(
    reconciler: Reconciler, runtime: RuncRuntime, base_dir: Path
) -> None:
    policies = {"r-always": "always", "r-onfail": "on-failure", "r-never": "no"}
    wanted = [
        assignment(base_dir, machine_id, 10 + n, restart=RestartPolicy(policy, base_delay=0.05))
        for n, (machine_id, policy) in enumerate(policies.items())
    ]
    try:
        settle(reconciler, wanted)
        for machine_id in policies:
            assert runtime.state(machine_id).status == "running"
        before = {m: runtime.state(m).pid for m in policies}
        # The agent dies too: nothing of it survives but its state directory.
        _kill_everything_of(runtime, list(policies))
        fresh = Reconciler(
            RuncRuntime(runtime.state_dir, runtime.bundles_dir, uid_base=BASE_UID),
            reconciler.images,
            base_dir / "agent",
        )
        settle(fresh, wanted)
        for machine_id in ("r-always", "r-onfail"):
            state = runtime.state(machine_id)
            assert state.status == "running" and state.pid != before[machine_id]
            wait_for(lambda m=machine_id: healthy(fresh, m))  # type: ignore[misc]
        assert runtime.state("r-never").status == "stopped"  # policy "no": left stopped
    finally:
        for machine_id in policies:
            runtime.remove(machine_id)

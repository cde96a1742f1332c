"""One organization's slow work never delays another's machines (real runc, the real agent).

Tried as an attacker in organization "globex" would: a health check against
a server that trickles one byte every 1.5 s (each byte used to restart the
check's timeout), and a machine that ignores its stop signal with a 30 s kill
timeout, stopped at the same moment. Meanwhile "acme" stops its own machine:
the agent's loop must stop it long before the attack is over. The bound is
generous on purpose: it proves the property (acme does not wait for globex),
it is not a speed benchmark.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from hangar.agent.health import HealthMonitor
from hangar.agent.offload import Offload
from hangar.agent.reconciler import Reconciler
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.service import Agent
from hangar.contract.assignments import Assignment, CheckSpec, MachineStatus
from hangar.domain.addressing import host_slice, machine_address, network_prefix
from hangar.domain.routing import RoutingTable
from hangar.images.store import Image, ImageStore
from tests.integration.conftest import BASE_UID, needs_root, wait_for

pytestmark = [pytest.mark.slow, needs_root]
SLICE = host_slice(network_prefix(ipaddress.IPv6Network("fd43:4444::/32"), 1), 1)
ATTACK_SECONDS = 60.0
BOUND_SECONDS = 15.0


class Link:
    """A control plane in memory: what the agent is told, and what it reports."""

    def __init__(self) -> None:
        self.wanted: dict[str, Assignment] = {}
        self.lock = threading.Lock()

    def set(self, want: Assignment) -> None:
        with self.lock:
            self.wanted[want.machine_id] = want

    def assignments(self, wait: float) -> list[Assignment]:
        with self.lock:
            return list(self.wanted.values())

    def report(self, statuses: Mapping[str, MachineStatus], errors: Mapping[str, str]) -> None:
        pass

    def image(self, want: Assignment) -> str:
        return want.image

    def secrets(self, want: Assignment) -> dict[str, str]:
        return {}

    def routes(self) -> RoutingTable:
        return RoutingTable()

    def names(self) -> list[Any]:
        return []

    def peers(self) -> list[Any]:
        return []

    def register_mesh(self, public_key: str, endpoint: str) -> None:
        pass

    def report_mesh(self, latest_handshake: int) -> None:
        pass


class Trickler:
    """An HTTP server that answers one byte every 1.5 s, for as long as the attack lasts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET6)
        self.sock.bind(("::1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            for byte in b"HTTP/1.0 200 OK but slowly" * 4:
                if self.stopping.wait(1.5):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()


@pytest.fixture
def agent(runtime: RuncRuntime, base_dir: Path, image: Image) -> Iterator[tuple[Agent, Link]]:
    link = Link()
    reconciler = Reconciler(
        runtime,
        ImageStore(base_dir / "images", uid_base=BASE_UID),
        base_dir / "agent-tenants",
        health=HealthMonitor(Offload(workers=4, per_org=2, name="test-checks")),
        offload=Offload(workers=4, per_org=2, name="test-machines"),
    )
    agent = Agent(link, reconciler, "host-tenants")
    stop = threading.Event()

    def loop() -> None:
        # The agent's loop as the server runs it: one round after another.
        while not stop.is_set():
            agent.tick(time.time())
            stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield agent, link
    stop.set()
    thread.join(timeout=ATTACK_SECONDS + 30)
    agent.stop()
    for machine_id in ("t-acme", "t-evil"):
        runtime.remove(machine_id)


def _machine(
    base_dir: Path, machine_id: str, org: str, index: int, script: str, **kw: Any
) -> Assignment:
    return Assignment(
        machine_id=machine_id,
        app=f"app-{org}",
        version=1,
        state="started",
        image=f"oci:{base_dir / 'layout'}",
        args=["/bin/sh", "-c", script],
        memory_mb=64,
        address=str(machine_address(SLICE, index)),
        org=org,
        **kw,
    )


def test_another_orgs_stop_is_not_held_by_a_slow_check_or_a_stubborn_machine(
    agent: tuple[Agent, Link], runtime: RuncRuntime, base_dir: Path
) -> None:
    the_agent, link = agent
    acme = _machine(
        base_dir,
        "t-acme",
        "acme",
        7,
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
        kill_signal="SIGTERM",
        kill_timeout=5.0,
    )
    evil = _machine(
        base_dir,
        "t-evil",
        "globex",
        8,
        "trap '' INT TERM; while true; do sleep 1; done",
        kill_signal="SIGINT",
        kill_timeout=30.0,
    )
    link.set(acme)
    link.set(evil)
    wait_for(
        lambda: (
            runtime.state("t-acme").status == "running"
            and runtime.state("t-evil").status == "running"
        ),
        60,
    )
    trickler = Trickler()
    try:
        # globex's checks: against the trickling server, every 100 ms, with
        # timeouts from the configured two seconds to ten years.
        checks = [
            CheckSpec(f"slow{i}", "http", trickler.port, interval=0.1, timeout=t, grace_period=0)
            for i, t in enumerate((2.0, 3650 * 86400.0, 60.0))
        ]
        the_agent.reconciler.health.watch(
            "t-evil-probe", ipaddress.IPv6Address("::1"), checks, time.time(), org="globex"
        )
        time.sleep(2.0)  # the checks are under way
        link.set(dataclasses.replace(evil, state="stopped"))
        time.sleep(0.5)  # the stubborn stop is under way
        asked = time.monotonic()
        link.set(dataclasses.replace(acme, state="stopped"))
        wait_for(lambda: runtime.state("t-acme").status == "stopped", ATTACK_SECONDS)
        took = time.monotonic() - asked
        # globex's machine is still waiting out its kill timeout: the attack is on.
        assert runtime.state("t-evil").status == "running"
        assert took < BOUND_SECONDS, f"acme's stop took {took:.1f}s during globex's attack"
        # globex's check ended by its own deadline, not by the trickle.
        wait_for(lambda: the_agent.reconciler.health.results("t-evil-probe"), 20)
        seen = {r.name: r for r in the_agent.reconciler.health.results("t-evil-probe")}
        assert not seen["slow0"].passing and "timed out" in seen["slow0"].output
        # And globex's machine stops in the end, SIGKILL after its kill timeout.
        wait_for(lambda: runtime.state("t-evil").status == "stopped", 60)
    finally:
        trickler.close()

"""Health checks share an organization's slots fairly: none starves another."""

from __future__ import annotations

import ipaddress
import time

import pytest

from hangar.agent import health
from hangar.agent.health import HealthMonitor
from hangar.agent.offload import Offload
from hangar.contract.assignments import CheckSpec


def test_a_new_machine_gets_its_check_run_beside_busy_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "run_check", lambda address, check: (True, "ok"))
    pool = Offload(workers=2, per_org=1)
    monitor = HealthMonitor(offload=pool)
    check = CheckSpec("http", "http", 8080, interval=0.05, grace_period=0)
    address = ipaddress.IPv6Address("fd00::1")
    now = 1000.0
    # Machines watched first, whose checks come due at every round...
    for n in range(5):
        monitor.watch(f"old{n}", address, [check], now, org="acme")
    monitor.watch("new", address, [check], now + 0.5, org="acme")
    try:
        for _ in range(60):
            now += 0.1  # each round, every check is due again
            monitor.tick(now)
            deadline = time.monotonic() + 5
            while pool.running("acme") and time.monotonic() < deadline:
                time.sleep(0.001)  # the check started this round has finished
        # ...the one watched last still gets its turn, as every other does.
        for machine_id in ("new", *(f"old{n}" for n in range(5))):
            assert monitor.healthy(machine_id) is True, machine_id
    finally:
        pool.shutdown()

"""Health checks from hangar.toml, run by the agent against machines' private addresses.

``HealthMonitor.tick(now)`` runs every check that is due (after its grace
period, every interval) and keeps the latest result per check. A machine is
healthy when every one of its checks last passed; a machine with no checks is
healthy once started. Failing machines are what the edge takes out of rotation.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hangar.agent.offload import Offload
from hangar.contract.assignments import CheckResult, CheckSpec
from hangar.telemetry.metrics import HEALTH_CHECKS

__all__ = ["MAX_CHECK_SECONDS", "HealthMonitor", "run_check"]

# However long a check says it may take, one attempt ends by then.
MAX_CHECK_SECONDS = 60.0


def run_check(address: ipaddress.IPv6Address, check: CheckSpec) -> tuple[bool, str]:
    """One attempt; (passing, what was seen).

    The check's timeout bounds the whole attempt (connect, send, every read
    together), capped at ``MAX_CHECK_SECONDS``: a server that trickles a
    byte at a time cannot stretch it.
    """
    deadline = time.monotonic() + min(check.timeout, MAX_CHECK_SECONDS)

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        return remaining

    try:
        with socket.create_connection((str(address), check.port), timeout=left()) as sock:
            if check.kind == "tcp":
                return True, "connected"
            sock.settimeout(left())
            headers = "".join(f"{k}: {v}\r\n" for k, v in check.headers.items())
            request = (
                f"{check.method} {check.path} HTTP/1.0\r\nHost: {address}\r\n"
                f"User-Agent: hangar-health\r\n{headers}\r\n"
            )
            sock.sendall(request.encode())
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                sock.settimeout(left())
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return False, f"{check.kind} check failed: {exc}"
    status_line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split()
    if len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400:
        return True, status_line
    return False, f"unexpected response: {status_line or '(none)'}"


@dataclass
class _Watched:
    address: ipaddress.IPv6Address
    checks: list[CheckSpec]
    started_at: float
    org: str = ""
    serial: int = 0
    due: dict[str, float] = field(default_factory=dict)
    results: dict[str, CheckResult] = field(default_factory=dict)


def _count(watched: _Watched, passing: bool) -> None:
    HEALTH_CHECKS.labels(watched.org, "passing" if passing else "failing").inc()


class HealthMonitor:
    """The latest result of every check of every watched machine.

    With an ``offload`` pool (as the agent runs it), ``tick`` only starts
    due checks there and collects those that finished, so no check ever runs
    on the loop that starts and stops machines, and one organization's checks
    take at most its share of the pool. Without one, checks run in ``tick``.
    """

    def __init__(self, offload: Offload | None = None) -> None:
        self._machines: dict[str, _Watched] = {}
        self.offload = offload
        self._serial = 0

    def watch(
        self,
        machine_id: str,
        address: ipaddress.IPv6Address,
        checks: list[CheckSpec],
        started_at: float,
        org: str = "",
    ) -> None:
        """Start (or restart) checking a machine; forgets its earlier results."""
        self._serial += 1
        self._machines[machine_id] = _Watched(
            address,
            list(checks),
            started_at,
            org,
            self._serial,
            due={c.name: started_at + c.grace_period for c in checks},
        )

    def watching(self, machine_id: str) -> bool:
        return machine_id in self._machines

    def forget(self, machine_id: str) -> None:
        self._machines.pop(machine_id, None)

    def tick(self, now: float) -> list[CheckResult]:
        """Run (or, with an offload pool, start) every due check; return the results produced."""
        if self.offload is not None:
            return self._tick_offloaded(self.offload, now)
        produced = []
        for watched in self._machines.values():
            for check in watched.checks:
                if now < watched.due[check.name]:
                    continue
                passing, seen = run_check(watched.address, check)
                result = CheckResult(check.name, passing, seen, now)
                watched.results[check.name] = result
                watched.due[check.name] = now + check.interval
                produced.append(result)
                _count(watched, passing)
        return produced

    @staticmethod
    def _key(machine_id: str, watched: _Watched, check: str) -> str:
        return f"check:{watched.serial}:{machine_id}:{check}"

    def _tick_offloaded(self, pool: Offload, now: float) -> list[CheckResult]:
        produced = []
        finished: dict[str, Future[Any]] = {
            k: f for k, f in pool.take().items() if k.startswith("check:")
        }
        due: list[tuple[float, str, str, _Watched, CheckSpec]] = []
        for machine_id, watched in self._machines.items():
            for check in watched.checks:
                key = self._key(machine_id, watched, check.name)
                future = finished.pop(key, None)
                if future is not None:
                    passing, seen = future.result()
                    result = CheckResult(check.name, passing, seen, now)
                    watched.results[check.name] = result
                    produced.append(result)
                    _count(watched, passing)
                if now < watched.due[check.name] or pool.busy(key):
                    continue
                due.append((watched.due[check.name], machine_id, key, watched, check))
        # The longest overdue first: with an organization's slots full, a
        # machine whose checks come due often must not starve a newer one.
        for _, _, key, watched, check in sorted(due, key=lambda d: (d[0], d[1])):
            # Not started when the organization has no free slot: due still.
            if pool.submit(key, watched.org, partial(run_check, watched.address, check)):
                watched.due[check.name] = now + check.interval
        return produced

    def next_due(self) -> float | None:
        """When the next check is due, if any machine has checks."""
        times = [t for watched in self._machines.values() for t in watched.due.values()]
        if not times:
            return None
        if self.offload is not None:
            # A check waiting for its organization's slot is due already: look
            # again shortly, not in a spin (a finished check wakes the loop).
            return max(min(times), time.time() + 0.25)
        return min(times)

    def results(self, machine_id: str) -> list[CheckResult]:
        watched = self._machines.get(machine_id)
        return list(watched.results.values()) if watched else []

    def healthy(self, machine_id: str) -> bool | None:
        """True, False, or None while a check has not run yet."""
        watched = self._machines.get(machine_id)
        if watched is None:
            return None
        if not watched.checks:
            return True
        if len(watched.results) < len(watched.checks):
            return None
        return all(r.passing for r in watched.results.values())

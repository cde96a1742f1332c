"""Health checks from hangar.toml, run by the agent against machines' private addresses.

``HealthMonitor.tick(now)`` runs every check that is due (after its grace
period, every interval) and keeps the latest result per check. A machine is
healthy when every one of its checks last passed; a machine with no checks is
healthy once started. Failing machines are what the edge takes out of rotation.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from hangar.contract.assignments import CheckResult, CheckSpec

__all__ = ["HealthMonitor", "run_check"]


def run_check(address: ipaddress.IPv6Address, check: CheckSpec) -> tuple[bool, str]:
    """One attempt; (passing, what was seen)."""
    try:
        with socket.create_connection((str(address), check.port), timeout=check.timeout) as sock:
            if check.kind == "tcp":
                return True, "connected"
            sock.settimeout(check.timeout)
            headers = "".join(f"{k}: {v}\r\n" for k, v in check.headers.items())
            request = (
                f"{check.method} {check.path} HTTP/1.0\r\nHost: {address}\r\n"
                f"User-Agent: hangar-health\r\n{headers}\r\n"
            )
            sock.sendall(request.encode())
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
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
    due: dict[str, float] = field(default_factory=dict)
    results: dict[str, CheckResult] = field(default_factory=dict)


class HealthMonitor:
    def __init__(self) -> None:
        self._machines: dict[str, _Watched] = {}

    def watch(
        self,
        machine_id: str,
        address: ipaddress.IPv6Address,
        checks: list[CheckSpec],
        started_at: float,
    ) -> None:
        """Start (or restart) checking a machine; forgets its earlier results."""
        self._machines[machine_id] = _Watched(
            address,
            list(checks),
            started_at,
            due={c.name: started_at + c.grace_period for c in checks},
        )

    def watching(self, machine_id: str) -> bool:
        return machine_id in self._machines

    def forget(self, machine_id: str) -> None:
        self._machines.pop(machine_id, None)

    def tick(self, now: float) -> list[CheckResult]:
        """Run every due check; return the results produced."""
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
        return produced

    def next_due(self) -> float | None:
        """When the next check is due, if any machine has checks."""
        times = [t for watched in self._machines.values() for t in watched.due.values()]
        return min(times) if times else None

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

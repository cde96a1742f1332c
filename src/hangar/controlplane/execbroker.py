"""Commands for machines on other hosts: handed to their agents, answers waited for.

The control plane cannot call an agent (agents only call out), so an
``exec`` on another host's machine is queued here for that host. The host's
agent picks it up with its next long poll, runs it, and posts the result.
The API request waits for that result. The queue lives in this process, so
with several API replicas an exec must reach the replica the host polls.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from hangar.contract.execs import ExecResult
from hangar.errors import Conflict, WaitTimeout

__all__ = ["ExecBroker", "ExecRequest"]


@dataclass
class ExecRequest:
    id: str
    host_id: str
    machine_id: str
    cmd: list[str]
    timeout: float
    taken: bool = False
    result: ExecResult | None = None
    error: str | None = None  # the host could not run it (machine not running, …)
    done: threading.Event = field(default_factory=threading.Event)


class ExecBroker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, ExecRequest] = {}

    def run(
        self, host_id: str, machine_id: str, cmd: list[str], timeout: float, *, pickup: float = 15
    ) -> ExecResult:
        """Queue ``cmd`` for the host and wait for its result."""
        request = ExecRequest(f"x_{secrets.token_hex(8)}", host_id, machine_id, cmd, timeout)
        with self._lock:
            self._requests[request.id] = request
        try:
            deadline = time.monotonic() + pickup
            while not request.taken and time.monotonic() < deadline:
                request.done.wait(0.05)
            if not request.taken:
                raise WaitTimeout(
                    "the machine's host did not pick up the command",
                    hint="is its agent running? `hangar hosts list` shows when it was last seen",
                )
            if not request.done.wait(timeout + 10):
                raise WaitTimeout(f"the command did not finish within {timeout:g}s")
            if request.result is None:
                raise Conflict(request.error or "the host could not run the command")
            return request.result
        finally:
            with self._lock:
                self._requests.pop(request.id, None)

    def pending(self, host_id: str) -> list[ExecRequest]:
        """Hand the host its queued commands (each once)."""
        with self._lock:
            found = [r for r in self._requests.values() if r.host_id == host_id and not r.taken]
            for request in found:
                request.taken = True
        return found

    def has_pending(self, host_id: str) -> bool:
        with self._lock:
            return any(r.host_id == host_id and not r.taken for r in self._requests.values())

    def finish(
        self, host_id: str, request_id: str, result: ExecResult | None, error: str | None = None
    ) -> bool:
        """Record a host's result (or why it could not run it); False if nothing waits."""
        with self._lock:
            request = self._requests.get(request_id)
            if request is None or request.host_id != host_id or not request.taken:
                return False
            request.result, request.error = result, error
        request.done.set()
        return True

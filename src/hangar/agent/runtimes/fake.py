"""An in-memory machine driver, for unit tests only.

``FakeRuntime`` implements the ``Runtime`` protocol without running anything,
so the reconciler's apply side can be tested in milliseconds: it keeps its
machines in a dict, records every call in ``calls``, can be told to fail a
machine's start or stop, and lets a test make a machine exit with a code.
It is registered as ``fake`` only once this module is imported, which
production code never does; no setting can select it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hangar.agent.runtimes.base import ExecResult, MachineSpec, RuntimeState
from hangar.agent.runtimes.registry import register
from hangar.errors import CommandError, Conflict, NotFound, ValidationError

__all__ = ["Call", "FakeMachine", "FakeRuntime"]


@dataclass(frozen=True)
class Call:
    """One call a test can assert on: the method, the machine and its keyword arguments."""

    method: str
    machine_id: str
    args: tuple[tuple[str, object], ...] = ()


@dataclass
class FakeMachine:
    spec: MachineSpec
    status: str = "running"  # "running" or "stopped"
    pid: int | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    started: bool = True
    signals: list[str] = field(default_factory=list)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="microseconds")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@register("fake")
class FakeRuntime:
    """Machines that are entries in a dict; see the module docstring."""

    name = "fake"
    root_uid = 0

    def __init__(self, state_dir: Path, bundles_dir: Path) -> None:
        self.state_dir = state_dir
        self.bundles_dir = bundles_dir
        self.machines: dict[str, FakeMachine] = {}
        self.calls: list[Call] = []
        # machine id -> stderr: the next start (or restart) of it fails with that.
        self.fail_start: dict[str, str] = {}
        # machine id -> stderr: every stop of it fails with that, leaving it running.
        self.fail_stop: dict[str, str] = {}
        # machine id -> exit code it reports when stopped by a signal (default 128+15).
        self.stop_exit_code: dict[str, int] = {}
        self.exec_results: dict[str, ExecResult] = {}
        self._pids = itertools.count(1000)

    # what tests drive

    def exit(self, machine_id: str, code: int, *, at: float | None = None) -> None:
        """The machine's process exits by itself with ``code`` (at ``at``, default now)."""
        machine = self._get(machine_id)
        machine.status, machine.pid = "stopped", None
        machine.exit_code = code
        machine.finished_at = _now() if at is None else _iso(at)

    def emit(self, machine_id: str, stream: str, line: str) -> None:
        """The machine writes ``line`` to ``stream``, captured as the runc shim would."""
        path = self.log_path(machine_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps({"ts": _now(), "stream": stream, "line": line}) + "\n")

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # the Runtime protocol

    def _get(self, machine_id: str) -> FakeMachine:
        machine = self.machines.get(machine_id)
        if machine is None:
            raise NotFound(f"machine {machine_id} not found on this host")
        return machine

    def _run(self, spec: MachineSpec) -> RuntimeState:
        failure = self.fail_start.pop(spec.id, None)
        if failure is not None:
            raise CommandError(["fake", "start", spec.id], 1, failure)
        machine = FakeMachine(spec, pid=next(self._pids))
        self.machines[spec.id] = machine
        return self.state(spec.id)

    def start(self, spec: MachineSpec) -> RuntimeState:
        self.calls.append(Call("start", spec.id))
        if spec.id in self.machines:
            raise Conflict(f"machine {spec.id} already exists on this host")
        return self._run(spec)

    def restart(self, spec: MachineSpec) -> RuntimeState:
        self.calls.append(Call("restart", spec.id))
        if self._get(spec.id).status == "running":
            raise Conflict(f"machine {spec.id} is running; stop it first")
        return self._run(spec)

    def state(self, machine_id: str) -> RuntimeState:
        machine = self.machines.get(machine_id)
        if machine is None:
            return RuntimeState("absent")
        return RuntimeState(
            machine.status,
            pid=machine.pid,
            exit_code=machine.exit_code,
            finished_at=machine.finished_at,
            started=machine.started,
        )

    def signal(self, machine_id: str, signal: str) -> None:
        self.calls.append(Call("signal", machine_id, (("signal", signal),)))
        if not signal.startswith("SIG"):
            raise ValidationError(f"unknown signal {signal!r}")
        machine = self._get(machine_id)
        if machine.status != "running":
            raise Conflict(f"machine {machine_id} is not running")
        machine.signals.append(signal)

    def stop(
        self, machine_id: str, *, signal: str = "SIGTERM", timeout: float = 10.0
    ) -> RuntimeState:
        self.calls.append(Call("stop", machine_id, (("signal", signal), ("timeout", timeout))))
        machine = self.machines.get(machine_id)
        if machine is None or machine.status != "running":
            return self.state(machine_id)
        failure = self.fail_stop.get(machine_id)
        if failure is not None:
            raise CommandError(["fake", "kill", machine_id, signal], 1, failure)
        machine.signals.append(signal)
        self.exit(machine_id, self.stop_exit_code.get(machine_id, 128 + 15))
        return self.state(machine_id)

    def exec(self, machine_id: str, argv: list[str], *, timeout: float = 60.0) -> ExecResult:
        self.calls.append(Call("exec", machine_id, (("argv", tuple(argv)),)))
        if not argv:
            raise ValidationError("nothing to run: give a command")
        if self.state(machine_id).status != "running":
            raise Conflict(f"machine {machine_id} is not running", hint="start it first")
        return self.exec_results.get(machine_id, ExecResult(0, b"", b""))

    def logs(self, machine_id: str) -> list[dict[str, str]]:
        self._get(machine_id)
        path = self.log_path(machine_id)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def log_path(self, machine_id: str) -> Path:
        return self.state_dir / "machines" / machine_id / "output.log"

    def remove(self, machine_id: str) -> None:
        self.calls.append(Call("remove", machine_id))
        self.machines.pop(machine_id, None)
        shutil.rmtree(self.log_path(machine_id).parent, ignore_errors=True)

    def list(self) -> list[str]:
        return sorted(self.machines)

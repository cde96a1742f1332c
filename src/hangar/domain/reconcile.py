"""The agent's reconciler, planning half (pure): desired and observed in, actions out.

``plan(desired, observed, now)`` compares what the control plane assigned to
this host with what the runtime reports and returns the actions that close
the gap. It does no I/O, so it is property-tested; ``agent.reconciler``
applies the actions against the real runtime.

Rules, per machine:

- observed but not desired: ``remove`` (an orphan, e.g. left by a crash);
- desired ``destroyed``: ``remove`` if anything is there;
- desired ``stopped``: ``stop`` if running;
- desired ``started``:
  absent: ``start``; running an old version (or generation: a restart was
  asked for): ``replace``; running: nothing;
  stopped at an old version: ``replace``; stopped otherwise: the restart policy
  decides: ``restart`` (after an exponential backoff: ``wait`` until then), or
  nothing (policy ``no``, or ``on-failure`` after a clean exit), or ``fail``
  once the retries inside the window are used up (and nothing after that,
  until a new version or an explicit start). A machine that stopped with no
  exit known (its processes vanished with the host, on a reboot) is
  restarted at once when its policy restarts failures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Action", "ActionKind", "Desired", "Observed", "RestartPolicy", "backoff", "plan"]


class ActionKind(StrEnum):
    START = "start"
    STOP = "stop"
    REMOVE = "remove"
    REPLACE = "replace"
    RESTART = "restart"
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True)
class RestartPolicy:
    policy: str = "on-failure"  # "no", "always" or "on-failure"
    max_retries: int = 10
    window: float = 300.0  # seconds in which max_retries restarts are allowed
    base_delay: float = 0.5
    max_delay: float = 30.0


@dataclass(frozen=True)
class Desired:
    machine_id: str
    version: int
    state: str  # "started", "stopped" or "destroyed"
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    generation: int = 0  # bumped to restart the machine in place


@dataclass(frozen=True)
class Observed:
    machine_id: str
    version: int | None
    status: str  # "running", "stopped" or "absent"
    exit_code: int | None = None
    finished_at: float | None = None
    restarts: Sequence[float] = field(default_factory=tuple)  # when each restart happened
    failed: bool = False  # the restart policy already gave up on it
    generation: int = 0


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    machine_id: str
    reason: str = ""
    at: float | None = None  # for WAIT: when to look again


def backoff(policy: RestartPolicy, attempt: int) -> float:
    """Delay before restart number ``attempt`` (0-based): doubling, capped."""
    return float(min(policy.max_delay, policy.base_delay * (2 ** min(attempt, 30))))


def _restart_decision(want: Desired, seen: Observed, now: float) -> Action | None:
    policy = want.restart
    clean = seen.exit_code == 0
    if policy.policy == "no" or (policy.policy == "on-failure" and clean):
        return None
    recent = [t for t in seen.restarts if now - t < policy.window]
    if len(recent) >= policy.max_retries:
        return Action(
            ActionKind.FAIL,
            want.machine_id,
            f"exited {seen.exit_code} after {len(recent)} restarts in "
            f"{policy.window:g}s; giving up",
        )
    # No exit time: the machine stopped while nothing watched it (its shim
    # died with it, as on a reboot). Waiting "from now" would wait forever.
    if seen.finished_at is None:
        return Action(ActionKind.RESTART, want.machine_id, "stopped while unwatched")
    due = seen.finished_at + backoff(policy, len(recent))
    if now < due:
        return Action(ActionKind.WAIT, want.machine_id, "restart backoff", at=due)
    return Action(ActionKind.RESTART, want.machine_id, f"exited {seen.exit_code}")


def plan(
    desired: Mapping[str, Desired], observed: Mapping[str, Observed], now: float
) -> list[Action]:
    actions: list[Action] = []
    for machine_id in sorted(set(observed) - set(desired)):
        if observed[machine_id].status != "absent":
            actions.append(Action(ActionKind.REMOVE, machine_id, "not assigned to this host"))
    for machine_id in sorted(desired):
        want = desired[machine_id]
        seen = observed.get(machine_id) or Observed(machine_id, None, "absent")
        if want.state == "destroyed":
            if seen.status != "absent":
                actions.append(Action(ActionKind.REMOVE, machine_id, "destroyed"))
        elif want.state == "stopped":
            if seen.status == "running":
                actions.append(Action(ActionKind.STOP, machine_id, "stop requested"))
        elif seen.status == "absent":
            actions.append(Action(ActionKind.START, machine_id, "assigned"))
        elif seen.version != want.version:
            actions.append(
                Action(ActionKind.REPLACE, machine_id, f"version {seen.version} -> {want.version}")
            )
        elif seen.generation != want.generation:
            actions.append(Action(ActionKind.REPLACE, machine_id, "restart requested"))
        elif seen.status == "stopped" and not seen.failed:
            decision = _restart_decision(want, seen, now)
            if decision is not None:
                actions.append(decision)
    return actions

"""Commands run in a machine on a person's behalf (``hangar machines exec``), audited.

What is recorded of a command is its program, its number of arguments and a
SHA-256 of its arguments, never the arguments themselves: a password given on
a command line must not outlive the command in the audit trail, which is
kept for good. The same holds for errors: a command that fails to run or
times out answers with an error that names the program, never its
arguments, so they reach neither the server's log nor the audit trail.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hangar.audit.log import AuditContext
from hangar.contract.execs import ExecResult
from hangar.controlplane.changes import change
from hangar.controlplane.machine_control import find_machine
from hangar.controlplane.orgslots import OrgSlots
from hangar.controlplane.state import ControlPlane
from hangar.errors import HangarError
from hangar.store.tables import App

__all__ = ["EXEC_SLOTS", "args_digest", "exec_detail", "run_in_machine"]

# Commands running at once per organization, on every host together.
EXEC_SLOTS = OrgSlots(4, "commands")

# How much of a program's name is recorded.
PROGRAM_CHARS = 200


def args_digest(args: list[str]) -> str:
    """SHA-256 (hex) of the arguments after the program, as a JSON array of strings.

    ``json.dumps(args, ensure_ascii=False, separators=(",", ":"))`` encoded as
    UTF-8: an auditor who is shown a command line can check it against the
    trail; the trail alone does not show it.
    """
    encoded = json.dumps(args, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def exec_detail(cmd: list[str]) -> dict[str, Any]:
    """What the audit trail keeps of ``cmd``: program, argc and the arguments' digest."""
    return {
        "program": cmd[0][:PROGRAM_CHARS],
        "argc": len(cmd),
        "args_sha256": args_digest(cmd[1:]),
    }


def _scrubbed(exc: HangarError, cmd: list[str], machine_id: str) -> HangarError:
    """``exc`` if it shows none of the arguments, else the same kind of error without them."""
    args = [a for a in cmd[1:] if a]
    shown = f"{exc.message}\n{exc.hint or ''}"
    if not any(a in shown for a in args):
        return exc
    clean = type(exc).__new__(type(exc))
    HangarError.__init__(
        clean,
        f"the command ({cmd[0][:PROGRAM_CHARS]} with {len(cmd) - 1} argument(s)) "
        f"failed in machine {machine_id}",
    )
    return clean


def run_in_machine(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    machine_id: str,
    cmd: list[str],
    *,
    timeout: float,
) -> ExecResult:
    """Run ``cmd`` in the machine: here through this host's runtime, or through its host's agent.

    The command is audited before it runs: one that never returns is still on
    record. Errors raised from here never carry the command's arguments.
    """
    machine, host = find_machine(cp, app, machine_id)
    with change(cp, ctx, org_id=app.org_id, action="machine.exec", wake=False) as (_, event):
        event.target, event.detail = machine.id, exec_detail(cmd)
    try:
        with EXEC_SLOTS.hold(app.org_id):
            if cp.local is not None and cp.local.host_id == host.id:
                return cp.local.exec(machine.id, cmd, timeout=timeout)
            # Another host's machine: its agent picks the command up on its next poll.
            return cp.execs.run(host.id, machine.id, cmd, timeout)
    except HangarError as exc:
        clean = _scrubbed(exc, cmd, machine.id)
        if clean is exc:
            raise
        # Not chained: a traceback of the original would show the arguments.
        raise clean from None

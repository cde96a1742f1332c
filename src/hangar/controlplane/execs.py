"""Commands run in a machine on a person's behalf (``hangar machines exec``), audited."""

from __future__ import annotations

from hangar.audit.log import AuditContext
from hangar.contract.execs import ExecResult
from hangar.controlplane.changes import change
from hangar.controlplane.machine_control import find_machine
from hangar.controlplane.orgslots import OrgSlots
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import App

__all__ = ["EXEC_SLOTS", "run_in_machine"]

# Commands running at once per organization, on every host together.
EXEC_SLOTS = OrgSlots(4, "commands")


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

    The command is audited before it runs: one that never returns is still on record.
    """
    machine, host = find_machine(cp, app, machine_id)
    with change(cp, ctx, org_id=app.org_id, action="machine.exec", wake=False) as (_, event):
        event.target, event.detail = machine.id, {"cmd": cmd}
    with EXEC_SLOTS.hold(app.org_id):
        if cp.local is not None and cp.local.host_id == host.id:
            return cp.local.exec(machine.id, cmd, timeout=timeout)
        # Another host's machine: its agent picks the command up on its next poll.
        return cp.execs.run(host.id, machine.id, cmd, timeout)

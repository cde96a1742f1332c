"""Commands run in an app's machines, audited."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane.execs import run_in_machine

router = GuardedRouter(prefix="/v1/apps/{app}", tags=["machines"])

# What the answer carries of each stream.
SHOWN = 1 << 20


class ExecIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: list[str] = Field(min_length=1, max_length=256)
    timeout: float = Field(default=30, gt=0, le=300)


class ExecOut(BaseModel):
    exit_code: int
    stdout: str
    stderr: str


@router.post(
    "/machines/{machine_id}/exec",
    response_model=ExecOut,
    summary="Run a command in a running machine (audited; it can read the machine's secrets)",
)
def exec_machine(
    app: str,
    machine_id: str,
    body: ExecIn,
    access: Annotated[Access, requires(Permission.MACHINES_EXEC, step_up=True)],
) -> ExecOut:
    assert access.app is not None
    result = run_in_machine(
        access.cp, access.ctx, access.app, machine_id, body.cmd, timeout=body.timeout
    )
    return ExecOut(
        exit_code=result.exit_code,
        stdout=result.stdout[:SHOWN].decode(errors="replace"),
        stderr=result.stderr[:SHOWN].decode(errors="replace"),
    )

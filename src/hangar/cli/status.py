"""``hangar status``: an app's current release and its machines."""

from __future__ import annotations

import typer

from hangar.cli.common import AppOpt, JsonOpt, app_name, client
from hangar.cli.machines import MACHINE_COLUMNS
from hangar.cli.output import emit, table


def status(ctx: typer.Context, app: AppOpt = None, json_out: JsonOpt = False) -> None:
    """An app's current release and its machines, states and health."""
    name = app_name(app)
    api = client(ctx)
    latest = api.get(f"/v1/apps/{name}/releases", limit=1)
    machines = api.get(f"/v1/apps/{name}/machines")
    if json_out:
        emit({"app": name, "release": latest[0] if latest else None, "machines": machines})
        return
    if latest:
        r = latest[0]
        phase = r.get("phase") or r["status"]
        typer.echo(
            f"{name}: release v{r['version']} {r['status']} ({r['strategy']})"
            + (f": {phase}" if r["status"] in ("pending", "running") else "")
            + (f" ({r['reason']})" if r["reason"] else "")
        )
    else:
        typer.echo(f"{name}: never deployed")
    table(machines, MACHINE_COLUMNS)

"""``hangar machines``: an app's machines."""

from __future__ import annotations

from typing import Annotated

import typer

from hangar.cli.common import JsonOpt, YesOpt, client
from hangar.cli.deploy import MACHINE_COLUMNS, AppOpt, app_name
from hangar.cli.output import confirm, emit, table

app = typer.Typer(name="machines", help="An app's machines.", no_args_is_help=True)
MachineId = Annotated[str, typer.Argument(help="machine id")]


@app.command("list")
def list_(ctx: typer.Context, app_: AppOpt = None, json_out: JsonOpt = False) -> None:
    """Machines of an app."""
    items = client(ctx).get(f"/v1/apps/{app_name(app_)}/machines")
    emit(items) if json_out else table(items, MACHINE_COLUMNS)


@app.command()
def create(
    ctx: typer.Context,
    app_: AppOpt = None,
    region: Annotated[str | None, typer.Option(help="region to place it in")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a machine running the app's current release."""
    params = f"?region={region}" if region else ""
    data = client(ctx).request("POST", f"/v1/apps/{app_name(app_)}/machines{params}")
    emit(data) if json_out else typer.echo(f"Created machine {data['id']} ({data['address']}).")


@app.command()
def show(
    ctx: typer.Context, machine_id: MachineId, app_: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """One machine."""
    data = client(ctx).get(f"/v1/apps/{app_name(app_)}/machines/{machine_id}")
    if json_out:
        emit(data)
    else:
        for key in (
            "id",
            "state",
            "desired",
            "version",
            "running_version",
            "healthy",
            "exit_code",
            "address",
            "host",
            "region",
            "detail",
            "updated_at",
        ):
            typer.echo(f"{key:<16}{data.get(key)}")


def _verb(ctx: typer.Context, verb: str, machine_id: str, app_: str | None) -> None:
    data = client(ctx).request("POST", f"/v1/apps/{app_name(app_)}/machines/{machine_id}/{verb}")
    typer.echo(f"{data['id']}: {verb} requested (now {data['state']}).")


@app.command()
def stop(ctx: typer.Context, machine_id: MachineId, app_: AppOpt = None) -> None:
    """Stop a machine (with the app's kill_signal, then SIGKILL after kill_timeout)."""
    _verb(ctx, "stop", machine_id, app_)


@app.command()
def start(ctx: typer.Context, machine_id: MachineId, app_: AppOpt = None) -> None:
    """Start a stopped machine."""
    _verb(ctx, "start", machine_id, app_)


@app.command()
def destroy(
    ctx: typer.Context, machine_id: MachineId, app_: AppOpt = None, yes: YesOpt = False
) -> None:
    """Destroy a machine. Asks first; --yes to skip."""
    confirm(f"Destroy machine {machine_id}?", yes)
    client(ctx).request("DELETE", f"/v1/apps/{app_name(app_)}/machines/{machine_id}")
    typer.echo(f"{machine_id}: destroy requested.")

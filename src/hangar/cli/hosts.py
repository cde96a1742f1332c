"""``hangar hosts``: the hosts machines run on (installation operators)."""

from __future__ import annotations

from typing import Annotated

import typer

from hangar.cli.common import JsonOpt, client
from hangar.cli.output import emit, table

app = typer.Typer(name="hosts", help="Hosts (installation operators).", no_args_is_help=True)
HostArg = Annotated[str, typer.Argument(help="host name")]
COLUMNS = [
    ("name", "NAME"),
    ("region", "REGION"),
    ("state", "STATE"),
    ("machines", "MACHINES"),
    ("last_seen", "LAST SEEN"),
]


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Hosts, their state and how many machines they run."""
    items = client(ctx).get("/v1/hosts")
    emit(items) if json_out else table(items, COLUMNS)


@app.command()
def show(ctx: typer.Context, host: HostArg, json_out: JsonOpt = False) -> None:
    """One host."""
    data = client(ctx).get(f"/v1/hosts/{host}")
    if json_out:
        emit(data)
    else:
        for key in ("name", "id", "region", "state", "machines", "created_at", "last_seen"):
            typer.echo(f"{key:<11}{data.get(key)}")


@app.command()
def cordon(ctx: typer.Context, host: HostArg) -> None:
    """Place no new machines on a host; the ones it runs stay."""
    data = client(ctx).request("POST", f"/v1/hosts/{host}/cordon")
    typer.echo(f"{data['name']} is cordoned ({data['machines']} machines stay).")


@app.command()
def uncordon(ctx: typer.Context, host: HostArg) -> None:
    """Let a cordoned host take new machines again."""
    data = client(ctx).request("POST", f"/v1/hosts/{host}/uncordon")
    typer.echo(f"{data['name']} takes machines again.")

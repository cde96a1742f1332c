"""``hangar apps``: create, list, show and destroy apps."""

from __future__ import annotations

from typing import Annotated

import typer

from hangar.cli.common import JsonOpt, OrgOpt, YesOpt, client
from hangar.cli.output import confirm, emit, table

app = typer.Typer(name="apps", help="Apps: what you deploy.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="app name (a DNS label, unique per installation)")]
COLUMNS = [
    ("name", "NAME"),
    ("org", "ORG"),
    ("network", "NETWORK"),
    ("id", "ID"),
    ("created_at", "CREATED"),
]


@app.command()
def create(
    ctx: typer.Context,
    name: Name,
    org: OrgOpt = None,
    network: Annotated[
        str,
        typer.Option(
            help="the organization's private network to join; machines reach only their own"
        ),
    ] = "default",
    json_out: JsonOpt = False,
) -> None:
    """Create an app in an organization (the only one you belong to, or --org)."""
    body = {"name": name, "org": org, "network": network}
    data = client(ctx).request("POST", "/v1/apps", json=body)
    emit(data) if json_out else typer.echo(f"Created app {data['name']} in {data['org']}.")


@app.command("list")
def list_(ctx: typer.Context, org: OrgOpt = None, json_out: JsonOpt = False) -> None:
    """Apps you can see."""
    items = client(ctx).paged("/v1/apps", org=org, limit=200)
    emit(items) if json_out else table(items, COLUMNS)


@app.command()
def show(ctx: typer.Context, name: Name, json_out: JsonOpt = False) -> None:
    """One app."""
    data = client(ctx).get(f"/v1/apps/{name}")
    if json_out:
        emit(data)
    else:
        for key, header in COLUMNS:
            typer.echo(f"{header:<9}{data.get(key)}")


@app.command()
def destroy(ctx: typer.Context, name: Name, yes: YesOpt = False) -> None:
    """Destroy an app: its machines, releases, secrets and volumes.

    Asks first; --yes to skip (required without a terminal).

    Its volumes' keys are deleted with it: their data is unreadable for good.
    """
    confirm(
        f"Destroy app {name}, with its secrets and volumes? Their data cannot be recovered.", yes
    )
    client(ctx).request("DELETE", f"/v1/apps/{name}")
    typer.echo(f"Destroyed app {name}.")

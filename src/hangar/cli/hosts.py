"""``hangar hosts``: the hosts machines run on (installation operators)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer

from hangar.cli.common import JsonOpt, YesOpt, client, duration
from hangar.cli.output import confirm, emit, fields, table

app = typer.Typer(name="hosts", help="Hosts (installation operators).", no_args_is_help=True)
HostArg = Annotated[str, typer.Argument(help="host name")]
COLUMNS = [
    ("name", "NAME"),
    ("region", "REGION"),
    ("state", "STATE"),
    ("machines", "MACHINES"),
    ("memory_mb", "MEMORY MB"),
    ("mesh_endpoint", "MESH ENDPOINT"),
    ("mesh_public_key", "MESH KEY"),
    ("handshake", "HANDSHAKE"),
    ("last_seen", "LAST SEEN"),
]


def _ages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest mesh handshake as an age a person reads at a glance."""
    now = dt.datetime.now(dt.UTC)
    for item in items:
        when = item.get("mesh_handshake_at")
        if when:
            seconds = (now - dt.datetime.fromisoformat(when)).total_seconds()
            item["handshake"] = f"{max(0, int(seconds))}s ago"
    return items


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Hosts, their state and how many machines they run."""
    items = client(ctx).get("/v1/hosts")
    emit(items) if json_out else table(_ages(items), COLUMNS)


@app.command()
def show(ctx: typer.Context, host: HostArg, json_out: JsonOpt = False) -> None:
    """One host."""
    fields(
        client(ctx).get(f"/v1/hosts/{host}"),
        (
            "name",
            "id",
            "region",
            "state",
            "machines",
            "memory_mb",
            "volume_backend",
            "volume_grows_online",
            "created_at",
            "last_seen",
        ),
        json_out,
        width=19,
    )


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


@app.command("join-token")
def join_token(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="the name the new host must take")] = None,
    region: Annotated[str, typer.Option(help="the new host's region")] = "local",
    expires: Annotated[
        float,
        typer.Option(
            parser=duration, show_default="15m", help="how long the token lasts (30s to 24h)"
        ),
    ] = 900.0,
    edge: Annotated[
        bool, typer.Option("--edge", help="the host may run an edge (it is given TLS keys)")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """A one-time token for a new host: `hangar agent run --api URL --join TOKEN`."""
    seconds = int(expires)
    data = client(ctx).request(
        "POST",
        "/v1/hosts/join-tokens",
        json={"name": name, "region": region, "expires_in": seconds, "edge": edge},
    )
    if json_out:
        emit(data)
        return
    typer.echo(f"Join token (shown once; one host; expires {data['expires_at']}):\n")
    typer.echo(f"  {data['token']}\n")
    typer.echo("On the new host, as root:")
    api = client(ctx).settings.api_url
    typer.echo(f"  hangar agent run --api {api} --join <token>" + (" --edge" if edge else ""))


@app.command()
def remove(ctx: typer.Context, host: HostArg, yes: YesOpt = False) -> None:
    """Remove a host with no machines or volumes left.

    Its certificate stops working at once."""
    confirm(f"Remove host {host}?", yes)
    client(ctx).request("DELETE", f"/v1/hosts/{host}")
    typer.echo(f"Host {host} is removed.")

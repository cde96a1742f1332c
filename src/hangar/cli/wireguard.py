"""``hangar wireguard``: a person's device (a laptop) as a peer of an organization's network."""

from __future__ import annotations

from typing import Annotated

import typer

from hangar.cli.common import JsonOpt, OrgOpt, YesOpt, client
from hangar.cli.output import confirm, emit, listing
from hangar.errors import ValidationError

app = typer.Typer(
    name="wireguard",
    help="Devices on an organization's private network over WireGuard: create, list, remove.",
    no_args_is_help=True,
)


def _org(ctx: typer.Context, org: str | None) -> str:
    """--org, or the only organization the caller belongs to."""
    if org:
        return org
    names = [o["name"] for o in client(ctx).paged("/v1/orgs", limit=200)]
    if len(names) != 1:
        raise ValidationError(
            "you belong to several organizations: say which one", hint="--org NAME"
        )
    return str(names[0])


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="the device's name")] = "laptop",
    network: Annotated[str, typer.Option(help="the organization's network to join")] = "default",
    org: OrgOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Make a peer and print its WireGuard file: `hangar wireguard create > laptop.conf`.

    The file holds the device's private key, shown this once and stored
    nowhere. Bring the tunnel up with `wg-quick up ./laptop.conf`; the
    device then reaches the network's machines, by `<app>.internal` names too.
    """
    data = client(ctx).request(
        "POST", f"/v1/orgs/{_org(ctx, org)}/wireguard", json={"name": name, "network": network}
    )
    if json_out:
        emit(data)
        return
    typer.echo(data["config"], nl=False)
    typer.echo(
        f"Peer {data['name']} is {data['address']} on network {data['network']}; the private"
        " key above is shown once.",
        err=True,
    )


@app.command("list")
def list_(ctx: typer.Context, org: OrgOpt = None, json_out: JsonOpt = False) -> None:
    """The organization's devices: name, address, network, gateway host."""
    columns = [
        ("name", "NAME"),
        ("address", "ADDRESS"),
        ("network", "NETWORK"),
        ("gateway", "GATEWAY"),
        ("created_at", "CREATED"),
    ]
    listing(client(ctx).get(f"/v1/orgs/{_org(ctx, org)}/wireguard"), columns, json_out)


@app.command()
def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the device's name")],
    org: OrgOpt = None,
    yes: YesOpt = False,
) -> None:
    """Revoke a device: its key stops working on the next round of the gateway's agent."""
    confirm(f"Remove peer {name}? The device loses its access.", yes)
    client(ctx).request("DELETE", f"/v1/orgs/{_org(ctx, org)}/wireguard/{name}")
    typer.echo(f"Removed peer {name}.")

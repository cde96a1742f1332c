"""``hangar volumes``: an app's encrypted persistent volumes."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hangar.cli import snapshots
from hangar.cli.common import AppOpt, JsonOpt, YesOpt, app_name, client
from hangar.cli.output import confirm, emit, listing

app = typer.Typer(
    name="volumes",
    help="Encrypted persistent volumes: create, list, show, extend, destroy. Each machine"
    " whose hangar.toml mounts NAME (a mounts table with source = NAME) holds a volume NAME"
    " of its own, and runs on that volume's host.",
    no_args_is_help=True,
)
NameArg = Annotated[
    str, typer.Argument(help="the volume's name (as \\[\\[mounts]] source names it)")
]
RefArg = Annotated[str, typer.Argument(help="a volume id (vol_…), or a name only one volume has")]
SizeOpt = Annotated[
    str, typer.Option("--size", help="1gb, 10gb, 512mb (a number alone is GB); 64mb to 500gb")
]

COLUMNS = [
    ("id", "ID"),
    ("name", "NAME"),
    ("size", "SIZE"),
    ("host", "HOST"),
    ("encryption", "ENCRYPTION"),
    ("machine", "MACHINE"),
    ("state", "STATE"),
]


def _show(data: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit(data)
        return
    rows = [
        ("ID", data["id"]),
        ("Name", data["name"]),
        ("App", data["app"]),
        ("Size", data["size"]),
        ("Host", data["host"]),
        ("Encryption", data["encryption"]),
        ("State", data["state"]),
        ("Machine", data["machine"] or "- (free)"),
        ("Created", data["created_at"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key.ljust(width)}  {value}")


@app.command()
def create(
    ctx: typer.Context,
    name: NameArg,
    app_: AppOpt = None,
    size: SizeOpt = "1gb",
    host: Annotated[
        str | None, typer.Option("--host", help="the host to make it on (default: chosen)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an empty volume NAME, encrypted with its own key, on one host.

    The host encrypts it with LUKS2 or gocryptfs (`hangar hosts show`). Each
    machine that mounts NAME holds one volume of that name: create as many
    as the app runs machines.
    """
    body: dict[str, Any] = {"name": name, "size": size}
    if host is not None:
        body["host"] = host
    data = client(ctx).request("POST", f"/v1/apps/{app_name(app_)}/volumes", json=body)
    if json_out:
        emit(data)
        return
    typer.echo(
        f"Created volume {data['name']} ({data['id']}, {data['size']}, {data['encryption']})"
        f" on {data['host']}."
    )
    typer.echo(
        f'Mount it with [[mounts]] source = "{data["name"]}" destination = "/data" in hangar.toml.'
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    app_: AppOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="destroyed volumes too")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The app's volumes: size, host, encryption, the machine holding each."""
    items = client(ctx).get(f"/v1/apps/{app_name(app_)}/volumes", all="true" if all_ else None)
    listing(items, COLUMNS, json_out)


@app.command()
def show(
    ctx: typer.Context, volume: RefArg, app_: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """One volume: its size, host, encryption, state and the machine holding it."""
    _show(client(ctx).get(f"/v1/apps/{app_name(app_)}/volumes/{volume}"), json_out)


@app.command()
def extend(
    ctx: typer.Context,
    volume: RefArg,
    size: SizeOpt,
    app_: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Grow a volume to SIZE (a volume never shrinks).

    Its host grows it while in use where it can; otherwise it grows at the
    next start of the machine holding it, and this says so.
    """
    data = client(ctx).request(
        "POST", f"/v1/apps/{app_name(app_)}/volumes/{volume}/extend", json={"size": size}
    )
    if json_out:
        emit(data)
        return
    typer.echo(f"Volume {data['id']} is now {data['size']}.")
    if not data["online"]:
        typer.echo(
            f"Its host cannot grow it while in use: it grows when machine {data['machine']}"
            f" next starts (`hangar machines restart {data['machine']} --app {data['app']}`)."
        )


@app.command()
def destroy(
    ctx: typer.Context,
    volume: RefArg,
    app_: AppOpt = None,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Destroy a volume: its key is deleted at once, so its data is unreadable for good.

    A volume held by a machine is refused: destroy the machine first.
    """
    name = app_name(app_)
    confirm(f"Destroy volume {volume} of {name}? Its data cannot be recovered.", yes)
    data = client(ctx).request("DELETE", f"/v1/apps/{name}/volumes/{volume}")
    if json_out:
        emit(data)
        return
    typer.echo(f"Destroyed volume {data['id']}: its key is gone; its host deletes its files.")


app.add_typer(snapshots.app)
app.command()(snapshots.fork)
app.command()(snapshots.export)

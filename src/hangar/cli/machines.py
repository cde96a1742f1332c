"""``hangar machines``: an app's machines."""

from __future__ import annotations

from typing import Annotated

import typer

from hangar.cli.client import Client
from hangar.cli.common import AppOpt, JsonOpt, YesOpt, app_name, client, duration
from hangar.cli.images import server_image
from hangar.cli.output import confirm, emit, fields, table

app = typer.Typer(name="machines", help="An app's machines.", no_args_is_help=True)
MachineId = Annotated[str, typer.Argument(help="machine id")]
# A machine id names its app: --app only narrows the lookup to that app.
MachineAppOpt = Annotated[
    str | None, typer.Option("--app", "-a", help="the machine's app (default: found by its id)")
]
MACHINE_COLUMNS = [
    ("id", "ID"),
    ("state", "STATE"),
    ("running_version", "VERSION"),
    ("healthy", "HEALTHY"),
    ("address", "ADDRESS"),
    ("host", "HOST"),
    ("updated_at", "UPDATED"),
]


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
    ctx: typer.Context, machine_id: MachineId, app_: MachineAppOpt = None, json_out: JsonOpt = False
) -> None:
    """One machine."""
    api = client(ctx)
    fields(
        api.get(machine_path(api, app_, machine_id)),
        (
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
        ),
        json_out,
        width=16,
    )


def machine_app(api: Client, app_: str | None, machine_id: str) -> str:
    """The machine's app: --app, or looked up by the machine's (unique) id."""
    return app_ if app_ is not None else str(api.get(f"/v1/machines/{machine_id}")["app"])


def machine_path(api: Client, app_: str | None, machine_id: str) -> str:
    """The machine's API path; without --app, its app is looked up by the (unique) id."""
    return f"/v1/apps/{machine_app(api, app_, machine_id)}/machines/{machine_id}"


def _verb(
    ctx: typer.Context,
    verb: str,
    machine_id: str,
    app_: str | None,
    body: dict[str, object] | None = None,
) -> None:
    api = client(ctx)
    data = api.request("POST", f"{machine_path(api, app_, machine_id)}/{verb}", json=body)
    typer.echo(f"{data['id']}: {verb} requested (now {data['state']}).")


@app.command()
def stop(
    ctx: typer.Context,
    machine_id: MachineId,
    app_: MachineAppOpt = None,
    signal: Annotated[
        str | None,
        typer.Option(
            "--signal", "-s", help="signal to send first (default: the app's kill_signal)"
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            parser=duration, help="time before SIGKILL, e.g. 10s (default: the app's kill_timeout)"
        ),
    ] = None,
) -> None:
    """Stop a machine: the signal, then SIGKILL after the timeout."""
    _verb(ctx, "stop", machine_id, app_, {"signal": signal, "timeout": timeout})


@app.command()
def start(ctx: typer.Context, machine_id: MachineId, app_: MachineAppOpt = None) -> None:
    """Start a stopped machine."""
    _verb(ctx, "start", machine_id, app_)


@app.command()
def restart(ctx: typer.Context, machine_id: MachineId, app_: MachineAppOpt = None) -> None:
    """Restart a machine in place."""
    _verb(ctx, "restart", machine_id, app_)


@app.command()
def wait(
    ctx: typer.Context,
    machine_id: MachineId,
    app_: MachineAppOpt = None,
    state: Annotated[str, typer.Option(help="started, stopped, failed or destroyed")] = "started",
    timeout: Annotated[
        float, typer.Option(parser=duration, show_default="30s", help="how long (at most 60s)")
    ] = 30.0,
) -> None:
    """Wait until a machine reaches a state; exit 1 if it does not in time."""
    seconds = timeout
    api = client(ctx)
    data = api.request(
        "GET",
        f"{machine_path(api, app_, machine_id)}/wait",
        params={"state": state, "timeout": seconds},
        timeout=seconds + 15,  # the server answers by then, in time or with a timeout
    )
    typer.echo(f"{data['id']} is {data['state']}.")


@app.command("exec")
def exec_(
    ctx: typer.Context,
    machine_id: MachineId,
    command: Annotated[list[str], typer.Argument(help="the command, after --")],
    app_: MachineAppOpt = None,
    timeout: Annotated[
        float, typer.Option(parser=duration, show_default="30s", help="how long")
    ] = 30.0,
) -> None:
    """Run a command in a running machine (audited); exits with its exit code.

    Needs machines:exec (admins, unless the organization chose otherwise:
    `hangar orgs show ORG`). A command in a machine can read every secret
    the machine was given. The audit trail keeps the program, the number of
    arguments and a SHA-256 of the arguments, not the arguments.
    """
    api = client(ctx)
    result = api.request(
        "POST",
        f"{machine_path(api, app_, machine_id)}/exec",
        json={"cmd": command, "timeout": timeout},
    )
    typer.echo(result["stdout"], nl=False)
    typer.echo(result["stderr"], nl=False, err=True)
    raise typer.Exit(result["exit_code"])


@app.command()
def events(
    ctx: typer.Context, machine_id: MachineId, app_: MachineAppOpt = None, json_out: JsonOpt = False
) -> None:
    """What happened to a machine, newest first."""
    api = client(ctx)
    items = api.get(f"{machine_path(api, app_, machine_id)}/events")
    emit(items) if json_out else table(
        items, [("time", "TIME"), ("kind", "EVENT"), ("detail", "DETAIL")]
    )


@app.command()
def destroy(
    ctx: typer.Context,
    machine_id: MachineId,
    app_: MachineAppOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="destroy it even if it is running")
    ] = False,
    yes: YesOpt = False,
) -> None:
    """Destroy a machine (a running one only with --force). Asks first; --yes to skip."""
    confirm(f"Destroy machine {machine_id}?", yes)
    api = client(ctx)
    api.request(
        "DELETE",
        machine_path(api, app_, machine_id),
        params={"force": "true"} if force else None,
    )
    typer.echo(f"{machine_id}: destroy requested.")


@app.command()
def run(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="PATH or oci:PATH:TAG")],
    command: Annotated[list[str] | None, typer.Argument(help="the command, after --")] = None,
    app_: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a one-off machine (never restarted) from an image, optionally with a command."""
    api, name = client(ctx), app_name(app_)
    body = {"image": server_image(api, name, image, quiet=json_out), "cmd": command or None}
    data = api.request("POST", f"/v1/apps/{name}/machines", json=body)
    emit(data) if json_out else typer.echo(
        f"Started one-off machine {data['id']}; `hangar logs -m {data['id']}` shows its output."
    )


@app.command()
def update(
    ctx: typer.Context,
    machine_id: MachineId,
    command: Annotated[list[str] | None, typer.Argument(help="a new command, after --")] = None,
    version: Annotated[int | None, typer.Option(help="run this release instead")] = None,
    image: Annotated[str | None, typer.Option(help="a new image (one-off machines only)")] = None,
    signal: Annotated[str | None, typer.Option(help="stop signal, e.g. SIGTERM")] = None,
    timeout: Annotated[
        float | None, typer.Option(parser=duration, help="stop timeout, e.g. 10s")
    ] = None,
    app_: MachineAppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Change a machine's configuration. A new release, image or command replaces it."""
    api = client(ctx)
    name = machine_app(api, app_, machine_id)
    body: dict[str, object] = {}
    if command:
        body["cmd"] = command
    if version is not None:
        body["version"] = version
    if image is not None:
        body["image"] = server_image(api, name, image, quiet=json_out)
    if signal is not None:
        body["stop_signal"] = (
            signal.upper() if signal.upper().startswith("SIG") else f"SIG{signal.upper()}"
        )
    if timeout is not None:
        body["stop_timeout"] = timeout
    data = api.request("PATCH", f"/v1/apps/{name}/machines/{machine_id}", json=body)
    emit(data) if json_out else typer.echo(f"{machine_id}: updated.")

"""``hangar volumes snapshots`` and ``hangar volumes fork``: a volume's snapshots."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from hangar.cli.common import AppOpt, JsonOpt, YesOpt, app_name, client
from hangar.cli.output import confirm, emit, listing
from hangar.errors import ValidationError

app = typer.Typer(
    name="snapshots",
    help="A volume's snapshots: list, create, restore, schedule. Taken daily and kept 5 days"
    " (schedule changes it); each is a consistent copy of the volume's ciphertext on its host.",
    no_args_is_help=True,
)
RefArg = Annotated[str, typer.Argument(help="a volume id (vol_…), or a name only one volume has")]
COLUMNS = [
    ("id", "ID"),
    ("created_at", "TAKEN"),
    ("reason", "WHY"),
    ("consistent", "HOW"),
    ("bytes", "BYTES"),
    ("backup_id", "BACKUP"),
]


def _path(app_: str | None, volume: str, rest: str = "") -> str:
    return f"/v1/apps/{app_name(app_)}/volumes/{volume}{rest}"


@app.command("list")
def list_(
    ctx: typer.Context, volume: RefArg, app_: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """The volume's snapshots, newest first (BACKUP: its restic id, once backed up)."""
    listing(client(ctx).get(_path(app_, volume, "/snapshots")), COLUMNS, json_out)


@app.command()
def create(
    ctx: typer.Context, volume: RefArg, app_: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """Take a snapshot now, while machines keep running.

    The volume's host syncs it, freezes the file system that holds its
    ciphertext (fsfreeze) for the length of a sparse copy, and thaws it: a
    machine writing meanwhile waits, and the snapshot is what a power cut
    would leave. Snapshots stay ciphertext.
    """
    if not json_out:
        typer.echo(f"Taking a snapshot of {volume} on its host…", err=True)
    data = client(ctx).request("POST", _path(app_, volume, "/snapshots"))
    if json_out:
        emit(data)
        return
    typer.echo(f"Snapshot {data['id']} of {volume}: {data['bytes']} bytes ({data['consistent']}).")


@app.command()
def restore(
    ctx: typer.Context,
    volume: RefArg,
    snapshot: Annotated[str, typer.Argument(help="the snapshot's id (snap_…)")],
    app_: AppOpt = None,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Put the volume back as it was at a snapshot; what was written since is lost.

    No machine may hold the volume: stop it first. Organization admins only.
    To keep today's data too, `hangar volumes fork` the snapshot instead.
    """
    confirm(f"Restore {volume} to {snapshot}? Everything written since is lost.", yes)
    data = client(ctx).request("POST", _path(app_, volume, f"/snapshots/{snapshot}/restore"))
    if json_out:
        emit(data)
        return
    typer.echo(f"Restored {volume} to snapshot {snapshot} of {data['created_at']}.")


@app.command()
def schedule(
    ctx: typer.Context,
    volume: RefArg,
    keep_days: Annotated[
        int | None,
        typer.Option("--keep-days", min=1, max=60, help="keep each scheduled snapshot 1-60 days"),
    ] = None,
    on: Annotated[
        bool | None, typer.Option("--on/--off", help="take a snapshot daily (default on)")
    ] = None,
    app_: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show or change the volume's daily snapshots: on or off, and how long each is kept.

    Without options, shows the schedule. The newest snapshot is always kept.
    """
    path = _path(app_, volume, "/snapshot-schedule")
    body = {k: v for k, v in (("scheduled", on), ("keep_days", keep_days)) if v is not None}
    data = client(ctx).request("PUT", path, json=body) if body else client(ctx).get(path)
    if json_out:
        emit(data)
        return
    if data["scheduled"]:
        typer.echo(f"{volume}: a snapshot daily, each kept {data['keep_days']} days.")
    else:
        typer.echo(f"{volume}: no scheduled snapshots (take them with `snapshots create`).")


def fork(
    ctx: typer.Context,
    volume: RefArg,
    snapshot: Annotated[str, typer.Option("--snapshot", help="the snapshot (snap_…)")],
    name: Annotated[str, typer.Option("--name", help="the new volume's name")],
    app_: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A new volume of the app from a snapshot, on the same host, with the same data.

    For a new volume on another host, restore a backup there: `hangar backups
    restore BACKUP --volume VOLUME --name NAME --host HOST`.
    """
    data = client(ctx).request(
        "POST", _path(app_, volume, "/fork"), json={"snapshot": snapshot, "name": name}
    )
    if json_out:
        emit(data)
        return
    typer.echo(f"Forked {volume} at {snapshot} as volume {data['volume']} ({name}).")


def export(
    ctx: typer.Context,
    volume: RefArg,
    snapshot: Annotated[str, typer.Argument(help="the snapshot (snap_…)")],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="the tar file to write (- for standard output)"),
    ],
    app_: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Take a snapshot's files off the platform, decrypted, as a tar.

    The volume's host mounts the snapshot read-only with the volume's key and
    streams a tar of its files, relayed to you as it is made; nothing of it is
    stored on the control plane. Organization admins only; each export (and
    the key's delivery for it) is an audit event. Keep the tar as you keep
    the data: it is plaintext.
    """
    if str(output) != "-" and output.exists():
        raise ValidationError(f"{output} exists", hint="name a new file; nothing is overwritten")
    chunks = client(ctx).stream_bytes(_path(app_, volume, f"/snapshots/{snapshot}/export"))
    written = 0
    if str(output) == "-":
        sink = sys.stdout.buffer
        for chunk in chunks:
            sink.write(chunk)
            written += len(chunk)
        sink.flush()
    else:
        partial = output.with_name(output.name + ".partial")
        try:
            with partial.open("xb") as f:
                os.fchmod(f.fileno(), 0o600)
                for chunk in chunks:
                    f.write(chunk)
                    written += len(chunk)
                    if not json_out:
                        typer.echo(f"\r  {written >> 20} MiB", nl=False, err=True)
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
        if not json_out:
            typer.echo("", err=True)
    if json_out:
        emit({"snapshot": snapshot, "bytes": written, "output": str(output)})
    elif str(output) != "-":
        typer.echo(f"Exported {snapshot} of {volume} to {output} ({written} bytes).")

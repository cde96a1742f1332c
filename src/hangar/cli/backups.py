"""``hangar backups``: the organization's restic repository and what is in it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hangar.cli.common import AppOpt, JsonOpt, OrgOpt, app_name, client
from hangar.cli.logsinks import _read_secret
from hangar.cli.output import emit, fields, listing
from hangar.cli.wireguard import _org
from hangar.errors import HangarError, ValidationError

app = typer.Typer(
    name="backups",
    help="Off-site backups of volumes with restic: the repository; list, run, restore, drill,"
    " check.",
    no_args_is_help=True,
)
repo_app = typer.Typer(
    name="repo",
    help="Where the organization's backups go: set, show.",
    no_args_is_help=True,
)
app.add_typer(repo_app)


def _path(ctx: typer.Context, org: str | None, rest: str = "") -> str:
    return f"/v1/orgs/{_org(ctx, org)}/backups{rest}"


@repo_app.command("set")
def repo_set(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Argument(
            help="rest:https://host/path (a restic REST server), s3:https://host/bucket[/prefix],"
            " or a NAME under the server's backup_local_root"
        ),
    ],
    user: Annotated[
        str | None,
        typer.Option("--user", help="rest: HTTP basic auth as this user; password from stdin"),
    ] = None,
    s3: Annotated[
        bool,
        typer.Option(
            "--s3", help="s3: read the access key id, then the secret key, from stdin (or ask)"
        ),
    ] = False,
    region: Annotated[str, typer.Option("--region", help="s3: the bucket's region")] = "",
    keep_daily: Annotated[
        int | None, typer.Option("--keep-daily", min=0, max=366, help="daily backups kept")
    ] = None,
    keep_weekly: Annotated[
        int | None, typer.Option("--keep-weekly", min=0, max=520, help="weekly backups kept")
    ] = None,
    keep_monthly: Annotated[
        int | None, typer.Option("--keep-monthly", min=0, max=120, help="monthly backups kept")
    ] = None,
    every: Annotated[
        int | None,
        typer.Option("--every-hours", min=1, max=168, help="back up this often (default 24)"),
    ] = None,
    org: OrgOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Point the organization's backups at a restic repository (created if empty).

    Hangar generates the repository's restic password and keeps it, like the
    backend's credential, only encrypted by the server's key-encryption key:
    nobody is shown either. Credentials are read from stdin (or asked for),
    never from the command line: `hangar backups repo set
    s3:https://s3.example/clinic-backups --s3 < keys.txt` (two lines: key id,
    secret). Retention (`--keep-daily 7 --keep-weekly 4 --keep-monthly 6` by
    default) is applied with `restic forget --prune` after each backup.
    Organization admins only.
    """
    if user is not None and s3:
        raise ValidationError("give --user (REST) or --s3 (S3), not both")
    if region and not s3:
        raise ValidationError("--region is for --s3 repositories")
    body: dict[str, Any] = {"url": url}
    if user is not None:
        body["credential"] = {"kind": "basic", "user": user, "secret": _read_secret("Password")}
    elif s3:
        key_id = _read_secret("Access key id")
        body["credential"] = {
            "kind": "s3",
            "user": key_id,
            "secret": _read_secret("Secret access key"),
            "region": region,
        }
    keeps = (keep_daily, keep_weekly, keep_monthly)
    if any(k is not None for k in keeps):
        if any(k is None for k in keeps):
            raise ValidationError(
                "give --keep-daily, --keep-weekly and --keep-monthly together",
                hint="0 keeps none of that kind",
            )
        body["retention"] = {"daily": keep_daily, "weekly": keep_weekly, "monthly": keep_monthly}
    if every is not None:
        body["every_hours"] = every
    data = client(ctx).request("PUT", _path(ctx, org, "/repo"), json=body)
    if json_out:
        emit(data)
        return
    typer.echo(f"Backups go to {data['location']} ({data['kind']}).")


@repo_app.command("show")
def repo_show(ctx: typer.Context, org: OrgOpt = None, json_out: JsonOpt = False) -> None:
    """The repository, its retention and schedule, and how the last backup went."""
    data = client(ctx).get(_path(ctx, org, "/repo"))
    keep = data["retention"]
    data["keep"] = f"{keep['daily']} daily, {keep['weekly']} weekly, {keep['monthly']} monthly"
    keys = [
        "location",
        "kind",
        "auth",
        "keep",
        "every_hours",
        "last_run_at",
        "last_success_at",
        "last_outcome",
        "updated_at",
    ]
    fields(data, keys, json_out, width=16)


@app.command("list")
def list_(ctx: typer.Context, org: OrgOpt = None, json_out: JsonOpt = False) -> None:
    """The backups in the organization's repository, newest first."""
    columns = [("short_id", "ID"), ("time", "TIME"), ("hostname", "HOST"), ("tags", "TAGS")]
    rows = client(ctx).get(_path(ctx, org))
    if not json_out:
        for row in rows:
            row["tags"] = ",".join(row["tags"])
    listing(rows, columns, json_out)


@app.command()
def check(
    ctx: typer.Context,
    read_data_subset: Annotated[
        str,
        typer.Option(
            "--read-data-subset",
            help="also download and verify this part of the data: 10%, 1/5",
        ),
    ] = "",
    org: OrgOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the repository with `restic check`; exit 1 if it is damaged.

    The structure is always checked; --read-data-subset also reads back part
    of the data (each run a different part with n/m). Audited with its outcome.
    """
    if not json_out:
        typer.echo("Checking the repository (this reads it over the network)…", err=True)
    data = client(ctx).request(
        "POST", _path(ctx, org, "/check"), json={"read_data_subset": read_data_subset}
    )
    if json_out:
        emit(data)
    elif data["ok"]:
        typer.echo("The repository is intact.")
    if not data["ok"]:
        if not json_out:
            typer.echo(data["detail"], err=True)
        raise HangarError(
            "the repository is damaged",
            hint="run `hangar backups run` for a fresh backup; see docs/backups.md",
        )


VolumeOpt = Annotated[
    str, typer.Option("--volume", "-v", help="the volume (vol_…, or a name only one has)")
]


def _volume_path(app_: str | None, volume: str, rest: str) -> str:
    return f"/v1/apps/{app_name(app_)}/volumes/{volume}/backups{rest}"


@app.command()
def run(
    ctx: typer.Context,
    volume: VolumeOpt,
    app_: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Back a volume up now: a fresh snapshot, sent to the organization's repository.

    The snapshot goes as it is, ciphertext inside restic's own encryption: the
    repository's password alone opens nothing of the volume. Backups also run
    on the repository's schedule (`repo set --every-hours`).
    """
    if not json_out:
        typer.echo(f"Backing up {volume} (snapshot, then restic)…", err=True)
    data = client(ctx).request("POST", _volume_path(app_, volume, ""))
    if json_out:
        emit(data)
        return
    typer.echo(
        f"Backup {data['backup_id']} of {volume}: {data['bytes']} bytes read, {data['added']} new."
    )


@app.command()
def restore(
    ctx: typer.Context,
    backup: Annotated[
        str, typer.Argument(help="the backup's id (`hangar backups list`), or latest")
    ],
    volume: VolumeOpt,
    name: Annotated[str, typer.Option("--name", help="the new volume's name")],
    host: Annotated[
        str | None, typer.Option("--host", help="where the new volume lives (default: the same)")
    ] = None,
    app_: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A backup of a volume as a new volume, on any host with the same encryption.

    Nothing is overwritten: mount the new volume (its name in [[mounts]]) or
    copy from it. Its checksum is verified before it is used. A destroyed
    volume's backups cannot be restored: its key went with it. Admins only.
    """
    body: dict[str, Any] = {"backup": backup, "name": name}
    if host is not None:
        body["host"] = host
    if not json_out:
        typer.echo(f"Restoring {backup} of {volume}…", err=True)
    data = client(ctx).request("POST", _volume_path(app_, volume, "/restore"), json=body)
    if json_out:
        emit(data)
        return
    typer.echo(f"Restored as volume {data['volume']} ({name}).")


@app.command()
def drill(
    ctx: typer.Context,
    volume: VolumeOpt,
    backup: Annotated[str, typer.Option("--backup", help="which backup (default: latest)")] = (
        "latest"
    ),
    read_data_subset: Annotated[
        str, typer.Option("--read-data-subset", help="part of the repository read back: 5%, 1/5")
    ] = "5%",
    app_: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Prove a backup restores: into scratch space, checksum compared, repository checked.

    The volume's host restores the backup, compares its SHA-256 with the one
    taken with the snapshot, and runs `restic check --read-data-subset`. The
    result (time, sizes, outcome) is an audit event: evidence of a tested
    contingency plan (HIPAA 164.308(a)(7)). Exit 1 if the drill failed.
    """
    if not json_out:
        typer.echo(f"Drilling a restore of {volume}…", err=True)
    data = client(ctx).request(
        "POST",
        _volume_path(app_, volume, "/drill"),
        json={"backup": backup, "read_data_subset": read_data_subset},
    )
    if json_out:
        emit(data)
    else:
        typer.echo(
            f"Drill of backup {data['backup_id']}: restored {data['bytes']} bytes in"
            f" {data['restore_seconds']}s, checksum {'matches' if data['ok'] else 'DIFFERS'};"
            f" restic check of {data['check_subset']}: {'ok' if data['check_ok'] else 'FAILED'}."
        )
    if not data["ok"]:
        raise HangarError(
            "the restore drill failed",
            hint=data.get("detail") or "see `hangar audit list` for the drill's event",
        )

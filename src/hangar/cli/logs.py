"""``hangar logs``: machines' output, filtered, followed with -f; ``hangar logs sinks``."""

from __future__ import annotations

import datetime as dt
import json
from enum import StrEnum
from typing import Annotated

import typer

from hangar.cli import logsinks
from hangar.cli.common import AppOpt, JsonOpt, app_name, client
from hangar.config.appconfig import parse_duration
from hangar.errors import ValidationError


class Stream(StrEnum):
    stdout = "stdout"
    stderr = "stderr"
    access = "access"


def _when(value: str, option: str, now: dt.datetime) -> str:
    """An ISO time for the API from ``10m``-style ago, or an ISO 8601 time (UTC if no zone)."""
    try:
        return (now - dt.timedelta(seconds=parse_duration(value))).isoformat()
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            f"{option} {value!r} is neither a duration nor a time",
            hint=f"write e.g. {option} 15m, {option} 2h or {option} 2026-01-31T09:00:00Z",
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).isoformat()


app = typer.Typer(name="logs", invoke_without_command=True)
app.add_typer(logsinks.app)


@app.callback()
def logs(
    ctx: typer.Context,
    app: AppOpt = None,
    machine: Annotated[str | None, typer.Option("--machine", "-m", help="one machine")] = None,
    stream: Annotated[
        Stream | None,
        typer.Option("--stream", help="only stdout, stderr, or access (the edge's request lines)"),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="from this long ago (15m, 2h, 1d) or this time (ISO 8601, UTC if no zone)"
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="up to this long ago or this time (same forms as --since)"),
    ] = None,
    match: Annotated[
        str | None,
        typer.Option("--match", "-g", help="only lines containing this text (case-sensitive)"),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep streaming")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Machines' output (stdout and stderr), with time, machine, region and stream.

    Needs logs:read (members and admins, unless the organization chose
    otherwise: `hangar orgs show ORG`). The output is whatever the machines
    print, secret values included if they print them. `hangar logs sinks`
    ships an organization's output to a log store.
    """
    if ctx.invoked_subcommand is not None:
        return
    now = dt.datetime.now(dt.UTC)
    params = {"follow": "true" if follow else "false"}
    if machine:
        params["machine"] = machine
    if stream is not None:
        params["stream"] = stream.value
    if since:
        params["since"] = _when(since, "--since", now)
    if until:
        params["until"] = _when(until, "--until", now)
    if match:
        params["match"] = match
    api = client(ctx)
    for line in api.stream_lines(f"/v1/apps/{app_name(app)}/logs", params):
        if json_out:
            typer.echo(line)
            continue
        record = json.loads(line)
        kind = "" if record["stream"] == "stdout" else f" [{record['stream']}]"
        typer.echo(f"{record['ts']} {record['machine']} {record['region']}{kind} {record['line']}")

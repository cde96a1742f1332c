"""``hangar logs``: machines' output, followed with -f."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hangar.cli.common import AppOpt, JsonOpt, app_name, client


def logs(
    ctx: typer.Context,
    app: AppOpt = None,
    machine: Annotated[str | None, typer.Option("--machine", "-m", help="one machine")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep streaming")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Machines' output (stdout and stderr), with time, machine, region and stream.

    Needs logs:read (members and admins, unless the organization chose
    otherwise: `hangar orgs show ORG`). The output is whatever the machines
    print, secret values included if they print them.
    """
    api = client(ctx)
    params = {"follow": "true" if follow else "false"}
    if machine:
        params["machine"] = machine
    for line in api.stream_lines(f"/v1/apps/{app_name(app)}/logs", params):
        if json_out:
            typer.echo(line)
            continue
        record = json.loads(line)
        stream = "" if record["stream"] == "stdout" else f" [{record['stream']}]"
        typer.echo(
            f"{record['ts']} {record['machine']} {record['region']}{stream} {record['line']}"
        )

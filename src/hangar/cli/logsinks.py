"""``hangar logs sinks``: where an organization's machines' output is shipped."""

from __future__ import annotations

from typing import Annotated

import typer

from hangar.cli.common import JsonOpt, OrgOpt, YesOpt, client
from hangar.cli.output import confirm, emit, listing
from hangar.cli.wireguard import _org

app = typer.Typer(
    name="sinks",
    help="Ship the organization's machines' output to a log store: add, list, remove.",
    no_args_is_help=True,
)


@app.command()
def add(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Argument(
            help="loki (elasticsearch, splunk-hec and syslog are refused: not supported yet)"
        ),
    ],
    url: Annotated[str, typer.Argument(help="the sink's base URL, e.g. https://loki.example")],
    org: OrgOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ship every machine's output of the organization to a sink, from now on.

    Loki receives each machine's stdout and stderr through its push API,
    labelled org, app, machine and stream. Records wait in a disk buffer on
    the control plane while the sink is down, and are retried; any the
    buffer's cap forces out are counted and audited. Organization admins
    only.
    """
    data = client(ctx).request(
        "POST", f"/v1/orgs/{_org(ctx, org)}/log-sinks", json={"kind": kind, "url": url}
    )
    if json_out:
        emit(data)
        return
    typer.echo(f"Added log sink {data['id']}: {data['kind']} at {data['url']}.")


@app.command("list")
def list_(ctx: typer.Context, org: OrgOpt = None, json_out: JsonOpt = False) -> None:
    """The organization's log sinks."""
    columns = [("id", "ID"), ("kind", "KIND"), ("url", "URL"), ("created_at", "CREATED")]
    listing(client(ctx).get(f"/v1/orgs/{_org(ctx, org)}/log-sinks"), columns, json_out)


@app.command()
def remove(
    ctx: typer.Context,
    sink: Annotated[str, typer.Argument(help="the sink's id (`hangar logs sinks list`)")],
    org: OrgOpt = None,
    yes: YesOpt = False,
) -> None:
    """Stop shipping to a sink; what its buffer still held is discarded."""
    confirm(f"Remove log sink {sink}? Output not yet shipped to it is discarded.", yes)
    client(ctx).request("DELETE", f"/v1/orgs/{_org(ctx, org)}/log-sinks/{sink}")
    typer.echo(f"Removed log sink {sink}.")

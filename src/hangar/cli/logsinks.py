"""``hangar logs sinks``: where an organization's machines' output is shipped."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from hangar.cli.common import JsonOpt, OrgOpt, YesOpt, client
from hangar.cli.output import confirm, emit, listing
from hangar.cli.wireguard import _org
from hangar.errors import ValidationError

app = typer.Typer(
    name="sinks",
    help="Ship the organization's machines' output to a log store: add, list, remove.",
    no_args_is_help=True,
)


def _read_secret(what: str) -> str:
    """A credential from stdin, or asked for without echo: never from the command line,
    where other users' `ps` and the shell's history would see it."""
    if sys.stdin.isatty():
        return str(typer.prompt(what, hide_input=True))
    value = sys.stdin.readline().strip()
    if not value:
        raise ValidationError(f"no {what.lower()} on stdin")
    return value


@app.command()
def add(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Argument(help="loki, elasticsearch, splunk-hec or syslog"),
    ],
    url: Annotated[
        str,
        typer.Argument(
            help="the sink's base URL, e.g. https://es.example:9200 (no credentials);"
            " syslog: tls://host[:6514]"
        ),
    ],
    index: Annotated[
        str | None,
        typer.Option(
            "--index",
            help="Elasticsearch index or data stream (default hangar-logs), or Splunk index"
            " (default: the token's)",
        ),
    ] = None,
    token: Annotated[
        bool,
        typer.Option(
            "--token",
            help="splunk-hec: read the HEC token from stdin (or ask for it); required",
        ),
    ] = False,
    api_key: Annotated[
        bool,
        typer.Option(
            "--api-key", help="elasticsearch: read an API key (id:key, base64) from stdin"
        ),
    ] = False,
    user: Annotated[
        str | None,
        typer.Option("--user", help="elasticsearch: basic auth as this user; password from stdin"),
    ] = None,
    org: OrgOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ship every machine's output and the audit trail of the organization to a sink.

    Loki receives each machine's stdout and stderr through its push API,
    labelled org, app, machine and stream. Elasticsearch (or OpenSearch)
    receives one document per line through its bulk API; Splunk through its
    HTTP Event Collector; syslog as RFC 5424 messages over TLS (RFC 5425,
    tls://host[:6514]). Audit events go along as stream "audit". Records
    wait in a disk buffer on the control plane while the sink is down, and
    are retried; any the buffer's cap forces out, or the sink refuses, are
    counted and audited.

    A credential is read from stdin (or asked for), kept encrypted and never
    shown again: `hangar logs sinks add splunk-hec https://hec.example:8088
    --token < token.txt`. Organization admins who may read logs only.
    """
    if sum([token, api_key, user is not None]) > 1:
        raise ValidationError("give one of --token, --api-key and --user")
    auth: dict[str, Any] | None = None
    if token:
        auth = {"scheme": "splunk", "secret": _read_secret("HEC token")}
    elif api_key:
        auth = {"scheme": "apikey", "secret": _read_secret("API key")}
    elif user is not None:
        auth = {"scheme": "basic", "username": user, "secret": _read_secret("Password")}
    body: dict[str, Any] = {"kind": kind, "url": url}
    if index is not None:
        body["index"] = index
    if auth is not None:
        body["auth"] = auth
    data = client(ctx).request("POST", f"/v1/orgs/{_org(ctx, org)}/log-sinks", json=body)
    if json_out:
        emit(data)
        return
    typer.echo(f"Added log sink {data['id']}: {data['kind']} at {data['url']}.")


@app.command("list")
def list_(ctx: typer.Context, org: OrgOpt = None, json_out: JsonOpt = False) -> None:
    """The organization's log sinks."""
    columns = [
        ("id", "ID"),
        ("kind", "KIND"),
        ("url", "URL"),
        ("index", "INDEX"),
        ("auth", "AUTH"),
        ("created_at", "CREATED"),
    ]
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

"""``hangar idps``: the identity providers people sign in through (operators only)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hangar.cli.common import JsonOpt, YesOpt, client
from hangar.cli.output import confirm, emit, listing
from hangar.errors import ValidationError

app = typer.Typer(
    name="idps",
    help="Identity providers (OpenID Connect) people sign in through: operators configure them.",
    no_args_is_help=True,
)


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="a short name people choose (a DNS label)")],
    issuer: Annotated[str, typer.Option(help="the provider's issuer URL (https)")],
    client_id: Annotated[str, typer.Option(help="the client id the provider gave Hangar")],
    client_secret_file: Annotated[
        Path | None,
        typer.Option(
            help="a file holding the client secret ('-': standard input); none for a public client"
        ),
    ] = None,
    scope: Annotated[
        list[str] | None, typer.Option(help="a scope to ask for besides openid (repeatable)")
    ] = None,
    groups_claim: Annotated[
        str, typer.Option(help="the ID-token claim listing the person's groups")
    ] = "groups",
    json_out: JsonOpt = False,
) -> None:
    """Add a provider. Its redirect URI is https://<this API>/web/callback.

    The client secret is stored wrapped by the installation's key and is
    never shown again.
    """
    secret = None
    if client_secret_file is not None:
        if str(client_secret_file) == "-":
            secret = sys.stdin.readline().strip()
        else:
            secret = client_secret_file.read_text().strip()
        if not secret:
            raise ValidationError("the client secret is empty")
    body = {
        "name": name,
        "issuer": issuer,
        "client_id": client_id,
        "client_secret": secret,
        "scopes": scope if scope is not None else ["email", "profile"],
        "groups_claim": groups_claim,
    }
    row = client(ctx).request("POST", "/v1/idps", json=body)
    if json_out:
        emit(row)
        return
    typer.echo(f"Added identity provider {row['name']} ({row['issuer']}).")


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """The configured providers (secrets are never shown: only whether one is set)."""
    rows = client(ctx).get("/v1/idps")
    listing(
        rows,
        [
            ("name", "NAME"),
            ("issuer", "ISSUER"),
            ("client_id", "CLIENT ID"),
            ("client_secret", "SECRET"),
            ("groups_claim", "GROUPS CLAIM"),
        ],
        json_out,
    )


@app.command("remove")
def remove(ctx: typer.Context, name: str, yes: YesOpt = False) -> None:
    """Remove a provider: nobody can sign in through it any more."""
    confirm(f"Remove identity provider {name}?", yes)
    client(ctx).request("DELETE", f"/v1/idps/{name}")
    typer.echo(f"Removed identity provider {name}.")

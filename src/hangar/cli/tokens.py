"""``hangar tokens``: create scoped tokens, list, revoke, attenuate offline."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from hangar.cli.client import load_client_settings
from hangar.cli.common import JsonOpt, OrgOpt, YesOpt, client, duration
from hangar.cli.output import confirm, emit, table
from hangar.crypto.macaroons import Macaroon
from hangar.domain.names import validate_dns_label
from hangar.errors import AuthError, ValidationError

app = typer.Typer(name="tokens", help="API tokens (macaroons).", no_args_is_help=True)

ExpiryOpt = Annotated[
    float, typer.Option(parser=duration, show_default="24h", help="lifetime, e.g. 1h, 24h, 30d")
]
ACTIONS = ("read", "write", "create", "delete", "control")


@app.command()
def create(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Argument(
            help="org (whole organization), app (one app), "
            "readonly (read-only), or user (all your orgs)"
        ),
    ],
    org: OrgOpt = None,
    app_name: Annotated[str | None, typer.Option("--app", "-a", help="app, for app tokens")] = None,
    expiry: ExpiryOpt = 86400.0,
    name: Annotated[str, typer.Option(help="a label to recognise it by")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Create a token. It is printed once and cannot be shown again."""
    if kind not in ("org", "app", "readonly", "user"):
        raise ValidationError(f"unknown token kind {kind!r}", hint="use org, app, readonly or user")
    body = {
        "kind": kind,
        "org": org,
        "app": app_name,
        "expiry_seconds": int(expiry),
        "name": name,
    }
    data = client(ctx).request("POST", "/v1/tokens", json=body)
    if json_out:
        emit(data)
        return
    typer.echo(f"Created {data['kind']} token {data['id']} (expires {data['expires_at']}).")
    typer.echo("It is shown only now:\n")
    typer.echo(data["token"])


@app.command("list")
def list_(ctx: typer.Context, org: OrgOpt = None, json_out: JsonOpt = False) -> None:
    """Your user tokens, or an organization's tokens with --org (admins see all)."""
    items = client(ctx).paged("/v1/tokens", org=org, limit=200)
    if json_out:
        emit(items)
        return
    for item in items:
        item["state"] = "revoked" if item["revoked_at"] else "active"
    table(
        items,
        [
            ("id", "ID"),
            ("kind", "KIND"),
            ("name", "NAME"),
            ("org", "ORG"),
            ("state", "STATE"),
            ("expires_at", "EXPIRES"),
        ],
    )


@app.command()
def revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(help="token id")],
    yes: YesOpt = False,
) -> None:
    """Revoke a token by id; it, and every token attenuated from it, stop at once."""
    confirm(f"Revoke token {token_id}?", yes)
    client(ctx).request("DELETE", f"/v1/tokens/{token_id}")
    typer.echo(f"Revoked {token_id}.")


@app.command()
def attenuate(
    ctx: typer.Context,
    app_names: Annotated[
        list[str] | None, typer.Option("--app", "-a", help="limit to this app (repeatable)")
    ] = None,
    actions: Annotated[
        str | None, typer.Option(help="comma-separated subset of read,write,create,delete,control")
    ] = None,
    expiry: Annotated[
        float | None, typer.Option(parser=duration, help="expire after, e.g. 1h")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="token to narrow (default: the logged-in one)")
    ] = None,
) -> None:
    """Narrow a token offline: the result can do less, never more. Prints the new token."""
    source = token or load_client_settings().token
    if not source:
        raise AuthError("no token to attenuate", hint="pass --token or `hangar auth login`")
    caveats: list[str] = []
    if app_names:
        # The server reads only well-formed caveats; refuse here, not in a token
        # that would fail on its first use.
        names = [validate_dns_label(a, what="app name", reserved_ok=True) for a in app_names]
        caveats.append("apps = " + ",".join(names))
    if actions:
        wanted = [a.strip() for a in actions.split(",") if a.strip()]
        bad = [a for a in wanted if a not in ACTIONS]
        if bad or not wanted:
            raise ValidationError(
                f"unknown action(s) {', '.join(bad) or '(none)'}",
                hint=f"choose from {', '.join(ACTIONS)}",
            )
        caveats.append("actions = " + ",".join(wanted))
    if expiry:
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(expiry))
        caveats.append(f"expires = {int(until.timestamp())}")
    if not caveats:
        raise ValidationError("say how to narrow the token", hint="--app, --actions or --expiry")
    typer.echo(Macaroon.parse(source).attenuate(*caveats).serialize())

"""``hangar auth``: log in with a token, see who you are, log out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hangar.cli import factors
from hangar.cli.client import Client, load_client_settings, save_login
from hangar.cli.common import JsonOpt, client
from hangar.cli.output import emit
from hangar.config.settings import client_config_path
from hangar.errors import ValidationError

app = typer.Typer(name="auth", help="Log in to a Hangar API.", no_args_is_help=True)
app.add_typer(factors.app)
app.command("step-up")(factors.step_up)


@app.command()
def login(
    ctx: typer.Context,
    token: Annotated[str, typer.Option(help="an API token; '-' reads it from standard input")],
    api: Annotated[str | None, typer.Option("--api", help="API URL")] = None,
    ca_cert: Annotated[
        Path | None, typer.Option(help="CA certificate to trust (the server's DATA_DIR/ca.crt)")
    ] = None,
) -> None:
    """Check the token against the API, then store it (mode 0600) for later commands."""
    if token == "-":  # noqa: S105 - "-" means stdin, not a password
        token = sys.stdin.readline().strip()
    if not token:
        raise ValidationError("the token is empty")
    root_api = (ctx.find_root().obj or {}).get("client_flags", {}).get("api_url")
    flags = {
        "api_url": api or root_api,
        "token": token,
        "ca_cert": ca_cert.resolve() if ca_cert else None,
    }
    settings = load_client_settings(flags)
    me = Client(settings).get("/v1/whoami")
    path = save_login(settings)
    typer.echo(f"Logged in to {settings.api_url} as {me['email']} (token {me['token_id']}).")
    typer.echo(f"Saved to {path}.")


@app.command()
def whoami(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show who the current token acts for and what it may do."""
    me = client(ctx).get("/v1/whoami")
    if json_out:
        emit(me)
        return
    typer.echo(
        f"{me['email']}  token {me['token_id']}"
        + ("  (installation operator)" if me["operator"] else "")
    )
    typer.echo(f"  actions: {', '.join(me['actions'])}")
    if me["apps"] is not None:
        typer.echo(f"  apps:    {', '.join(me['apps'])}")


@app.command()
def logout() -> None:
    """Forget the stored token (it stays valid: revoke it with `hangar tokens revoke`)."""
    path = client_config_path()
    if path.exists():
        path.unlink()
        typer.echo(f"Removed {path}.")
    else:
        typer.echo("Not logged in.")

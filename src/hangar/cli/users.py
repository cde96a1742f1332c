"""``hangar users``: operators disable (offboard) and enable people."""

from __future__ import annotations

import typer

from hangar.cli.common import JsonOpt, YesOpt, client
from hangar.cli.output import confirm, emit

app = typer.Typer(name="users", help="Disable or enable people (operators).", no_args_is_help=True)


@app.command("disable")
def disable(ctx: typer.Context, email: str, yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Disable a user: they cannot sign in, and their sessions, tokens and devices end now."""
    confirm(f"Disable {email} and end all their access?", yes)
    done = client(ctx).request("POST", f"/v1/users/{email}/disable")
    if json_out:
        emit(done)
        return
    typer.echo(
        f"Disabled {email}: {done['sessions_ended']} session(s) ended, "
        f"{len(done['tokens_revoked'])} token(s) revoked, "
        f"{len(done['devices_removed'])} device(s) removed."
    )


@app.command("enable")
def enable(ctx: typer.Context, email: str) -> None:
    """Let a disabled user sign in again (what was revoked stays revoked)."""
    client(ctx).request("POST", f"/v1/users/{email}/enable")
    typer.echo(f"Enabled {email}.")

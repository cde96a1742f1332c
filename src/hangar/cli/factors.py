"""``hangar auth factors``: your second factors; ``hangar auth step-up``: use one now."""

from __future__ import annotations

import sys
import time
import webbrowser
from typing import Annotated, Any

import typer

from hangar.cli.common import JsonOpt, YesOpt, client
from hangar.cli.output import confirm, emit, table
from hangar.errors import ValidationError

app = typer.Typer(
    name="factors",
    help="Your second factors: security keys and passkeys (WebAuthn), TOTP apps, recovery codes.",
    no_args_is_help=True,
)

NameOpt = Annotated[str | None, typer.Option("--name", help="a name to tell it by")]
NoBrowserOpt = Annotated[
    bool, typer.Option("--no-browser", help="print the page's address; do not open a browser")
]


def _interactive() -> bool:
    return sys.stdin.isatty()


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Your second factors, and how many recovery codes you have left."""
    data = client(ctx).get("/v1/me/factors")
    if json_out:
        emit(data)
        return
    rows = [
        {
            **f,
            "state": f"disabled: {f['disabled']}"
            if f["disabled"]
            else ("active" if f["confirmed"] else "not confirmed"),
        }
        for f in data["factors"]
    ]
    table(
        rows,
        [
            ("id", "ID"),
            ("kind", "KIND"),
            ("name", "NAME"),
            ("state", "STATE"),
            ("last_used_at", "LAST USED"),
        ],
    )
    typer.echo(f"recovery codes left: {data['recovery_codes_left']}")


def _open(url: str, no_browser: bool) -> None:
    typer.echo(f"Open this page in a browser on this computer (one use, 10 minutes):\n  {url}")
    if not no_browser:
        webbrowser.open(url)


@app.command("add-webauthn")
def add_webauthn(
    ctx: typer.Context,
    no_browser: NoBrowserOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Enrol a security key or passkey: opens the API's web page, where the browser asks for it.

    Once you have a factor, enrolling another needs a fresh step-up first
    (`hangar auth step-up`).
    """
    api = client(ctx)
    data = api.request("POST", "/v1/me/factors/webauthn/link")
    if json_out:
        emit(data)
        return
    _open(data["url"], no_browser)
    typer.echo("Then check it arrived: `hangar auth factors list`.")


@app.command("add-totp")
def add_totp(
    ctx: typer.Context,
    name: NameOpt = None,
    code: Annotated[
        str | None,
        typer.Option("--code", help="confirm at once with this code (else you are asked)"),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Enrol a TOTP authenticator app; its secret is shown once, then confirmed with a code.

    An organization may refuse TOTP (`allow_totp = false`, or `require_mfa =
    "webauthn"`): a security key satisfies every policy.
    """
    api = client(ctx)
    data = api.request("POST", "/v1/me/factors/totp", json={"name": name or "authenticator app"})
    factor = data["factor"]
    if json_out and code is None:
        emit(data)
        return
    if not json_out:
        typer.echo("Add this to your authenticator app (shown once):")
        typer.echo(f"  secret: {data['secret']}")
        typer.echo(f"  URI:    {data['uri']}")
    if code is None:
        if not _interactive():
            typer.echo(f"Confirm it with: hangar auth factors confirm {factor['id']} --code CODE")
            return
        code = typer.prompt("A code from the app")
    confirmed = api.request(
        "POST", f"/v1/me/factors/totp/{factor['id']}/confirm", json={"code": code}
    )
    if json_out:
        emit({**data, "factor": confirmed})
        return
    typer.echo(f"Confirmed {confirmed['name']} ({confirmed['id']}).")


@app.command("confirm")
def confirm_totp(
    ctx: typer.Context,
    factor_id: Annotated[str, typer.Argument(help="the TOTP factor's id")],
    code: Annotated[str, typer.Option("--code", help="a code from the app")],
    json_out: JsonOpt = False,
) -> None:
    """Confirm a TOTP factor with a code from it (only then does it count)."""
    data = client(ctx).request(
        "POST", f"/v1/me/factors/totp/{factor_id}/confirm", json={"code": code}
    )
    if json_out:
        emit(data)
        return
    typer.echo(f"Confirmed {data['name']} ({data['id']}).")


@app.command()
def remove(
    ctx: typer.Context,
    factor_id: Annotated[str, typer.Argument(help="the factor's id (`hangar auth factors list`)")],
    yes: YesOpt = False,
) -> None:
    """Remove one of your factors (needs a fresh step-up)."""
    confirm(f"Remove factor {factor_id}?", yes)
    client(ctx).request("DELETE", f"/v1/me/factors/{factor_id}")
    typer.echo(f"Removed {factor_id}.")


@app.command("recovery-codes")
def recovery_codes(ctx: typer.Context, yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """New recovery codes, shown once; the old ones stop working (needs a fresh step-up)."""
    confirm("Make new recovery codes (the old ones stop working)?", yes or json_out)
    data = client(ctx).request("POST", "/v1/me/recovery-codes")
    if json_out:
        emit(data)
        return
    typer.echo("Keep these somewhere safe; each works once, and they are not shown again:")
    for code in data["codes"]:
        typer.echo(f"  {code}")


@app.command()
def reset(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="the person's e-mail address")],
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove every factor and recovery code of a person who lost them all (operators).

    They then sign in without a second factor and enrol again. Audited as
    factor.reset; needs your own fresh step-up if you have a factor.
    """
    confirm(f"Remove every second factor and recovery code of {email}?", yes)
    data = client(ctx).request("DELETE", f"/v1/users/{email}/factors")
    if json_out:
        emit(data)
        return
    typer.echo(
        f"Removed {data['factors']} factor(s) and {data['recovery_codes']} recovery code(s) "
        f"of {email}."
    )


def step_up(
    ctx: typer.Context,
    totp: Annotated[
        bool, typer.Option("--totp", help="a code from your TOTP app (asked, or --code)")
    ] = False,
    recovery: Annotated[
        bool, typer.Option("--recovery", help="one of your recovery codes (asked, or --code)")
    ] = False,
    code: Annotated[
        str | None, typer.Option("--code", help="the code; '-' reads it from standard input")
    ] = None,
    no_browser: NoBrowserOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Verify a second factor now, so sensitive actions may follow with this login.

    By default a security key, through the API's web page in a browser; with
    --totp or --recovery, a code. Sensitive actions (secrets set, import and
    unset, machines exec, tokens create, member and policy changes, KEK
    rotation) need one fresher than the organization's `step_up_minutes`.
    """
    if totp and recovery:
        raise ValidationError("choose --totp or --recovery, not both")
    api = client(ctx)
    if totp or recovery:
        if code == "-":
            code = sys.stdin.readline().strip()
        if code is None:
            if not _interactive():
                raise ValidationError("no code given", hint="pass --code CODE (or --code -)")
            code = typer.prompt("Recovery code" if recovery else "TOTP code", hide_input=recovery)
        data = api.request(
            "POST",
            "/v1/me/step-up",
            json={"method": "recovery" if recovery else "totp", "code": code},
        )
        _stepped(data, json_out)
        return
    before = api.get("/v1/me/step-up")["verified_at"]
    link = api.request("POST", "/v1/me/step-up/link")
    _open(link["url"], no_browser)
    typer.echo("Waiting for the security key…")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(1.5)
        now = api.get("/v1/me/step-up")
        if now["verified_at"] and now["verified_at"] != before:
            _stepped(now, json_out)
            return
    raise ValidationError("no security key answered in 10 minutes", hint="run it again")


def _stepped(data: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit(data)
        return
    typer.echo(f"Stepped up at {data['verified_at']}.")

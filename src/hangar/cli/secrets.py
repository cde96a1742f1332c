"""``hangar secrets``: an app's secrets. Write-only: no command shows a value."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from hangar.cli.common import AppOpt, JsonOpt, YesOpt, app_name, client
from hangar.cli.output import confirm, emit, table
from hangar.domain.dotenv import parse_dotenv
from hangar.errors import ValidationError

app = typer.Typer(
    name="secrets",
    help="An app's secrets: set, import, unset, list (names and digests), deploy.",
    no_args_is_help=True,
)
StageOpt = Annotated[
    bool, typer.Option("--stage", help="store the change; `hangar secrets deploy` rolls it out")
]


def _done(data: dict[str, Any], what: str, json_out: bool) -> None:
    if json_out:
        emit(data)
        return
    typer.echo(f"{what}: {', '.join(data['secrets']) or '(none)'}")
    if data.get("release"):
        typer.echo(f"Rolling out as release v{data['release']}: `hangar releases` to follow.")


def _put(ctx: typer.Context, app_: str | None, pairs: list[tuple[str, str]], stage: bool) -> Any:
    body = {"secrets": [{"name": n, "value": v} for n, v in pairs], "stage": stage}
    return client(ctx).request("PUT", f"/v1/apps/{app_name(app_)}/secrets", json=body)


@app.command("set")
def set_(
    ctx: typer.Context,
    pairs: Annotated[
        list[str], typer.Argument(help="NAME=VALUE, or NAME=- to read the value from stdin")
    ],
    app_: AppOpt = None,
    stage: StageOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Set secrets; without --stage they roll out to the app's machines (health-gated).

    NAME=- reads the value from standard input, up to its end, so it may span
    lines and never appears in your shell's history or the process list.
    """
    parsed: list[tuple[str, str]] = []
    stdin_used = False
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError(f"{pair!r} is not NAME=VALUE", hint="NAME=- reads stdin")
        if value == "-":
            if stdin_used:
                raise ValidationError("only one value can come from stdin")
            stdin_used = True
            value = sys.stdin.read()
            value = value[:-1] if value.endswith("\n") else value
        parsed.append((name, value))
    _done(_put(ctx, app_, parsed, stage), "Set" + (" (staged)" if stage else ""), json_out)


@app.command("import")
def import_(
    ctx: typer.Context, app_: AppOpt = None, stage: StageOpt = False, json_out: JsonOpt = False
) -> None:
    """Set every secret of a dotenv file read from stdin: `hangar secrets import < .env`."""
    pairs = parse_dotenv(sys.stdin.read())
    if not pairs:
        raise ValidationError("no NAME=value lines on stdin")
    _done(_put(ctx, app_, pairs, stage), "Imported" + (" (staged)" if stage else ""), json_out)


@app.command()
def unset(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="secret names")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every secret of the app")] = False,
    app_: AppOpt = None,
    stage: StageOpt = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove secrets (or --all); without --stage the change rolls out."""
    if all_ == bool(names):
        raise ValidationError("name the secrets to remove, or pass --all")
    name = app_name(app_)
    if all_:
        confirm(f"Remove every secret of {name}?", yes)
    params: dict[str, Any] = {"all": "true"} if all_ else {"name": names}
    if stage:
        params["stage"] = "true"
    data = client(ctx).request("DELETE", f"/v1/apps/{name}/secrets", params=params)
    _done(data, "Removed" + (" (staged)" if stage else ""), json_out)


@app.command("list")
def list_(ctx: typer.Context, app_: AppOpt = None, json_out: JsonOpt = False) -> None:
    """Names, digests, versions and who set them; values are never shown.

    Also the app's current secrets version (each change to the deployed
    secrets makes the next one)."""
    items = client(ctx).get(f"/v1/apps/{app_name(app_)}/secrets")
    if json_out:
        emit(items)
        return
    current = next((i.get("secrets_version") for i in items if i.get("secrets_version")), None)
    if current:
        typer.echo(f"Secrets version {current}")
    for item in items:
        item["digest"] = (item.get("digest") or "-")[:16]
    table(
        items,
        [
            ("name", "NAME"),
            ("digest", "DIGEST"),
            ("version", "VERSION"),
            ("status", "STATUS"),
            ("created_by", "CREATED BY"),
            ("created_at", "CREATED AT"),
        ],
    )


@app.command()
def deploy(ctx: typer.Context, app_: AppOpt = None, json_out: JsonOpt = False) -> None:
    """Roll staged changes out to the app's machines (rolling, health-gated)."""
    data = client(ctx).request("POST", f"/v1/apps/{app_name(app_)}/secrets/deploy")
    _done(data, "Deployed", json_out)


@app.command("rotate-key")
def rotate_key(ctx: typer.Context, app_: AppOpt = None, json_out: JsonOpt = False) -> None:
    """Give the app a new data key and re-encrypt every value under it (digests change)."""
    data = client(ctx).request("POST", f"/v1/apps/{app_name(app_)}/secrets/rotate-key")
    if json_out:
        emit(data)
    else:
        typer.echo(
            f"Data key v{data['key_version']}: {data['reencrypted']} value(s) re-encrypted;"
            " the old key is gone."
        )

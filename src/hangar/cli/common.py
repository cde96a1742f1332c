"""Shared CLI preconditions and options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hangar.cli.client import Client, load_client_settings
from hangar.config.appconfig import load_app_config, parse_duration
from hangar.errors import ConfigError

__all__ = [
    "AppOpt",
    "JsonOpt",
    "OrgOpt",
    "YesOpt",
    "app_name",
    "client",
    "duration",
    "org_param",
]

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for programs")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
OrgOpt = Annotated[str | None, typer.Option("--org", "-o", help="organization name")]
AppOpt = Annotated[
    str | None, typer.Option("--app", "-a", help="app name (default: hangar.toml's)")
]


def duration(text: str) -> float:
    """Seconds in ``"10s"``, ``"2m"``, ``"500ms"`` or bare seconds.

    Pass as ``typer.Option(parser=duration)``: the ValueError a malformed value
    raises becomes a usage error naming the option (exit 2), not a traceback.
    """
    return parse_duration(text)


def client(ctx: typer.Context, *, need_token: bool = True) -> Client:
    """A client for the API named by --api, the environment or the login file."""
    flags: dict[str, Any] = dict((ctx.find_root().obj or {}).get("client_flags", {}))
    made = Client(load_client_settings(flags), need_token=need_token)
    # Its connections close when the command ends (in a long-lived process too).
    ctx.call_on_close(made.close)
    return made


def org_param(org: str | None) -> dict[str, Any]:
    return {"org": org} if org else {}


def app_name(app: str | None, config: Path = Path("hangar.toml")) -> str:
    """--app, or the app named by hangar.toml here."""
    if app:
        return app
    if config.exists():
        return load_app_config(config).app
    raise ConfigError("which app?", hint="pass --app NAME, or run where hangar.toml is")

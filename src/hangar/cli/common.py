"""Shared CLI preconditions and options."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hangar.cli.client import Client, load_client_settings

__all__ = ["JsonOpt", "OrgOpt", "YesOpt", "client", "org_param"]

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for programs")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
OrgOpt = Annotated[str | None, typer.Option("--org", "-o", help="organization name")]


def client(ctx: typer.Context, *, need_token: bool = True) -> Client:
    """A client for the API named by --api, the environment or the login file."""
    flags: dict[str, Any] = dict((ctx.find_root().obj or {}).get("client_flags", {}))
    return Client(load_client_settings(flags), need_token=need_token)


def org_param(org: str | None) -> dict[str, Any]:
    return {"org": org} if org else {}

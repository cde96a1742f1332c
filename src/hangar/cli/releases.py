"""``hangar releases``: an app's releases, newest first; ``rollback`` to an earlier one."""

from __future__ import annotations

from typing import Annotated

import typer

from hangar.cli.common import AppOpt, JsonOpt, app_name, client
from hangar.cli.deploy import follow
from hangar.cli.output import emit, table

app = typer.Typer(
    name="releases",
    help="An app's releases (`hangar releases` lists them) and rollbacks.",
    invoke_without_command=True,
)

STRATEGIES = "rolling, canary, bluegreen or immediate (default: the earlier release's)"


def _list(ctx: typer.Context, app_: str | None, json_out: bool) -> None:
    items = client(ctx).get(f"/v1/apps/{app_name(app_)}/releases")
    if json_out:
        emit(items)
        return
    for item in items:
        item["digest"] = (item.get("image_digest") or "-")[:19]
        item["secrets"] = item.get("secrets_version") or "-"
        if item.get("rollback_of"):
            item["strategy"] = f"{item['strategy']} (rollback to v{item['rollback_of']})"
    table(
        items,
        [
            ("version", "VERSION"),
            ("status", "STATUS"),
            ("phase", "PHASE"),
            ("digest", "DIGEST"),
            ("secrets", "SECRETS"),
            ("strategy", "STRATEGY"),
            ("created_by", "BY"),
            ("created_at", "CREATED"),
            ("reason", "REASON"),
        ],
    )


@app.callback()
def releases(ctx: typer.Context, app_: AppOpt = None, json_out: JsonOpt = False) -> None:
    """Releases of an app, newest first: version, status, what it is doing, image digest,
    secrets version, strategy, who, when.
    `hangar releases rollback` deploys an earlier one again."""
    if ctx.invoked_subcommand is None:
        _list(ctx, app_, json_out)


@app.command("list")
def list_(ctx: typer.Context, app_: AppOpt = None, json_out: JsonOpt = False) -> None:
    """Releases of an app, newest first (as `hangar releases`)."""
    _list(ctx, app_, json_out)


@app.command()
def rollback(
    ctx: typer.Context,
    version: Annotated[
        int | None,
        typer.Argument(help="the release to go back to (default: the one before the live one)"),
    ] = None,
    strategy: Annotated[str | None, typer.Option(help=STRATEGIES)] = None,
    app_: AppOpt = None,
    detach: Annotated[bool, typer.Option(help="return once the release is created")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Deploy an earlier release again, as a new release.

    Its image (by digest), configuration and secrets version.

    It rolls out like any deploy (health-gated, with its strategy); its machines
    receive the secret values the earlier release ran with. The app's current
    secrets stay as they are: the next deploy or secrets change uses them.
    """
    name = app_name(app_)
    api = client(ctx)
    release = api.request(
        "POST",
        f"/v1/apps/{name}/releases/rollback",
        json={"version": version, "strategy": strategy},
    )
    if not json_out:
        secrets = release.get("secrets_version")
        typer.echo(
            f"Release v{release['version']} of {name} created: v{release['rollback_of']}'s image,"
            f" configuration and "
            + (f"secrets version {secrets}" if secrets else "secrets (none)")
            + f" ({release['strategy']})."
        )
    if detach:
        emit(release) if json_out else None
        return
    follow(api, name, release, json_out)

"""``hangar deploy``: a new release, followed until it is live or has failed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hangar.cli.common import AppOpt, JsonOpt, client
from hangar.cli.images import server_image
from hangar.cli.output import emit
from hangar.config.appconfig import load_app_config
from hangar.errors import ConfigError, HangarError

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="the app's hangar.toml")]


def deploy(
    ctx: typer.Context,
    config: ConfigOpt = Path("hangar.toml"),
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            "-i",
            help="a layout here (PATH or oci:PATH:TAG, uploaded), docker://REF or sha256:DIGEST"
            " (default: \\[build] image)",
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="rolling, canary, bluegreen or immediate (default: \\[deploy] strategy)"),
    ] = None,
    app: AppOpt = None,
    detach: Annotated[bool, typer.Option(help="return once the release is created")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Deploy a new release: health-gated, rolled back if it fails."""
    cfg = load_app_config(config)
    name = app or cfg.app
    chosen = image or cfg.build.image
    if not chosen:
        raise ConfigError("no image to deploy", hint="pass --image, or set [build] image")
    # --image is the caller's path; [build] image is the file's, like every path in it.
    base = None if image else config.resolve().parent
    api = client(ctx)
    extra: dict[str, Any] = {}
    if chosen.startswith("docker://"):
        extra["timeout"] = 1800  # the server copies a registry image before it answers
        if not json_out:
            typer.echo(f"Copying {chosen} to the server (this can take a while)...")
    release = api.request(
        "POST",
        f"/v1/apps/{name}/releases",
        json={
            "image": server_image(api, name, chosen, base=base, quiet=json_out),
            "config": config.read_text(),
            "strategy": strategy,
        },
        **extra,
    )
    version = release["version"]
    if not json_out:
        typer.echo(f"Release v{version} of {name} created ({release['strategy']}).")
    if detach:
        emit(release) if json_out else None
        return
    follow(api, name, release, json_out)


def follow(api: Any, name: str, release: dict[str, Any], json_out: bool) -> None:
    """Print the release's phases and machines until it is live; HangarError if it failed."""
    version = release["version"]
    seen: dict[str, tuple[Any, ...]] = {}
    phase = ""
    while release["status"] in ("pending", "running"):
        time.sleep(0.5)
        release = api.get(f"/v1/apps/{name}/releases/{version}")
        if json_out:
            continue
        if release.get("phase") and release["phase"] != phase:
            phase = release["phase"]
            typer.echo(f"v{version}: {phase}")
        for m in api.get(f"/v1/apps/{name}/machines"):
            now = (m["state"], m["running_version"], m["healthy"])
            if seen.get(m["id"]) != now:
                seen[m["id"]] = now
                health = {True: "healthy", False: "failing checks", None: "checks pending"}
                typer.echo(
                    f"  {m['id']}  {m['state']:<9} v{m['running_version'] or '-'}  "
                    f"{health[m['healthy']]}"
                )
    if json_out:
        emit(release)
    if release["status"] != "complete":
        raise HangarError(
            f"release v{version} failed: {release['reason']}",
            hint=running_now(api.get(f"/v1/apps/{name}/machines"), name),
        )
    if not json_out:
        typer.echo(f"Release v{version} is live.")


def running_now(machines: list[dict[str, Any]], app: str) -> str:
    """What the app's machines run now, as they report it: the truth after a rollback."""
    by_version: dict[str, list[str]] = {}
    for m in machines:
        if m["state"] == "destroyed":
            continue
        shown = f"v{m['running_version']}" if m["running_version"] else "nothing yet"
        by_version.setdefault(shown, []).append(m["id"])
    if not by_version:
        return f"{app} has no machines now"
    parts = [f"{v} on {', '.join(ids)}" for v, ids in sorted(by_version.items())]
    return f"its machines run {'; '.join(parts)} (`hangar status --app {app}`)"

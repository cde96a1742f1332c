"""``hangar deploy``, ``hangar releases`` and ``hangar status``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hangar.cli.common import JsonOpt, client
from hangar.cli.output import emit, table
from hangar.config.appconfig import load_app_config
from hangar.errors import ConfigError, HangarError

AppOpt = Annotated[
    str | None, typer.Option("--app", "-a", help="app name (default: hangar.toml's)")
]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="the app's hangar.toml")]
MACHINE_COLUMNS = [
    ("id", "ID"),
    ("state", "STATE"),
    ("running_version", "VERSION"),
    ("healthy", "HEALTHY"),
    ("address", "ADDRESS"),
    ("host", "HOST"),
    ("updated_at", "UPDATED"),
]


def app_name(app: str | None, config: Path = Path("hangar.toml")) -> str:
    """--app, or the app named by hangar.toml here."""
    if app:
        return app
    if config.exists():
        return load_app_config(config).app
    raise ConfigError("which app?", hint="pass --app NAME, or run where hangar.toml is")


def absolute_image(image: str) -> str:
    """Make an oci: path absolute (the server reads it), leaving docker:// alone."""
    if image.startswith("docker://"):
        return image
    body = image.removeprefix("oci:")
    tag = ""
    if image.startswith("oci:") and ":" in body:
        body, tag = body.rsplit(":", 1)
        tag = ":" + tag
    return f"oci:{Path(body).resolve()}{tag}"


def deploy(
    ctx: typer.Context,
    config: ConfigOpt = Path("hangar.toml"),
    image: Annotated[
        str | None,
        typer.Option(
            "--image", "-i", help="PATH, oci:PATH:TAG or docker://REF (default: [build] image)"
        ),
    ] = None,
    strategy: Annotated[str | None, typer.Option(help="immediate or rolling")] = None,
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
    api = client(ctx)
    extra: dict[str, Any] = {}
    if chosen.startswith("docker://"):
        extra["timeout"] = 1800  # the server copies a registry image before it answers
        if not json_out:
            typer.echo(f"Copying {chosen} to the server (this can take a while)...")
    release = api.request(
        "POST",
        f"/v1/apps/{name}/releases",
        json={"image": absolute_image(chosen), "config": config.read_text(), "strategy": strategy},
        **extra,
    )
    version = release["version"]
    if not json_out:
        typer.echo(f"Release v{version} of {name} created ({release['strategy']}).")
    if detach:
        emit(release) if json_out else None
        return
    seen: dict[str, tuple[Any, ...]] = {}
    while release["status"] in ("pending", "running"):
        time.sleep(0.5)
        release = api.get(f"/v1/apps/{name}/releases/{version}")
        if json_out:
            continue
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
        raise HangarError(f"release v{version} failed: {release['reason']}")
    if not json_out:
        typer.echo(f"Release v{version} is live.")


def releases(ctx: typer.Context, app: AppOpt = None, json_out: JsonOpt = False) -> None:
    """Releases of an app, newest first: version, status, image digest, who, when."""
    items = client(ctx).get(f"/v1/apps/{app_name(app)}/releases")
    if json_out:
        emit(items)
        return
    for item in items:
        item["digest"] = (item.get("image_digest") or "-")[:19]
    table(
        items,
        [
            ("version", "VERSION"),
            ("status", "STATUS"),
            ("digest", "DIGEST"),
            ("strategy", "STRATEGY"),
            ("created_by", "BY"),
            ("created_at", "CREATED"),
            ("reason", "REASON"),
        ],
    )


def status(ctx: typer.Context, app: AppOpt = None, json_out: JsonOpt = False) -> None:
    """An app's current release and its machines, states and health."""
    name = app_name(app)
    api = client(ctx)
    latest = api.get(f"/v1/apps/{name}/releases", limit=1)
    machines = api.get(f"/v1/apps/{name}/machines")
    if json_out:
        emit({"app": name, "release": latest[0] if latest else None, "machines": machines})
        return
    if latest:
        r = latest[0]
        typer.echo(
            f"{name}: release v{r['version']} {r['status']}"
            + (f" ({r['reason']})" if r["reason"] else "")
        )
    else:
        typer.echo(f"{name}: never deployed")
    table(machines, MACHINE_COLUMNS)


def logs(
    ctx: typer.Context,
    app: AppOpt = None,
    machine: Annotated[str | None, typer.Option("--machine", "-m", help="one machine")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep streaming")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Machines' output (stdout and stderr), with time, machine, region and stream."""
    api = client(ctx)
    params = {"follow": "true" if follow else "false"}
    if machine:
        params["machine"] = machine
    for line in api.stream_lines(f"/v1/apps/{app_name(app)}/logs", params):
        if json_out:
            typer.echo(line)
            continue
        record = json.loads(line)
        stream = "" if record["stream"] == "stdout" else f" [{record['stream']}]"
        typer.echo(
            f"{record['ts']} {record['machine']} {record['region']}{stream} {record['line']}"
        )

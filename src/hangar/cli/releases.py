"""``hangar releases``: an app's releases, newest first."""

from __future__ import annotations

import typer

from hangar.cli.common import AppOpt, JsonOpt, app_name, client
from hangar.cli.output import emit, table


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

"""``hangar metrics``: an app's machines' key figures."""

from __future__ import annotations

from typing import Any

import typer

from hangar.cli.common import AppOpt, JsonOpt, app_name, client
from hangar.cli.output import emit, table


def _figure(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MiB":
        return f"{value / (1 << 20):.1f} MiB"
    if unit == "s":
        return f"{value:.1f}s"
    return f"{value:g}"


def metrics(ctx: typer.Context, app: AppOpt = None, json_out: JsonOpt = False) -> None:
    """An app's machines' key figures: CPU time, memory, processes, its own metrics' scrape.

    Collected by each machine's host every 15 seconds. The app's own
    metrics (the metrics table in hangar.toml) and these figures, for every
    app of the organization, are at GET /v1/orgs/ORG/metrics in Prometheus's
    text format.
    """
    name = app_name(app)
    figures = client(ctx).get(f"/v1/apps/{name}/metrics", format="json")
    if json_out:
        emit(figures)
        return
    rows = [
        {
            "machine": f["machine"],
            "age": _figure(f["age_seconds"], "s") if f["age_seconds"] is not None else "none yet",
            "cpu": _figure(f["cpu_seconds"], "s"),
            "memory": _figure(f["memory_bytes"], "MiB"),
            "pids": _figure(f["pids"], ""),
            "scrape": {None: "-", True: "ok", False: "failing"}[f["scrape_ok"]],
            "series": str(f["app_series"]),
        }
        for f in figures
    ]
    table(
        rows,
        [
            ("machine", "MACHINE"),
            ("age", "COLLECTED"),
            ("cpu", "CPU TIME"),
            ("memory", "MEMORY"),
            ("pids", "PROCESSES"),
            ("scrape", "APP METRICS"),
            ("series", "SERIES"),
        ],
    )

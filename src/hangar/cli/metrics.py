"""``hangar metrics``: an app's key figures, its machines' and at each edge host."""

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
    if unit == "ms":
        return f"{value * 1000:.0f}ms"
    return f"{value:g}"


def _traffic(size: Any, packets: Any) -> str:
    if size is None:
        return "-"
    return f"{_figure(size, 'MiB')} / {_figure(packets, '')} pkts"


def _responses(by_class: dict[str, float]) -> str:
    shown = [f"{code}:{count:g}" for code, count in by_class.items() if count]
    return " ".join(shown) or "-"


def metrics(ctx: typer.Context, app: AppOpt = None, json_out: JsonOpt = False) -> None:
    """An app's key figures: its machines' resources and traffic, and its edge requests.

    Each machine's CPU time, memory, processes, network traffic and its own
    metrics' scrape; and at each edge host, the app's requests by status class
    and average response time.

    Machines' figures are collected by their hosts every 15 seconds, the
    network's from the hosts' nftables counters; the edge's are read from
    HAProxy every 15 seconds. The app's own metrics (the metrics table in
    hangar.toml) and these figures, for every app of the organization, are
    at GET /v1/orgs/ORG/metrics in Prometheus's text format.
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
            "in": _traffic(f["rx_bytes"], f["rx_packets"]),
            "out": _traffic(f["tx_bytes"], f["tx_packets"]),
            "scrape": {None: "-", True: "ok", False: "failing"}[f["scrape_ok"]],
            "series": str(f["app_series"]),
        }
        for f in figures["machines"]
    ]
    table(
        rows,
        [
            ("machine", "MACHINE"),
            ("age", "COLLECTED"),
            ("cpu", "CPU TIME"),
            ("memory", "MEMORY"),
            ("pids", "PROCESSES"),
            ("in", "NET IN"),
            ("out", "NET OUT"),
            ("scrape", "APP METRICS"),
            ("series", "SERIES"),
        ],
    )
    typer.echo("")
    typer.echo("At the edge:")
    edge = [
        {
            "edge": e["edge"],
            "age": _figure(e["age_seconds"], "s"),
            "requests": _figure(e["requests"], ""),
            "responses": _responses(e["responses"]),
            "time": _figure(e["response_time_seconds"], "ms"),
            "sessions": _figure(e["current_sessions"], ""),
        }
        for e in figures["edge"]
    ]
    table(
        edge,
        [
            ("edge", "EDGE"),
            ("age", "COLLECTED"),
            ("requests", "REQUESTS"),
            ("responses", "RESPONSES"),
            ("time", "AVG TIME"),
            ("sessions", "OPEN"),
        ],
    )

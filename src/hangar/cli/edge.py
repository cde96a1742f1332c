"""``hangar edge``: what this installation's edge serves (installation operators)."""

from __future__ import annotations

import typer

from hangar.cli.common import JsonOpt, client
from hangar.cli.output import emit, table

app = typer.Typer(
    name="edge", help="The edge (HAProxy): listeners, routes, backends.", no_args_is_help=True
)


@app.command()
def status(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Listeners, routes, backends and the health of each machine behind them."""
    data = client(ctx).get("/v1/edge")
    if json_out:
        emit(data)
        return
    if not data["local"]:
        typer.echo("The API's host runs no edge.")
        return
    typer.echo(f"HAProxy: {'running' if data['running'] else 'not running'}")
    if data["error"]:
        typer.echo(f"Last error: {data['error']}")
    for part, why in sorted(data.get("quarantined", {}).items()):
        typer.echo(f"Left out: {part}: {why} (tried again every 30 s)")
    typer.echo("\nRoutes:")
    rows = []
    for route in data["routes"]:
        up = sum(1 for s in route["servers"] if s["up"])
        rows.append(
            {
                "app": route["app"],
                "hostnames": ", ".join(route["hostnames"]),
                "machines": f"{up}/{len(route['servers'])} in rotation",
                "https": "forced" if route["force_https"] else "optional",
                "hsts": route["hsts"] or "off",
            }
        )
    for tcp in data["tcp"]:
        up = sum(1 for s in tcp["servers"] if s["up"])
        rows.append(
            {
                "app": tcp["app"],
                "hostnames": f"tcp port {tcp['port']}" + (" (tls)" if tcp["tls"] else ""),
                "machines": f"{up}/{len(tcp['servers'])} in rotation",
                "https": "-",
                "hsts": "-",
            }
        )
    table(
        rows,
        [
            ("app", "APP"),
            ("hostnames", "ANSWERS ON"),
            ("machines", "MACHINES"),
            ("https", "HTTPS"),
            ("hsts", "HSTS"),
        ],
    )
    typer.echo("\nListeners and backends:")
    table(
        data["proxies"],
        [
            ("proxy", "PROXY"),
            ("name", "NAME"),
            ("status", "STATUS"),
            ("sessions", "SESSIONS"),
            ("total", "TOTAL"),
        ],
    )

"""``hangar agent``: run the agent of a host that joins an installation."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from hangar.errors import ConfigError
from hangar.telemetry.metrics import check_listen_host

app = typer.Typer(
    name="agent", help="Run machines on this host for a Hangar installation.", no_args_is_help=True
)


@app.command()
def run(
    api: Annotated[
        str | None,
        typer.Option("--api", help="the control plane's API URL (needed to join)"),
    ] = None,
    join_token: Annotated[
        str | None,
        typer.Option(
            "--join",
            help="one-time token from `hangar hosts join-token` (first start only)",
            envvar="HANGAR_JOIN_TOKEN",
        ),
    ] = None,
    agent_dir: Annotated[
        Path,
        typer.Option(help="this host's identity, images, machines and logs"),
    ] = Path("/var/lib/hangar-agent"),
    name: Annotated[
        str | None,
        typer.Option(help="this host's name (default: its hostname; the token may fix it)"),
    ] = None,
    poll: Annotated[
        float, typer.Option(help="seconds to wait for new assignments before looking again")
    ] = 2.0,
    log_level: Annotated[str, typer.Option(help="critical|error|warning|info|debug")] = "info",
    log_format: Annotated[str, typer.Option(help="text, or json: one JSON object a line")] = "text",
    own_log_sink_url: Annotated[
        str,
        typer.Option(
            help="ship the agent's own logs to the operator's sink at this URL (see docs/logs.md)"
        ),
    ] = "",
    own_log_sink_kind: Annotated[
        str, typer.Option(help="loki, elasticsearch, splunk-hec or syslog")
    ] = "loki",
    own_log_sink_credential_file: Annotated[
        Path | None,
        typer.Option(help="a file holding the sink's Splunk HEC token or Elasticsearch API key"),
    ] = None,
    edge: Annotated[
        bool,
        typer.Option(
            "--edge", help="also run an edge (HAProxy) here; the host must have joined as one"
        ),
    ] = False,
    edge_listen_host: Annotated[str, typer.Option(help="address the edge listens on")] = "::",
    edge_http_port: Annotated[int, typer.Option(help="the edge's HTTP port")] = 80,
    edge_https_port: Annotated[int, typer.Option(help="the edge's HTTPS port")] = 443,
    edge_metrics_port: Annotated[
        int, typer.Option(help="Prometheus exporter on 127.0.0.1 (0: none)")
    ] = 8405,
    mesh_endpoint: Annotated[
        str | None,
        typer.Option(help="join the WireGuard mesh: ADDRESS:PORT other hosts reach this one at"),
    ] = None,
    mesh_port: Annotated[int, typer.Option(help="WireGuard's UDP listening port")] = 51820,
    volume_backend: Annotated[
        str,
        typer.Option(
            help="how volumes are encrypted here: auto (LUKS2 where the kernel has "
            "device-mapper, else gocryptfs), luks2 or gocryptfs"
        ),
    ] = "auto",
    dns: Annotated[
        bool, typer.Option("--dns/--no-dns", help="answer this host's machines' .internal names")
    ] = True,
    metrics_listen_host: Annotated[
        str, typer.Option(help="loopback address for Prometheus metrics")
    ] = "127.0.0.1",
    metrics_port: Annotated[
        int, typer.Option(help="port for Prometheus metrics at /metrics (0: none)")
    ] = 9464,
) -> None:
    """Join (the first time, with --api and --join) and run this host's machines.

    The join token buys a client certificate for a key made on this host;
    from then on the agent talks to the control plane over mutual TLS only,
    and renews its certificate before it expires. Machines keep running
    while the agent is stopped and are adopted when it starts again.
    """
    from hangar.agent.join import Identity, join
    from hangar.agent.remote import run_agent
    from hangar.telemetry.ownlogs import OwnLogShipper, OwnLogSink, configure_logging

    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise ConfigError(f"--log-level {log_level!r} is not critical|error|warning|info|debug")
    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format {log_format!r} is not text or json")
    configure_logging(log_level, "json" if log_format == "json" else "text")
    # Refused before the host joins or anything starts, if the sink is wrong.
    own_sink = None
    if own_log_sink_url:
        own_sink = OwnLogSink(own_log_sink_kind, own_log_sink_url, own_log_sink_credential_file)
        own_sink.driver()
    if metrics_port:
        check_listen_host(metrics_listen_host)
    if os.geteuid() != 0:
        raise ConfigError("the agent runs machines with runc and needs root")
    identity = Identity.load(agent_dir)
    if identity is None:
        if not api or not join_token:
            raise ConfigError(
                f"{agent_dir} holds no host identity yet",
                hint="join with --api URL --join TOKEN (`hangar hosts join-token` makes one)",
            )
        host_name = name or socket.gethostname().split(".")[0].lower()
        identity = join(api, join_token, agent_dir, name=host_name)
        typer.echo(f"Joined as host {identity.name} ({identity.host_id}).")
    elif join_token:
        typer.echo(f"Already joined as host {identity.name}; ignoring --join.", err=True)
    edge_config = None
    if edge:
        from hangar.edge.haproxy import EdgeConfig

        edge_config = EdgeConfig(
            directory=agent_dir / "edge",
            bind_host=edge_listen_host,
            http_port=edge_http_port,
            https_port=edge_https_port,
            metrics_port=edge_metrics_port,
        )
    own_logs = None
    if own_sink is not None:
        own_logs = OwnLogShipper(
            own_sink, agent_dir / "own-logs", component="hangar-agent", host=identity.name
        )
        own_logs.start()
    try:
        code = run_agent(
            identity,
            agent_dir,
            poll_seconds=poll,
            edge=edge_config,
            mesh_endpoint=mesh_endpoint,
            mesh_port=mesh_port,
            volume_backend=volume_backend,
            dns=dns,
            metrics=(metrics_listen_host, metrics_port) if metrics_port else None,
        )
    finally:
        if own_logs is not None:
            own_logs.stop()
    raise typer.Exit(code)

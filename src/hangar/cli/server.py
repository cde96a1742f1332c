"""``hangar server``: set up and run the control plane on this host."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hangar.cli.common import JsonOpt, YesOpt, client, duration
from hangar.cli.output import confirm, emit
from hangar.config.settings import ServerSettings, load_settings
from hangar.errors import ConfigError, Conflict, HangarError, NotFound, ValidationError
from hangar.hostfs import write_private

if TYPE_CHECKING:
    from hangar.agent.teardown import Holdings

app = typer.Typer(name="server", help="Initialise and run a Hangar server.", no_args_is_help=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="where keys and the database live ($HANGAR_DATA_DIR)"),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="server settings file (TOML; default DATA_DIR/server.toml if present)"
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL; default SQLite in the data dir, or postgresql+psycopg://…",
    ),
]
ProviderOpt = Annotated[
    str | None,
    typer.Option(
        "--kek-provider",
        help="file (default), env ($HANGAR_KEK_HEX) or pkcs11 (an HSM; see docs/keys.md)",
    ),
]
KekOpt = Annotated[
    Path | None,
    typer.Option(
        "--kek-file", help="key-encryption key file (default DATA_DIR/kek.key, mode 0600)"
    ),
]


def server_settings(data_dir: Path | None, config: Path | None, **flags: Any) -> ServerSettings:
    data = data_dir or (
        Path(os.environ["HANGAR_DATA_DIR"]) if os.environ.get("HANGAR_DATA_DIR") else None
    )
    if data is None:
        raise ConfigError("no data directory", hint="pass --data-dir DIR")
    if config is None and (data / "server.toml").exists():
        config = data / "server.toml"
    return load_settings(ServerSettings, file=config, flags={"data_dir": data, **flags})


@app.command()
def init(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    kek_file: KekOpt = None,
    kek_provider: ProviderOpt = None,
    org: Annotated[str, typer.Option(help="the first organization's name")] = "default",
    admin_email: Annotated[
        str, typer.Option(help="the first admin's email")
    ] = "admin@localhost.localdomain",
    token_expiry: Annotated[
        float,
        typer.Option(parser=duration, show_default="30d", help="admin token lifetime, e.g. 24h"),
    ] = 30 * 86400.0,
    token_file: Annotated[
        Path | None,
        typer.Option(help="write the admin token to this file (0600) instead of printing it"),
    ] = None,
    force: Annotated[bool, typer.Option(help="destroy an existing installation here")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create keys, the internal CA, the database, the first organization and its admin.

    Prints a one-time admin token: it is not stored anywhere and cannot be shown again.
    """
    from hangar.controlplane.bootstrap import init_server

    settings = server_settings(
        data_dir,
        config,
        database_url=database_url,
        kek_file=kek_file,
        kek_provider=kek_provider,
    )
    ttl = dt.timedelta(seconds=token_expiry)
    result = init_server(
        settings, org_name=org, admin_email=admin_email, token_ttl=ttl, force=force
    )
    if token_file is not None:
        write_private(token_file, result.token + "\n")
    shown = None if token_file else result.token
    api = f"https://{settings.listen_host}:{settings.listen_port}"
    if json_out:
        emit(
            {
                "data_dir": str(result.data_dir),
                "org": result.org,
                "admin": result.admin_email,
                "token": shown,
                "token_id": result.token_id,
                "token_file": str(token_file or ""),
                "ca_cert": str(result.ca_cert),
                "kek_file": str(result.kek_file) if result.kek_file else None,
                "api": api,
            }
        )
        return
    typer.echo(f"Initialised Hangar in {result.data_dir}")
    typer.echo(f"  organization   {result.org}")
    typer.echo(f"  admin          {result.admin_email}")
    typer.echo(f"  CA certificate {result.ca_cert}")
    if result.kek_file is not None:
        typer.echo(f"  KEK            {result.kek_file}  (back it up apart from the database)")
    else:
        typer.echo(
            f"  KEK            from {settings.kek_provider} (it never touches the disk here)"
        )
    if shown:
        typer.echo(f"\nAdmin token (shown once, never stored; expires in {ttl}):\n\n  {shown}\n")
    else:
        typer.echo(f"\nAdmin token written to {token_file} (mode 0600).\n")
    typer.echo("Next:")
    typer.echo(f"  hangar server run --data-dir {result.data_dir}")
    typer.echo(
        f"  hangar auth login --api {api} --ca-cert {result.ca_cert} --token "
        f"{'$(cat ' + str(token_file) + ')' if token_file else '<token>'}"
    )
    typer.echo("  hangar idps add NAME --issuer URL --client-id ID --client-secret-file FILE")
    typer.echo(
        "\nThe admin token is the installation's break-glass access: every use is audited\n"
        "(auth.break_glass) and logged as a warning. Keep it offline; day to day, sign in\n"
        "through an identity provider (docs/identity.md)."
    )


@app.command()
def run(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    kek_file: KekOpt = None,
    kek_provider: ProviderOpt = None,
    listen_host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    listen_port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    agent_listen_port: Annotated[
        int | None,
        typer.Option(help="port for other hosts' agents (mutual TLS only; 0: none)"),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="critical|error|warning|info|debug")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text, or json: one JSON object a line (default text)")
    ] = None,
    agent: Annotated[
        bool | None,
        typer.Option(
            "--agent/--no-agent", help="also run this host's agent (runs machines; needs root)"
        ),
    ] = None,
    agent_dir: Annotated[
        Path | None,
        typer.Option(help="the agent's images, machines and logs (default: DATA_DIR-agent)"),
    ] = None,
    edge: Annotated[
        bool | None,
        typer.Option("--edge/--no-edge", help="run the edge (HAProxy) on this host"),
    ] = None,
    edge_listen_host: Annotated[
        str | None, typer.Option(help="address the edge listens on (default :: and 0.0.0.0)")
    ] = None,
    edge_http_port: Annotated[int | None, typer.Option(help="the edge's HTTP port")] = None,
    edge_https_port: Annotated[int | None, typer.Option(help="the edge's HTTPS port")] = None,
    edge_domain: Annotated[
        str | None, typer.Option(help="every app answers on <app>.<edge-domain>")
    ] = None,
    mesh_endpoint: Annotated[
        str | None,
        typer.Option(
            help="join the WireGuard mesh: ADDRESS:PORT hosts and `hangar wireguard` peers "
            "reach this one at"
        ),
    ] = None,
    mesh_port: Annotated[int | None, typer.Option(help="WireGuard's UDP listening port")] = None,
    volume_backend: Annotated[
        str | None,
        typer.Option(
            help="how volumes are encrypted here: auto (LUKS2 where the kernel has "
            "device-mapper, else gocryptfs), luks2 or gocryptfs"
        ),
    ] = None,
    metrics_listen_host: Annotated[
        str | None,
        typer.Option(help="loopback address for Prometheus metrics (default 127.0.0.1)"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="port for Prometheus metrics at /metrics (default 9464; 0: none)"),
    ] = None,
) -> None:
    """Run the control plane (API, deployer, ACME issuer), this host's agent and its edge.

    The edge is HAProxy: HTTPS on --edge-https-port (443) and HTTP on
    --edge-http-port (80), which redirects to HTTPS and answers ACME
    challenges. Runs until interrupted; machines and the edge keep running
    and are adopted by the next start.
    """
    from hangar.server.serve import serve

    settings = server_settings(
        data_dir,
        config,
        database_url=database_url,
        kek_file=kek_file,
        kek_provider=kek_provider,
        listen_host=listen_host,
        listen_port=listen_port,
        agent_listen_port=agent_listen_port,
        log_level=log_level,
        log_format=log_format,
        agent=agent,
        agent_dir=agent_dir,
        edge=edge,
        edge_listen_host=edge_listen_host,
        edge_http_port=edge_http_port,
        edge_https_port=edge_https_port,
        edge_domain=edge_domain,
        mesh_endpoint=mesh_endpoint,
        mesh_port=mesh_port,
        volume_backend=volume_backend,
        metrics_listen_host=metrics_listen_host,
        metrics_port=metrics_port,
    )
    serve(settings)


@app.command("rotate-kek")
def rotate_kek(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """A new key-encryption key, with every wrapped key re-wrapped under it, online.

    Asks the running server (installation operators only). The old KEK keeps
    unwrapping until everything is re-wrapped, and is then retired.
    """
    data = client(ctx).request("POST", "/v1/system/rotate-kek")
    if json_out:
        emit(data)
        return
    typer.echo(
        f"New key-encryption key {data['kek_id']}: {data['rewrapped']} wrapped keys re-wrapped;"
        f" retired {', '.join(data['retired']) or 'none'}."
    )


@app.command("metrics-cert")
def metrics_cert(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the scraper's name (e.g. its Prometheus's host)")],
    out: Annotated[
        Path, typer.Option("--out", help="directory for NAME.crt, NAME.key and ca.crt")
    ] = Path("."),
    days: Annotated[int, typer.Option(help="how long the certificate lasts (1 to 397 days)")] = 90,
    json_out: JsonOpt = False,
) -> None:
    """A client certificate for a Prometheus on another host to scrape metrics.

    It scrapes the metrics listener over mutual TLS (metrics_tls_port in
    server.toml).

    The key is made here and never leaves this machine; the server signs its
    request (installation operators only, audited as metrics.cert). Point
    Prometheus's tls_config at the three files: ca_file ca.crt, cert_file
    NAME.crt, key_file NAME.key. A certificate cannot be revoked: it expires,
    so keep --days short and issue a new one before then.
    """
    from hangar.crypto.hostcert import csr_for, new_host_key

    paths = {kind: out / f"{name}.{kind}" for kind in ("crt", "key")}
    taken = [str(p) for p in paths.values() if p.exists()]
    if taken:
        raise Conflict(
            f"{', '.join(taken)} already exists",
            hint="remove it, or pass --out with another directory",
        )
    key_pem = new_host_key()
    body = {"name": name, "csr": csr_for(key_pem, name).decode(), "days": days}
    data = client(ctx).request("POST", "/v1/system/metrics-certs", json=body)
    out.mkdir(parents=True, exist_ok=True)
    write_private(paths["key"], key_pem)
    paths["crt"].write_text(data["certificate"])
    (out / "ca.crt").write_text(data["ca_certificate"])
    result = {
        "name": name,
        "serial": data["serial"],
        "expires_at": data["expires_at"],
        "cert_file": str(paths["crt"]),
        "key_file": str(paths["key"]),
        "ca_file": str(out / "ca.crt"),
    }
    if json_out:
        emit(result)
        return
    typer.echo(
        f"Certificate for scraper {name} (serial {data['serial']}), valid until"
        f" {data['expires_at']}: {paths['crt']}, key {paths['key']}, CA {out / 'ca.crt'}."
    )


def _answering(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _local_holdings(settings: ServerSettings) -> Holdings:
    """This host's agent as the control plane knows it: its host id and address space."""
    from sqlalchemy import select

    from hangar.agent.teardown import Holdings
    from hangar.controlplane.machines import installation_prefix
    from hangar.controlplane.state import ControlPlane
    from hangar.store.tables import Host

    # The all-in-one host's name, as `server run` registers it.
    name = settings.host_name or socket.gethostname().split(".")[0].lower() or "local"
    cp = ControlPlane.open(settings, migrate=False)
    try:
        with cp.db.read() as session:
            host = session.execute(select(Host).where(Host.name == name)).scalar_one_or_none()
            prefix = installation_prefix(session)
    finally:
        cp.close()
    if host is None:
        raise NotFound(
            f"this installation has no host named {name!r}: `server run` never ran its agent",
            hint="pass the settings `server run` used (--data-dir, --config)",
        )
    return Holdings(settings.effective_agent_dir, host.id, prefix)


@app.command()
def stop(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    agent_dir: Annotated[
        Path | None,
        typer.Option(help="the agent's directory (default: DATA_DIR-agent)"),
    ] = None,
    yes: YesOpt = False,
) -> None:
    """Stop this host's machines and edge, and remove what they hold on the host.

    `server run` leaves machines and the edge running when it stops, so a
    restart adopts them. This is the way out: every machine stopped and
    removed, HAProxy stopped, the nftables table, the machines' interfaces,
    the mesh interface, the resolver's address and the tmpfs mounts removed.
    The apps stay as they are: the next `server run` starts their machines again.
    Stop the server first; asks before it starts (--yes to skip).
    """
    from hangar.agent.teardown import teardown

    settings = server_settings(data_dir, config, agent_dir=agent_dir)
    if _answering(settings.listen_host, settings.listen_port):
        raise Conflict(
            f"the server is running (it answers on {settings.listen_host}:"
            f"{settings.listen_port}), and would start the machines again",
            hint="stop it first: Ctrl-C, or `systemctl stop hangar-server`",
        )
    if os.geteuid() != 0:
        raise ConfigError("stopping machines and removing their network needs root")
    confirm(
        f"Stop every machine and the edge of {settings.effective_agent_dir}, and remove "
        "their firewall table, interfaces and mounts?",
        yes,
    )
    holdings = _local_holdings(settings)
    result = teardown(holdings)
    for what in result.removed:
        typer.echo(f"  removed {what}")
    if result.failed:
        raise HangarError(
            "could not remove: " + "; ".join(result.failed),
            hint="fix what is named, then run `hangar server stop` again",
        )
    typer.echo(
        "Nothing of Hangar runs on this host now." if result.removed else "Nothing was running."
    )


def _credential(user: str | None, s3: bool, region: str) -> Any:
    from hangar.cli.logsinks import _read_secret
    from hangar.controlplane.backups import RepoCredential

    if user is not None and s3:
        raise ValidationError("give --user (REST) or --s3 (S3), not both")
    if user is not None:
        return RepoCredential("basic", user, _read_secret("Password"))
    if s3:
        key_id = _read_secret("Access key id")
        return RepoCredential("s3", key_id, _read_secret("Secret access key"), region)
    return None


@app.command("backup-repo")
def backup_repo(
    url: Annotated[
        str,
        typer.Argument(
            help="rest:https://host/path, s3:https://host/bucket, sftp:user@host:/path, or an"
            " absolute path (another disk)"
        ),
    ],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    kek_file: KekOpt = None,
    kek_provider: ProviderOpt = None,
    user: Annotated[
        str | None,
        typer.Option("--user", help="rest: HTTP basic auth as this user; password from stdin"),
    ] = None,
    s3: Annotated[
        bool, typer.Option("--s3", help="s3: read the access key id, then the secret, from stdin")
    ] = False,
    region: Annotated[str, typer.Option("--region", help="s3: the bucket's region")] = "",
    keep_daily: Annotated[
        int, typer.Option("--keep-daily", min=0, max=366, help="daily backups kept")
    ] = 7,
    keep_weekly: Annotated[
        int, typer.Option("--keep-weekly", min=0, max=520, help="weekly backups kept")
    ] = 4,
    keep_monthly: Annotated[
        int, typer.Option("--keep-monthly", min=0, max=120, help="monthly backups kept")
    ] = 12,
    keep_last: Annotated[
        int, typer.Option("--keep-last", min=0, max=1000, help="also keep the newest N backups")
    ] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Choose the restic repository `hangar server backup` writes to (created if empty).

    Hangar generates the repository's password and keeps it, with the
    backend's credential (read from stdin, never the command line), wrapped
    by the KEK in DATA_DIR/backup-repo.json. Keep a copy of that file with
    kek.key, apart from the repository: together they open it, and a restore
    onto a new machine needs both. Run on the server's host, as the user
    that owns the data directory.
    """
    from hangar.backups.restic import Retention
    from hangar.controlplane.serverbackup import configure

    settings = server_settings(data_dir, config, kek_file=kek_file, kek_provider=kek_provider)
    credential = _credential(user, s3, region)
    retention = Retention(keep_daily, keep_weekly, keep_monthly, last=keep_last)
    location, created = configure(settings, url, credential=credential, retention=retention)
    if json_out:
        emit({"location": location, "created": created})
        return
    typer.echo(f"Server backups go to {location}{' (a new repository)' if created else ''}.")
    typer.echo(
        f"Keep {settings.data_dir / 'backup-repo.json'} and the KEK apart from the repository:"
        " a restore needs both."
    )


@app.command()
def backup(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    kek_file: KekOpt = None,
    kek_provider: ProviderOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Back up the store and the key files into the server's restic repository.

    A consistent copy of the store (SQLite's online backup, or pg_dump) while
    the server runs, with ca.crt, ca.key.wrapped, audit-signing.key.wrapped,
    audit-signing.pub, api.crt, api.key, server.toml and a manifest of their
    checksums; never kek.key. Old backups are forgotten and pruned per the
    repository's retention. Audited on the system chain. Run it from cron or
    a systemd timer (docs/backups.md).
    """
    from hangar.controlplane.serverbackup import server_backup
    from hangar.controlplane.state import ControlPlane

    settings = server_settings(
        data_dir, config, database_url=database_url, kek_file=kek_file, kek_provider=kek_provider
    )
    cp = ControlPlane.open(settings, migrate=False)
    shown = [-1]

    def progress(p: Any) -> None:
        percent = int(p.percent * 100)
        if not json_out and percent // 10 != shown[0]:
            shown[0] = percent // 10
            typer.echo(f"  {percent:3d}%  {p.bytes_done} of {p.bytes_total} bytes", err=True)

    try:
        result = server_backup(cp, progress=progress)
    finally:
        cp.close()
    if json_out:
        emit(vars(result))
        return
    typer.echo(
        f"Backup {result.snapshot_id}: {len(result.files)} files, {result.bytes_processed} bytes"
        f" ({result.bytes_added} new) in {result.seconds:.1f}s; keys wrapped by KEK"
        f" {result.kek_id}; {result.forgotten} old backup(s) forgotten."
    )


@app.command("backup-list")
def backup_list(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    kek_file: KekOpt = None,
    kek_provider: ProviderOpt = None,
    repo_config: Annotated[
        Path | None,
        typer.Option(
            "--repo-config", help="a kept copy of backup-repo.json (default: the data dir's)"
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """The server's backups in its repository, newest first."""
    from hangar.cli.output import listing
    from hangar.controlplane.serverbackup import list_server_backups

    settings = server_settings(data_dir, config, kek_file=kek_file, kek_provider=kek_provider)
    rows = [
        {"id": s.short_id, "full_id": s.id, "time": s.time, "host": s.hostname}
        for s in list_server_backups(settings, repo_config)
    ]
    listing(rows, [("id", "ID"), ("time", "TIME"), ("host", "HOST")], json_out)


@app.command()
def restore(
    repo_config: Annotated[
        Path,
        typer.Option(
            "--repo-config", help="the kept copy of backup-repo.json that opens the repository"
        ),
    ],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    kek_file: KekOpt = None,
    kek_provider: ProviderOpt = None,
    snapshot: Annotated[
        str, typer.Option("--backup", help="which backup (`hangar server backup-list`)")
    ] = "latest",
    json_out: JsonOpt = False,
) -> None:
    """Restore a server backup into a new, empty data directory.

    Give the KEK of the backup's time (--kek-file, or the provider's): a
    backup taken before a rotate-kek needs the older KEK. Every file is
    checked against the backup's manifest, and the KEK must unwrap the
    restored keys, before anything is put in place. Then run
    `hangar audit verify --data-dir DIR` and start the server.
    """
    from hangar.controlplane.serverbackup import server_restore

    if not repo_config.is_file():
        raise ConfigError(f"{repo_config} is not a file", hint="the kept copy of backup-repo.json")
    settings = server_settings(
        data_dir, config, database_url=database_url, kek_file=kek_file, kek_provider=kek_provider
    )
    if not json_out:
        typer.echo(f"Restoring {snapshot} into {settings.data_dir}…", err=True)
    result = server_restore(settings, repo_config, snapshot=snapshot)
    kept = settings.data_dir / "kek.key"
    if settings.kek_provider == "file" and not kept.exists():
        write_private(kept, settings.effective_kek_file.read_bytes())
    if json_out:
        emit(vars(result))
        return
    typer.echo(
        f"Restored backup {result.snapshot_id} of {result.created_at} ({result.database},"
        f" keys wrapped by KEK {result.kek_id}) into {settings.data_dir}."
    )
    typer.echo("Next:")
    typer.echo(f"  hangar audit verify --data-dir {settings.data_dir}")
    typer.echo(f"  hangar server run --data-dir {settings.data_dir}")

"""``hangar audit``: read and verify the tamper-evident audit trail."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer

from hangar.audit.chain import Checkpoint, Event, VerifyResult, verify_chain
from hangar.cli.common import JsonOpt, OrgOpt, client
from hangar.cli.output import emit, table
from hangar.crypto.signing import public_key_from_pem
from hangar.errors import ConfigError

app = typer.Typer(name="audit", help="The audit trail.", no_args_is_help=True)

SystemOpt = Annotated[
    bool, typer.Option("--system", help="the installation's own chain (operators)")
]


def _scope(org: str | None, system: bool) -> dict[str, Any]:
    return {"org": org, "system": "true" if system else None}


@app.command("list")
def list_(
    ctx: typer.Context,
    org: OrgOpt = None,
    system: SystemOpt = False,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-01-01T00:00:00Z")] = None,
    limit: Annotated[int, typer.Option(help="at most this many events")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """Audit events, oldest first."""
    if since is not None:
        try:
            dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError(f"--since {since!r} is not an ISO time") from exc
    page = client(ctx).get(
        "/v1/audit/events", since=since, limit=min(max(limit, 1), 1000), **_scope(org, system)
    )
    items = page["items"]
    if json_out:
        emit(items)
        return
    table(
        items,
        [
            ("seq", "SEQ"),
            ("time", "TIME"),
            ("actor", "ACTOR"),
            ("action", "ACTION"),
            ("target", "TARGET"),
            ("outcome", "OUTCOME"),
            ("client_addr", "FROM"),
        ],
    )


def _report(results: list[VerifyResult], json_out: bool) -> None:
    if json_out:
        emit([r.as_dict() for r in results])
    for r in results:
        if json_out:
            break
        if r.ok:
            typer.echo(
                f"ok      chain {r.chain}: {r.events} events, {r.checkpoints} signed checkpoints"
            )
        else:
            typer.echo(f"FAILED  chain {r.chain}: first bad event {r.first_bad_seq}: {r.reason}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command()
def verify(
    ctx: typer.Context,
    org: OrgOpt = None,
    system: SystemOpt = False,
    public_key: Annotated[
        Path | None,
        typer.Option(help="verify against this pinned public key (PEM) instead of the server's"),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="verify every chain straight from a server's store (on the server host)"),
    ] = None,
    database_url: Annotated[str | None, typer.Option(help="with --data-dir: the store")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the hash chain and signed checkpoints; exit 1 naming the first bad event.

    Through the API the events are fetched and checked here, on this machine.
    """
    if data_dir is not None:
        _report(_verify_offline(data_dir, database_url, public_key), json_out)
        return
    api = client(ctx)
    scope = _scope(org, system)
    pem = public_key.read_bytes() if public_key else api.get("/v1/audit/public-key").encode()
    events = [
        Event(**{k: v for k, v in e.items()})
        for e in api.paged("/v1/audit/events", limit=1000, **scope)
    ]
    checkpoints = [Checkpoint(**c) for c in api.get("/v1/audit/checkpoints", **scope)]
    chain = events[0].chain if events else (checkpoints[0].chain if checkpoints else "-")
    _report([verify_chain(chain, events, checkpoints, public_key_from_pem(pem))], json_out)


def _verify_offline(
    data_dir: Path, database_url: str | None, public_key: Path | None
) -> list[VerifyResult]:
    from hangar.audit.log import chains, verify_stored_chain
    from hangar.cli.server import server_settings
    from hangar.store.db import Database

    settings = server_settings(data_dir, None, database_url=database_url)
    key_path = public_key or data_dir / "audit-signing.pub"
    if not key_path.exists():
        raise ConfigError(f"no audit public key at {key_path}")
    key = public_key_from_pem(key_path.read_bytes())
    db = Database(settings.effective_database_url)
    try:
        with db.read() as session:
            return [verify_stored_chain(session, c, key) for c in chains(session)]
    finally:
        db.dispose()

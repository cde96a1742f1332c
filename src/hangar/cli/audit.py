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


def _report(
    results: list[VerifyResult], json_out: bool, names: dict[str, str] | None = None
) -> None:
    names = names or {}
    if json_out:
        emit([{**r.as_dict(), "name": names.get(r.chain)} for r in results])
    for r in results:
        if json_out:
            break
        named = f" (organization {names[r.chain]})" if r.chain in names else ""
        if r.ok:
            seen = f", {r.witnessed} witnessed" if r.witnessed else ""
            typer.echo(
                f"ok      chain {r.chain}: {r.events} events, "
                f"{r.checkpoints} signed checkpoints{seen}{named}"
            )
        elif r.first_bad_seq is None:
            typer.echo(f"FAILED  chain {r.chain}: {r.reason}{named}")
        else:
            typer.echo(
                f"FAILED  chain {r.chain}: first bad event {r.first_bad_seq}: {r.reason}{named}"
            )
    if not all(r.ok for r in results):
        raise typer.Exit(1)


WitnessOpt = Annotated[
    Path | None,
    typer.Option(
        "--witness",
        help="a witness file of checkpoints (or a syslog file that received them): "
        "fail if a chain is shorter than what it saw, or missing",
    ),
]


def _read_witness(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read the witness {path}: {exc.strerror}") from exc


def _witness_of(
    paths: list[Path], key: Any
) -> tuple[dict[str, list[Checkpoint]], list[VerifyResult]]:
    from hangar.audit.witness import check_witness

    seen: dict[str, list[Checkpoint]] = {}
    failures: list[VerifyResult] = []
    for path in paths:
        found, bad = check_witness(_read_witness(path), key, source=str(path))
        for chain, checkpoints in found.items():
            seen.setdefault(chain, []).extend(checkpoints)
        failures += bad
    return seen, failures


def _configured_witness_files(urls: list[str]) -> list[Path]:
    from hangar.audit.witness import parse_witness_url

    targets = [parse_witness_url(u) for u in urls]
    return [t.path for t in targets if t.scheme == "file" and t.path is not None]


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
    witness: WitnessOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the hash chain and signed checkpoints; exit 1 naming the first bad event.

    Through the API the events are fetched and checked here, on this machine.
    With --witness, each chain must still reach the newest checkpoint the
    witness recorded for it (a chain it saw that is gone entirely fails by
    name), and a witness line whose signature does not verify is reported.
    With --data-dir and no --witness, the witness files the server's settings
    name (audit_witness) are used.
    """
    if data_dir is not None:
        results, names = _verify_offline(data_dir, database_url, public_key, witness)
        _report(results, json_out, names)
        return
    api = client(ctx)
    scope = _scope(org, system)
    pem = public_key.read_bytes() if public_key else api.get("/v1/audit/public-key").encode()
    key = public_key_from_pem(pem)
    events = [
        Event(**{k: v for k, v in e.items()})
        for e in api.paged("/v1/audit/events", limit=1000, **scope)
    ]
    checkpoints = [Checkpoint(**c) for c in api.get("/v1/audit/checkpoints", **scope)]
    chain = events[0].chain if events else (checkpoints[0].chain if checkpoints else "-")
    if witness is not None and chain == "-":
        chain = _chain_id(api, org, system)
    seen, failures = _witness_of([witness] if witness is not None else [], key)
    mine = [f for f in failures if f.chain in (chain, str(witness))]
    result = verify_chain(chain, events, checkpoints, key, seen.get(chain, []))
    _report([result, *mine], json_out)


def _chain_id(api: Any, org: str | None, system: bool) -> str:
    """The id of the chain asked for, when the server returned nothing of it."""
    if system:
        return "system"
    if org is not None:
        return str(api.get(f"/v1/orgs/{org}")["id"])
    mine = api.paged("/v1/orgs")
    if len(mine) != 1:
        raise ConfigError("say which organization's audit trail", hint="pass --org NAME")
    return str(mine[0]["id"])


def _verify_offline(
    data_dir: Path, database_url: str | None, public_key: Path | None, witness: Path | None
) -> tuple[list[VerifyResult], dict[str, str]]:
    from sqlalchemy import select

    from hangar.audit.log import chains, iter_events, load_checkpoints
    from hangar.cli.server import server_settings
    from hangar.store.db import Database
    from hangar.store.tables import Org

    settings = server_settings(data_dir, None, database_url=database_url)
    key_path = public_key or data_dir / "audit-signing.pub"
    if not key_path.exists():
        raise ConfigError(f"no audit public key at {key_path}")
    key = public_key_from_pem(key_path.read_bytes())
    paths = [witness] if witness is not None else _configured_witness_files(settings.audit_witness)
    for path in paths:
        typer.echo(f"checking against the witness {path}", err=True)
    seen, failures = _witness_of(paths, key)
    db = Database(settings.effective_database_url)
    try:
        with db.read() as session:
            names = {o.id: o.name for o in session.execute(select(Org)).scalars()}
            results = [
                verify_chain(
                    c,
                    iter_events(session, c),
                    load_checkpoints(session, c),
                    key,
                    seen.get(c, []),
                )
                for c in sorted(set(chains(session)) | set(seen))
            ]
    finally:
        db.dispose()
    return results + failures, names

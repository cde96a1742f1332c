"""``hangar certs``: the host names an app answers on, and their certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hangar.cli.common import AppOpt, JsonOpt, YesOpt, app_name, client
from hangar.cli.output import confirm, emit, listing
from hangar.errors import ConfigError

app = typer.Typer(
    name="certs",
    help="Host names and TLS certificates at the edge: add (ACME), import, list, show, remove.",
    no_args_is_help=True,
)
HostArg = Annotated[str, typer.Argument(help="host name, e.g. clinic.example.com")]


COLUMNS = [
    ("hostname", "HOST NAME"),
    ("source", "SOURCE"),
    ("status", "STATUS"),
    ("not_after", "EXPIRES"),
    ("last_error", "LAST ERROR"),
]


def _show(data: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit(data)
        return
    rows = [
        ("Host name", data["hostname"]),
        ("App", data["app"]),
        ("Source", data["source"]),
        ("Status", data["status"]),
        ("Progress", data["detail"] or "-"),
        ("Last error", data["last_error"] or "-"),
        ("Attempts", data["attempts"]),
        ("Next attempt", data["next_attempt_at"] or "-"),
        ("Order", data["order_url"] or "-"),
        ("Issuer", data["issuer"] or "-"),
        ("Names", ", ".join(data["names"]) or "-"),
        ("Valid", f"{data['not_before'] or '-'} to {data['not_after'] or '-'}"),
        ("Renews at", data["renew_at"] or "-"),
        ("Fingerprint", data["fingerprint"] or "-"),
        ("DNS", data["dns"]),
        ("Held", "yes: control proven" if data.get("proven") else "no: control not proven yet"),
    ]
    if data.get("proof"):
        rows.append(("Proof", f"{data['proof']}, then `hangar certs verify {data['hostname']}`"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key.ljust(width)}  {value}")


@app.command()
def add(
    ctx: typer.Context, hostname: HostArg, app_: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """Answer on HOSTNAME and order its certificate from the ACME server.

    The order runs in the background: point the name's DNS at the edge,
    then follow it with `hangar certs show HOSTNAME`.
    """
    data = client(ctx).request(
        "POST", f"/v1/apps/{app_name(app_)}/certs", json={"hostname": hostname}
    )
    if json_out:
        emit(data)
        return
    typer.echo(f"Added {data['hostname']} to {data['app']}; its certificate is being ordered.")
    typer.echo(f"DNS: {data['dns']}.")
    typer.echo(f"Follow it with `hangar certs show {data['hostname']} --app {data['app']}`.")


@app.command("list")
def list_(ctx: typer.Context, app_: AppOpt = None, json_out: JsonOpt = False) -> None:
    """The app's host names: source, status, expiry."""
    items = client(ctx).get(f"/v1/apps/{app_name(app_)}/certs")
    listing(items, COLUMNS, json_out)


@app.command()
def show(
    ctx: typer.Context, hostname: HostArg, app_: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """One host name: its order's progress, errors, and the certificate."""
    _show(client(ctx).get(f"/v1/apps/{app_name(app_)}/certs/{hostname}"), json_out)


@app.command()
def check(
    ctx: typer.Context, hostname: HostArg, app_: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """Try a pending or failed order again now (after fixing DNS, say) and show it."""
    _show(
        client(ctx).request("POST", f"/v1/apps/{app_name(app_)}/certs/{hostname}/check"), json_out
    )


@app.command()
def verify(
    ctx: typer.Context, hostname: HostArg, app_: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """Prove control of HOSTNAME by its DNS TXT record (`hangar certs show` names it).

    An imported certificate, a wildcard, or a name another app also claims
    is served only once its TXT record is found.
    """
    _show(
        client(ctx).request("POST", f"/v1/apps/{app_name(app_)}/certs/{hostname}/verify"),
        json_out,
    )


@app.command()
def renew(
    ctx: typer.Context, hostname: HostArg, app_: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """Renew an ACME certificate now, with a new key (after a suspected key leak, say).

    Certificates renew on their own two thirds into their lifetime.
    """
    data = client(ctx).request("POST", f"/v1/apps/{app_name(app_)}/certs/{hostname}/renew")
    if json_out:
        emit(data)
    else:
        typer.echo(f"Renewal of {data['hostname']} requested: `hangar certs show` to follow it.")


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from exc


@app.command("import")
def import_(
    ctx: typer.Context,
    hostname: HostArg,
    fullchain: Annotated[
        Path, typer.Option("--fullchain", help="PEM: the certificate, then its intermediates")
    ],
    private_key: Annotated[Path, typer.Option("--private-key", help="PEM: its private key")],
    app_: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Serve a certificate you bring (checked: names HOSTNAME, valid now, matches the key).

    The key is stored wrapped by the installation's key-encryption key and is
    never shown again.
    """
    body = {
        "fullchain": _read(fullchain, "certificate chain"),
        "private_key": _read(private_key, "private key"),
    }
    data = client(ctx).request("PUT", f"/v1/apps/{app_name(app_)}/certs/{hostname}", json=body)
    if json_out:
        emit(data)
        return
    typer.echo(f"Imported a certificate for {data['hostname']} (expires {data['not_after']}).")


@app.command()
def remove(ctx: typer.Context, hostname: HostArg, app_: AppOpt = None, yes: YesOpt = False) -> None:
    """Stop answering on HOSTNAME and forget its certificate."""
    name = app_name(app_)
    confirm(f"Remove {hostname} from {name}? The edge stops answering on it.", yes)
    client(ctx).request("DELETE", f"/v1/apps/{name}/certs/{hostname}")
    typer.echo(f"Removed {hostname}.")

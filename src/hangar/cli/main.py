"""``hangar``: the command line. Errors are printed here, once."""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import click
import typer

import hangar
from hangar.cli import (
    agent,
    apps,
    audit,
    auth,
    certs,
    config,
    deploy,
    edge,
    hosts,
    logs,
    machines,
    orgs,
    releases,
    secrets,
    server,
    status,
    tokens,
    wireguard,
)
from hangar.cli.output import print_error
from hangar.errors import HangarError

app = typer.Typer(
    name="hangar",
    help="Hangar: run apps from container images as isolated machines, securely.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for module in (
    server,
    agent,
    auth,
    orgs,
    apps,
    secrets,
    certs,
    machines,
    hosts,
    edge,
    tokens,
    wireguard,
    audit,
    config,
):
    app.add_typer(module.app)
app.command()(deploy.deploy)
app.command()(releases.releases)
app.command()(status.status)
app.command()(logs.logs)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hangar {hangar.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    api: Annotated[
        str | None,
        typer.Option(
            "--api", help="API URL (default: from `hangar auth login`, or $HANGAR_API_URL)"
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    ctx.obj = {"client_flags": {"api_url": api}, "debug": debug}


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    try:
        result = app(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except HangarError as exc:
        if debug:
            traceback.print_exc()
        print_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()

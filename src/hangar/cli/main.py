"""``hangar``: the command line. Errors are printed here, once."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Annotated

import click
import typer
import typer._click.exceptions as typer_click
from typer._click.core import Command as TyperCommand

import hangar
from hangar.cli import (
    agent,
    apps,
    audit,
    auth,
    backups,
    certs,
    config,
    deploy,
    edge,
    hosts,
    idps,
    logs,
    machines,
    metrics,
    orgs,
    releases,
    secrets,
    server,
    status,
    tokens,
    users,
    volumes,
    wireguard,
)
from hangar.cli.output import print_error
from hangar.errors import HangarError

# Typer parses with its own bundled copy of Click, whose exceptions are not
# Click's: catch both, so a usage mistake never reaches the user as a traceback.
USAGE_ERRORS = (click.UsageError, typer_click.UsageError)
CLICK_ERRORS = (click.ClickException, typer_click.ClickException)
EXITS = (click.exceptions.Exit, typer.Exit)
ABORTS = (click.exceptions.Abort, typer.Abort)
USAGE_EXIT = 2

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
    volumes,
    certs,
    machines,
    hosts,
    edge,
    tokens,
    wireguard,
    idps,
    users,
    audit,
    config,
    logs,
    releases,
    backups,
):
    app.add_typer(module.app)
app.command()(deploy.deploy)
app.command()(status.status)
app.command()(metrics.metrics)


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


def _command_for(args: Sequence[str]) -> tuple[TyperCommand, str]:
    """The deepest command ``args`` name, and its path: a parse error may lack its context."""
    command: TyperCommand = typer.main.get_command(app)
    names = ["hangar"]
    for arg in args:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            break  # a leaf: the rest are its own arguments
        if arg in subcommands:
            command, names = subcommands[arg], [*names, arg]
    return command, " ".join(names)


def _show_usage_error(exc: click.UsageError | typer_click.UsageError, args: Sequence[str]) -> None:
    """One line for the mistake, one for what helps: Click's own form is five."""
    if isinstance(exc, typer_click.NoArgsIsHelpError):
        typer.echo(exc.format_message())  # a bare group: its help is the answer
        return
    # pydantic, which converts typed options, prefixes its reason with "Value error, ".
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    if exc.ctx is not None:
        command, path = exc.ctx.command, exc.ctx.command_path
    else:
        command, path = _command_for(args)
    typer.echo(f"error: {message}", err=True)
    takes_a_command = any(p.name in ("command", "cmd") and p.nargs == -1 for p in command.params)
    if takes_a_command and "option" in message:
        typer.echo(f"hint: put the machine's command after `--`; see `{path} --help`", err=True)
    else:
        typer.echo(f"hint: run `{path} --help` for its usage", err=True)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: the process's) and return its exit code.

    Every error is printed here, once: usage mistakes (exit 2) and HangarErrors
    (their exit code) as ``error: …`` and ``hint: …`` lines; a traceback only
    with ``--debug``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="hangar", standalone_mode=False)
    except USAGE_ERRORS as exc:
        _show_usage_error(exc, args)
        return USAGE_EXIT
    except EXITS as exc:
        return int(exc.exit_code)
    except CLICK_ERRORS as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        return int(exc.exit_code)
    except ABORTS:
        typer.echo("aborted", err=True)
        return 130
    except HangarError as exc:
        if debug:
            traceback.print_exc()
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()

"""``hangar config``: check a hangar.toml before deploying it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hangar.cli.common import JsonOpt
from hangar.cli.output import emit
from hangar.config.appconfig import load_app_config
from hangar.errors import ConfigError

app = typer.Typer(name="config", help="App configuration (hangar.toml).", no_args_is_help=True)


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="the file to check")] = Path("hangar.toml"),
    json_out: JsonOpt = False,
) -> None:
    """Parse and validate hangar.toml; errors name the line and the key."""
    if not path.is_file():
        raise ConfigError(
            f"cannot read {path}: no such file",
            hint="name the file: `hangar config validate PATH` (default ./hangar.toml)",
        )
    cfg = load_app_config(path)
    if json_out:
        emit(cfg.model_dump(mode="json"))
    else:
        typer.echo(f"{path} is valid (app {cfg.app}).")


@app.command()
def reference() -> None:
    """Print every hangar.toml key with its type, range, default and effect (docs/config.md).

    Generated from the schema: `hangar config reference > docs/config.md`.
    """
    from hangar.cli.config_reference import reference as render

    typer.echo(render(), nl=False)

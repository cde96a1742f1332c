"""Printing results: aligned tables for people, JSON for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer

from hangar.errors import HangarError, ValidationError

__all__ = ["confirm", "emit", "fields", "listing", "print_error", "table"]


def emit(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Print ``rows`` with ``columns`` as (key, HEADER) pairs."""
    if not rows:
        typer.echo("(none)")
        return
    cells = [[h for _, h in columns]]
    for row in rows:
        cells.append(["-" if row.get(k) is None else str(row.get(k)) for k, _ in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for line in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def listing(
    items: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], json_out: bool
) -> None:
    """A listing: JSON for programs, a table for people."""
    if json_out:
        emit(items)
    else:
        table(items, columns)


def fields(data: dict[str, Any], keys: Sequence[str], json_out: bool, *, width: int) -> None:
    """One object: JSON for programs, ``key value`` lines for people."""
    if json_out:
        emit(data)
        return
    for key in keys:
        typer.echo(f"{key:<{width}}{data.get(key)}")


def print_error(exc: HangarError) -> None:
    typer.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        typer.echo(f"hint: {exc.hint}", err=True)


def confirm(question: str, yes: bool) -> None:
    """Ask before destroying; refuse without --yes when no one is at the keyboard."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ValidationError(f"{question} Refusing without --yes: no one is at the keyboard.")
    if not typer.confirm(question, default=False):
        raise typer.Abort()

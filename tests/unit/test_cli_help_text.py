"""What a command's help says reaches the reader: every --help renders; brackets in
help texts (`[[mounts]]`, `bucket[/prefix]`, `[build] image`) are not eaten as markup,
and each command's summary in its group's list is one line, not a sentence broken
where the source was."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from hangar.cli.main import app

ROOT = typer.main.get_command(app)


def _leaves(command: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return [(path, command)]
    out = [(path, command)]
    for name, sub in sorted(subcommands.items()):
        out += _leaves(sub, (*path, name))
    return out


EVERY = _leaves(ROOT, ())[1:]
LEAVES = EVERY
GROUPS = sorted(name for name, c in ROOT.commands.items() if hasattr(c, "commands"))  # type: ignore[attr-defined]


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("path", [p for p, _ in EVERY], ids=[" ".join(p) for p, _ in EVERY])
def test_every_help_renders(path: tuple[str, ...]) -> None:
    # A bracket read as markup (`bucket[/prefix]`) made --help a traceback.
    shown = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert shown.exit_code == 0 and shown.exception is None, shown.output
    assert "Usage:" in shown.output


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_brackets_in_help_texts_are_shown(path: tuple[str, ...], command: Any) -> None:
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    # A backslash before a bracket escapes it from the markup: the reader sees the bracket.
    wanted = [_flat(m.replace("\\[", "[")) for t in texts for m in re.findall(r"\[[^\]\n]*\]+", t)]
    shown = CliRunner().invoke(app, [*path, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    flat = _flat(shown.output)
    for text in wanted:
        assert text in flat, f"{' '.join(path)} --help lost {text!r}"


@pytest.mark.parametrize("group", GROUPS)
def test_each_commands_summary_is_one_line(group: str) -> None:
    for path, command in _leaves(ROOT.commands[group], (group,)):  # type: ignore[attr-defined]
        first = (command.help or "").strip().split("\n\n")[0]
        assert "\n" not in first, f"{' '.join(path)}: its summary spans lines: {first!r}"

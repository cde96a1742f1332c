"""``hangar volumes``: every command explains itself and answers in JSON."""

from __future__ import annotations

import typer.main

from hangar.cli.volumes import app


def test_every_volumes_command_has_help_and_json() -> None:
    group = typer.main.get_group(app)
    assert set(group.commands) == {"create", "list", "show", "extend", "destroy"}
    for name, command in group.commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert "--json" in options, name
        assert command.help and len(command.help) > 10, name

"""``hangar volumes``: every command explains itself and answers in JSON."""

from __future__ import annotations

import typer.main

from hangar.cli.volumes import app


def test_every_volumes_command_has_help_and_json() -> None:
    group = typer.main.get_group(app)
    core = {"create", "list", "show", "extend", "destroy"}
    assert core <= set(group.commands)
    for name in sorted(core):
        command = group.commands[name]
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert "--json" in options, name
        assert command.help and len(command.help) > 10, name

"""Every usage mistake, on every command, is two lines and exit code 2: never a traceback.

The walk introspects the Typer app, so a command added later is covered
without editing this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import typer

from hangar.cli.main import app, run

ROOT = typer.main.get_command(app)
# An option of one of these types takes any word, so no value of it is malformed.
FREE_TEXT = (str, Path, bool)


def _leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name, sub in sorted(subcommands.items()):
        yield from _leaves(sub, (*path, name))


LEAVES = list(_leaves(ROOT))
IDS = [" ".join(path) for path, _ in LEAVES]


def _annotation(param: Any) -> Any:
    """The parameter's Python type, with ``X | None`` unwrapped."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", str)
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def _parser(param: Any) -> Any:
    info = getattr(getattr(param, "type_descriptor", None), "parameter_info", None)
    return getattr(info, "parser", None)


def _typed(param: Any) -> bool:
    """An option whose value is checked: a number, a duration, a choice."""
    if getattr(param, "param_type_name", "") != "option" or getattr(param, "is_flag", False):
        return False
    annotation = _annotation(param)
    return _parser(param) is not None or not (
        annotation in FREE_TEXT or get_origin(annotation) is list
    )


def _filled(command: Any) -> list[str]:
    """Plausible values for every required parameter, so only the one under test is wrong."""
    args: list[str] = []
    for param in command.params:
        if not param.required:
            continue
        value = "1" if _annotation(param) in (int, float) else "x"
        if param.param_type_name == "option":
            args += [param.opts[0], value]
        else:
            args.append(value)
    return args


def _assert_usage_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run ``args``; check the two-line form and exit code 2; return the error line."""
    return _usage_lines(capsys, args)[0]


def _usage_lines(capsys: pytest.CaptureFixture[str], args: list[str]) -> list[str]:
    code = run(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, args
    assert code == 2, (args, code, out, err)
    lines = err.splitlines()
    assert len(lines) == 2, (args, err)
    assert lines[0].startswith("error: "), (args, err)
    assert lines[1].startswith("hint: ") and "`hangar" in lines[1], (args, err)
    return lines


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=IDS)
def test_an_unknown_option_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], path: tuple[str, ...], command: Any
) -> None:
    line = _assert_usage_error(capsys, [*path, "--no-such-option"])
    assert "--no-such-option" in line


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=IDS)
def test_a_missing_argument_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], path: tuple[str, ...], command: Any
) -> None:
    required = [p for p in command.params if p.required]
    if not required:
        pytest.skip("every parameter of this command is optional")
    line = _assert_usage_error(capsys, list(path))
    assert "Missing" in line


TYPED = [
    (path, command, param) for path, command in LEAVES for param in command.params if _typed(param)
]


@pytest.mark.parametrize(
    ("path", "command", "param"),
    TYPED,
    ids=[f"{' '.join(path)} {param.opts[0]}" for path, _, param in TYPED],
)
def test_a_malformed_value_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], path: tuple[str, ...], command: Any, param: Any
) -> None:
    line = _assert_usage_error(capsys, [*path, *_filled(command), param.opts[0], "10x"])
    assert param.opts[0] in line


def test_the_walk_covers_the_durations_and_numbers_users_mistype() -> None:
    covered = {(*path, param.opts[0]) for path, _, param in TYPED}
    assert ("machines", "stop", "--timeout") in covered
    assert ("machines", "wait", "--timeout") in covered
    assert ("hosts", "join-token", "--expires") in covered
    assert ("server", "run", "--listen-port") in covered
    assert len(LEAVES) > 60


@pytest.mark.parametrize("args", [["nosuch"], ["apps", "nosuch"]])
def test_an_unknown_command_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert "No such command" in _assert_usage_error(capsys, args)


def test_a_group_without_a_command_shows_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["apps"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "create" in out


def test_a_machine_command_without_its_separator_says_where_it_goes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    error, hint = _usage_lines(capsys, ["machines", "exec", "m_1", "ls", "-la"])
    assert "No such option" in error
    assert hint == "hint: put the machine's command after `--`; see `hangar machines exec --help`"


def test_a_runtime_error_keeps_exit_1_and_its_one_line_form(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["apps", "list"]) == 1
    _, err = capsys.readouterr()
    assert err.splitlines() == [
        "error: you are not logged in",
        "hint: run `hangar auth login --api URL` (or with --token TOKEN)",
    ]


def test_a_refused_question_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No terminal here: destroying without --yes refuses before it asks.
    assert run(["apps", "destroy", "web"]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("error: ") and "--yes" in err and "Traceback" not in err


def test_the_installed_command_prints_two_lines(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env["HANGAR_CONFIG_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "hangar.cli.main", "machines", "stop", "m_1", "--timeout", "10x"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: Invalid value for '--timeout': invalid duration '10x'; "
        "write e.g. '500ms', '10s', '2m'",
        "hint: run `hangar machines stop --help` for its usage",
    ]

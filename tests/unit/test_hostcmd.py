"""The one host-command wrapper: every failure is a CommandError naming the command."""

from __future__ import annotations

import sys

import pytest

from hangar import hostcmd
from hangar.errors import CommandError


def test_run_names_the_command_and_its_stderr() -> None:
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('bad input'); sys.exit(4)"]
    with pytest.raises(CommandError) as caught:
        hostcmd.run(argv)
    assert caught.value.returncode == 4 and "bad input" in caught.value.message
    assert caught.value.argv == argv


def test_start_returns_the_running_process_with_its_pipes() -> None:
    proc = hostcmd.start(
        [sys.executable, "-c", "print('out'); import sys; print('err', file=sys.stderr)"]
    )
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (0, b"out\n", b"err\n")


def test_start_of_a_missing_command_is_a_command_error() -> None:
    with pytest.raises(CommandError) as caught:
        hostcmd.start(["hangar-no-such-command"])
    assert caught.value.returncode == 127
    assert "hangar-no-such-command is not installed" in caught.value.message

"""The one way Hangar runs a host command.

``agent/runtimes``, ``agent/volumes``, ``net/`` and ``edge/`` call ``run`` so
that a failed command always becomes a ``CommandError`` naming the command and
its stderr, and no caller forgets to check an exit code. ``start`` is for the
few callers that must read a command's output while it runs (the machine
shim pumping runc's output into its log); it fails the same way when the
command cannot be started. This is the only module that imports
``subprocess``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import IO

from hangar.errors import CommandError

__all__ = ["DEVNULL", "PIPE", "Completed", "Process", "run", "start"]

DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE

Completed = subprocess.CompletedProcess[bytes]
"""A finished command: ``returncode``, ``stdout`` and ``stderr`` (bytes, or None)."""

Process = subprocess.Popen[bytes]
"""A running command, as ``start`` returns it."""

Stream = int | IO[bytes] | None


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    stdout: Stream = PIPE,
    stderr: Stream = PIPE,
    pass_fds: Sequence[int] = (),
    cwd: str | None = None,
) -> Completed:
    """Run ``argv`` (never through a shell); raise CommandError if it fails."""
    args = list(argv)
    try:
        result = subprocess.run(
            args,
            input=input,
            stdout=stdout,
            stderr=stderr,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
            pass_fds=tuple(pass_fds),
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(args, -1, f"timed out after {timeout:g}s") from exc
    if check and result.returncode != 0:
        stderr_text = (result.stderr or b"").decode(errors="replace")
        raise CommandError(args, result.returncode, stderr_text)
    return result


def start(
    argv: Sequence[str],
    *,
    stdin: Stream = DEVNULL,
    stdout: Stream = PIPE,
    stderr: Stream = PIPE,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Process:
    """Start ``argv`` (never through a shell) and return it running.

    The caller owns the process: it reads its pipes and waits for it. Raises
    CommandError if the command is not installed.
    """
    args = list(argv)
    try:
        return subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]} is not installed") from exc

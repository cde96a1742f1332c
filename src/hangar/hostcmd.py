"""The one way Hangar runs a host command.

``agent/runtimes``, ``agent/volumes``, ``net/`` and ``edge/`` call ``run`` so
that a failed command always becomes a ``CommandError`` naming the command and
its stderr, and no caller forgets to check an exit code.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import IO

from hangar.errors import CommandError

__all__ = ["run"]


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    stderr: int | IO[bytes] | None = subprocess.PIPE,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[bytes]:
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
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(args, -1, f"timed out after {timeout:g}s") from exc
    if check and result.returncode != 0:
        stderr_text = (result.stderr or b"").decode(errors="replace")
        raise CommandError(args, result.returncode, stderr_text)
    return result

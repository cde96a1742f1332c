"""The host's filesystem, the careful way: private files and private tmpfs mounts.

Beside ``hostcmd`` (the one way to run a host command), this is the one way
Hangar writes a file only root may read, and mounts the 0700 tmpfs that holds
what must never reach a disk (runc bundles with secrets, the edge's keys).
"""

from __future__ import annotations

import os
from pathlib import Path

from hangar import hostcmd

__all__ = ["ensure_private_tmpfs", "write_private"]


def write_private(
    path: Path,
    data: bytes | str,
    *,
    mode: int = 0o600,
    exclusive: bool = False,
    atomic: bool = False,
) -> None:
    """Write ``data`` to ``path`` with ``mode``, never briefly readable by others.

    ``exclusive`` refuses to replace an existing file (``FileExistsError``);
    ``atomic`` writes a sibling, fsyncs it and renames it over ``path``, so a
    reader sees the old file or the new one, never half of either. The mode is
    set on creation and again after, so a file that existed with a looser mode
    is tightened.
    """
    raw = data.encode() if isinstance(data, str) else data
    target = path.with_name(path.name + ".new") if atomic else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
    flags |= os.O_EXCL if exclusive or atomic else os.O_TRUNC
    if atomic:
        target.unlink(missing_ok=True)
    fd = os.open(target, flags, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            if atomic:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        if atomic:
            target.unlink(missing_ok=True)
        raise
    if atomic:
        os.replace(target, path)


def ensure_private_tmpfs(path: Path, size_mb: int = 64) -> None:
    """Mount a 0700 tmpfs at ``path`` unless one is already there."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(path.resolve()) and fields[2] == "tmpfs":
                return
    hostcmd.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"mode=0700,nosuid,nodev,noexec,size={size_mb}m",
            "tmpfs",
            str(path),
        ]
    )

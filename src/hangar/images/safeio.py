"""Reading files an image brings, without letting them reach anything else.

Layouts and root filesystems hold what a tenant sent. Whatever they contain,
reading them must not follow a link out of their directory, block on a FIFO,
open a device, or run on without end: ``open_regular`` is the one way in.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from hangar.errors import IntegrityError, NotFound

__all__ = [
    "MAX_BLOB",
    "MAX_JSON_BLOB",
    "VerifyingReader",
    "digest_hex",
    "open_regular",
    "read_small",
]

MAX_JSON_BLOB = 4 << 20
MAX_BLOB = 16 << 30

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for
# a writer, so fstat can refuse it; O_NOCTTY: a terminal never becomes ours.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_regular(root: Path, parts: Iterable[str], *, max_size: int) -> IO[bytes]:
    """A regular file ``root/parts…`` opened for reading, never leaving ``root``.

    Every component below ``root`` (and ``root``'s own last component) is
    opened without following symlinks, so a link anywhere is an error rather
    than a way out. The file must be a regular file (not a FIFO, device,
    socket or directory) of at most ``max_size`` bytes: reading it can neither
    block nor run on. Raises NotFound if it is missing, IntegrityError otherwise.
    """
    names = list(parts)
    if not names or any(n in ("", ".", "..") or "/" in n for n in names):
        raise IntegrityError(f"{'/'.join(names)!r} is not a plain relative path")
    where = "/".join(names)
    try:
        fd = os.open(root, _DIR_FLAGS)
        try:
            for name in names[:-1]:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            leaf = os.open(names[-1], _FILE_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
    except FileNotFoundError as exc:
        raise NotFound(f"{root} has no {where}") from exc
    except OSError as exc:
        # ELOOP (a symlink), ENOTDIR (a link or file where a directory should be), ...
        raise IntegrityError(f"{where} in {root} is a symlink or not a regular file") from exc
    info = os.fstat(leaf)
    if not stat.S_ISREG(info.st_mode):
        os.close(leaf)
        raise IntegrityError(f"{where} in {root} is not a regular file")
    if info.st_size > max_size:
        os.close(leaf)
        raise IntegrityError(f"{where} in {root} is larger than {max_size} bytes")
    os.set_blocking(leaf, True)
    return os.fdopen(leaf, "rb")


def read_small(root: Path, name: str) -> bytes:
    with open_regular(root, [name], max_size=MAX_JSON_BLOB) as handle:
        return handle.read(MAX_JSON_BLOB + 1)


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:`` digest; IntegrityError for anything else."""
    algorithm, _, hexdigest = digest.partition(":")
    if (
        algorithm != "sha256"
        or len(hexdigest) != 64
        or not all(c in "0123456789abcdef" for c in hexdigest)
    ):
        raise IntegrityError(f"unsupported or malformed digest {digest[:80]!r}")
    return hexdigest


class VerifyingReader(io.RawIOBase):
    """Reads a blob and raises IntegrityError at EOF unless size and digest match."""

    def __init__(self, handle: IO[bytes], digest: str, size: int | None) -> None:
        self._handle = handle
        self._hash = hashlib.sha256()
        self._digest = digest
        self._size = size
        self._seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._handle.read(len(buffer))
        if not chunk:
            self._finish()
            return 0
        self._seen += len(chunk)
        if self._size is not None and self._seen > self._size:
            raise IntegrityError(f"blob {self._digest} is larger than its descriptor says")
        self._hash.update(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def _finish(self) -> None:
        if self._size is not None and self._seen != self._size:
            raise IntegrityError(
                f"blob {self._digest} is {self._seen} bytes, expected {self._size}"
            )
        if "sha256:" + self._hash.hexdigest() != self._digest:
            raise IntegrityError(f"blob {self._digest} does not match its digest")

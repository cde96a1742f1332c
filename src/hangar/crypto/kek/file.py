"""KEKs in a hex file that only its owner may read (the default provider)."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

from hangar.crypto.kek.base import KEY_BYTES, Kek, MemoryKek, kek_id, parse_hex
from hangar.errors import KeyMaterialError
from hangar.hostfs import write_private

__all__ = ["FileKekProvider", "generate_kek_file"]


def generate_kek_file(path: Path) -> None:
    """Write a fresh random KEK to ``path`` with mode 0600, refusing to overwrite."""
    write_private(path, secrets.token_bytes(KEY_BYTES).hex().encode() + b"\n", exclusive=True)


class FileKekProvider:
    """KEKs from a hex file that only its owner may read: one per line, the current first."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        try:
            info = self.path.stat()
        except FileNotFoundError as exc:
            raise KeyMaterialError(
                f"key-encryption key file {self.path} does not exist",
                hint="run `hangar server init`, or point --kek-file at the key",
            ) from exc
        if not stat.S_ISREG(info.st_mode):
            raise KeyMaterialError(f"key-encryption key {self.path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyMaterialError(
                f"key-encryption key {self.path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                "it must be readable by its owner only",
                hint=f"chmod 600 {self.path}",
            )
        lines = [line.strip() for line in self.path.read_text().splitlines() if line.strip()]
        if not lines:
            raise KeyMaterialError(f"key-encryption key {self.path} is empty")
        return lines

    def load(self) -> list[Kek]:
        return [MemoryKek(parse_hex(line, str(self.path))) for line in self._lines()]

    def rotate(self) -> Kek:
        lines = self._lines()
        new = secrets.token_bytes(KEY_BYTES)
        # Atomic: a crash mid-write must not lose the KEKs that unwrap the store.
        write_private(self.path, "\n".join([new.hex(), *lines]) + "\n", atomic=True)
        return MemoryKek(new)

    def retire(self, keep: bytes) -> None:
        kept = [line for line in self._lines() if kek_id(parse_hex(line, "")) == keep]
        if not kept:
            raise KeyMaterialError("the key to keep is not in the key file")
        write_private(self.path, kept[0] + "\n", atomic=True)

"""The KEK from an environment variable, taken out of the environment once read."""

from __future__ import annotations

import os

from hangar.crypto.kek.base import Kek, MemoryKek, parse_hex
from hangar.errors import ConfigError, KeyMaterialError

__all__ = ["EnvKekProvider"]


class EnvKekProvider:
    """The KEK from an environment variable (hex), taken out of the environment once read.

    Weaker than a file: the process's initial environment stays readable by
    root in /proc/<pid>/environ. Prefer the file or PKCS#11 where you can.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._keys: list[Kek] | None = None

    def load(self) -> list[Kek]:
        if self._keys is None:
            text = os.environ.pop(self.name, None)
            if text is None:
                raise KeyMaterialError(
                    f"${self.name}, which should hold the key-encryption key, is not set"
                )
            self._keys = [MemoryKek(parse_hex(text, f"${self.name}"))]
        return self._keys

    def rotate(self) -> Kek:
        raise ConfigError(
            "a key-encryption key from the environment cannot be rotated in place",
            hint="move it to a key file or an HSM first, or set a new one and re-initialise",
        )

    def retire(self, keep: bytes) -> None:
        raise ConfigError("a key-encryption key from the environment cannot be retired")

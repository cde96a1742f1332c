"""What every key-encryption key provider offers, and what the in-memory ones share."""

from __future__ import annotations

import hashlib
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hangar.errors import KeyMaterialError

__all__ = ["KEY_BYTES", "KID_BYTES", "Kek", "KekProvider", "MemoryKek", "kek_id", "parse_hex"]

KEY_BYTES = 32
KID_BYTES = 8


class Kek(Protocol):
    """One key-encryption key: it seals and opens, and says which key it is."""

    key_id: bytes

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, nonce: bytes, body: bytes, aad: bytes) -> bytes:
        """The plaintext; raises InvalidTag (or IntegrityError) if it does not authenticate."""
        ...


class KekProvider(Protocol):
    """Where the key-encryption keys come from."""

    def load(self) -> list[Kek]:
        """The KEKs, the one that wraps first; KeyMaterialError saying why not."""
        ...

    def rotate(self) -> Kek:
        """Make a new KEK and put it first (the old ones still open what they wrapped)."""
        ...

    def retire(self, keep: bytes) -> None:
        """Forget every KEK but ``keep`` (once nothing is wrapped by them any more)."""
        ...


class MemoryKek:
    """A KEK whose bytes are in this process (file and environment providers)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key_id = kek_id(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, body: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(nonce, body, aad)


def kek_id(kek: bytes) -> bytes:
    """A public fingerprint of the KEK, so a wrapped blob says which KEK wrapped it."""
    return hashlib.sha256(b"hangar-kek-id\x00" + kek).digest()[:KID_BYTES]


def parse_hex(text: str, where: str) -> bytes:
    """A KEK written as hex; KeyMaterialError naming ``where`` if it is not 32 bytes of hex."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise KeyMaterialError(f"key-encryption key {where} is not hex") from exc
    if len(key) != KEY_BYTES:
        raise KeyMaterialError(
            f"key-encryption key {where} holds {len(key)} bytes, expected {KEY_BYTES}"
        )
    return key

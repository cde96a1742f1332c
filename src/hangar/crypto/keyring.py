"""The key-encryption key (KEK) and what it wraps.

The KEK lives outside the database: a 32-byte key in a file that must be mode
0600 (Hangar refuses to start otherwise). It never encrypts user data directly;
it wraps other keys (organization token root keys, the CA key, the audit
signing key) with AES-256-GCM.

Wrapped format, version 1::

    0x01 | kek_id (8 bytes) | nonce (12 bytes) | ciphertext+tag

The associated data is a purpose string chosen by the caller (for example
``org-root-key:org_123``), so a wrapped blob moved to another row or file does
not unwrap. Callers may rely on: ``unwrap`` either returns exactly the bytes
given to ``wrap`` with the same purpose, or raises ``IntegrityError``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hangar.errors import IntegrityError, KeyMaterialError

__all__ = ["FileKekProvider", "KekProvider", "Keyring", "generate_kek_file"]

KEY_BYTES = 32
_VERSION = 1
_NONCE_BYTES = 12
_KID_BYTES = 8


class KekProvider(Protocol):
    """Where the key-encryption key comes from."""

    def load(self) -> bytes:
        """Return the 32-byte KEK, or raise KeyMaterialError saying why not."""
        ...


def _kek_id(kek: bytes) -> bytes:
    # A public fingerprint of the KEK so a blob says which KEK wrapped it.
    return hashlib.sha256(b"hangar-kek-id\x00" + kek).digest()[:_KID_BYTES]


def generate_kek_file(path: Path) -> None:
    """Write a fresh random KEK to ``path`` with mode 0600, refusing to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(KEY_BYTES).hex().encode() + b"\n")


class FileKekProvider:
    """The KEK from a hex file that only its owner may read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> bytes:
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
        text = self.path.read_text().strip()
        try:
            key = bytes.fromhex(text)
        except ValueError as exc:
            raise KeyMaterialError(f"key-encryption key {self.path} is not hex") from exc
        if len(key) != KEY_BYTES:
            raise KeyMaterialError(
                f"key-encryption key {self.path} holds {len(key)} bytes, expected {KEY_BYTES}"
            )
        return key


class Keyring:
    """Wraps and unwraps keys under the KEK."""

    def __init__(self, provider: KekProvider) -> None:
        kek = provider.load()
        self._aead = AESGCM(kek)
        self._kid = _kek_id(kek)

    @property
    def kek_id(self) -> str:
        return self._kid.hex()

    def wrap(self, plaintext: bytes, *, purpose: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        body = self._aead.encrypt(nonce, plaintext, purpose.encode())
        return bytes([_VERSION]) + self._kid + nonce + body

    def unwrap(self, blob: bytes, *, purpose: str) -> bytes:
        header = 1 + _KID_BYTES + _NONCE_BYTES
        if len(blob) < header + 16 or blob[0] != _VERSION:
            raise IntegrityError(f"wrapped key for {purpose} is malformed")
        kid, nonce, body = blob[1 : 1 + _KID_BYTES], blob[1 + _KID_BYTES : header], blob[header:]
        if kid != self._kid:
            raise KeyMaterialError(
                f"key for {purpose} was wrapped by another key-encryption key "
                f"({kid.hex()}, this one is {self._kid.hex()})",
                hint="start the server with the key-encryption key it was initialised with",
            )
        try:
            return self._aead.decrypt(nonce, body, purpose.encode())
        except InvalidTag as exc:
            raise IntegrityError(f"wrapped key for {purpose} fails authentication") from exc

    def new_key(self, *, purpose: str) -> tuple[bytes, bytes]:
        """Return a fresh 32-byte key and its wrapped form."""
        key = secrets.token_bytes(KEY_BYTES)
        return key, self.wrap(key, purpose=purpose)

"""The key-encryption key (KEK) and what it wraps.

The KEK lives outside the database. It never encrypts user data directly;
it wraps other keys (organization token root keys, the CA key, the audit
signing key, apps' data keys) with AES-256-GCM. Where it lives is a
provider's business, one module each under ``hangar.crypto.kek``: a 0600
file (the default), an environment variable, or a PKCS#11 token whose key
never leaves it.

Wrapped format, version 1::

    0x01 | kek_id (8 bytes) | nonce (12 bytes) | ciphertext+tag

The associated data is a purpose string chosen by the caller (for example
``org-root-key:org_123``), so a wrapped blob moved to another row or file does
not unwrap. Callers may rely on: ``unwrap`` either returns exactly the bytes
given to ``wrap`` with the same purpose, or raises ``IntegrityError``.

A provider may hold several KEKs: the first wraps, every one unwraps what it
wrapped. That is how rotation stays online. A new KEK goes first, every
wrapped key is re-wrapped under it, and then the old one is retired.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag

# The providers are re-exported so ``hangar.crypto.keyring`` stays the one
# import for code that builds a keyring.
from hangar.crypto.kek import (
    EnvKekProvider,
    FileKekProvider,
    Kek,
    KekProvider,
    Pkcs11KekProvider,
    generate_kek_file,
)
from hangar.crypto.kek.base import KEY_BYTES, KID_BYTES
from hangar.errors import IntegrityError, KeyMaterialError

__all__ = [
    "EnvKekProvider",
    "FileKekProvider",
    "Kek",
    "KekProvider",
    "Keyring",
    "Pkcs11KekProvider",
    "generate_kek_file",
]

_VERSION = 1
_NONCE_BYTES = 12


class Keyring:
    """Wraps and unwraps keys under the KEK(s) of a provider."""

    def __init__(self, provider: KekProvider) -> None:
        self.provider = provider
        self._load()

    def _load(self) -> None:
        keks = self.provider.load()
        self._current = keks[0]
        self._by_id = {k.key_id: k for k in keks}

    @property
    def kek_id(self) -> str:
        return self._current.key_id.hex()

    @property
    def kek_ids(self) -> list[str]:
        return [kid.hex() for kid in self._by_id]

    def wrap(self, plaintext: bytes, *, purpose: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        body = self._current.seal(nonce, plaintext, purpose.encode())
        return bytes([_VERSION]) + self._current.key_id + nonce + body

    def unwrap(self, blob: bytes, *, purpose: str) -> bytes:
        header = 1 + KID_BYTES + _NONCE_BYTES
        if len(blob) < header + 16 or blob[0] != _VERSION:
            raise IntegrityError(f"wrapped key for {purpose} is malformed")
        kid, nonce, body = blob[1 : 1 + KID_BYTES], blob[1 + KID_BYTES : header], blob[header:]
        kek = self._by_id.get(kid)
        if kek is None:
            raise KeyMaterialError(
                f"key for {purpose} was wrapped by another key-encryption key "
                f"({kid.hex()}, this one is {self.kek_id})",
                hint="start the server with the key-encryption key it was initialised with",
            )
        try:
            return kek.open(nonce, body, purpose.encode())
        except InvalidTag as exc:
            raise IntegrityError(f"wrapped key for {purpose} fails authentication") from exc

    def wrapped_by_current(self, blob: bytes) -> bool:
        return blob[1 : 1 + KID_BYTES] == self._current.key_id

    def new_key(self, *, purpose: str) -> tuple[bytes, bytes]:
        """Return a fresh 32-byte key and its wrapped form."""
        key = secrets.token_bytes(KEY_BYTES)
        return key, self.wrap(key, purpose=purpose)

    def rotate(self) -> str:
        """A new KEK wraps from now on; the old ones still unwrap. Returns the new id."""
        self.provider.rotate()
        self._load()
        return self.kek_id

    def retire_others(self) -> None:
        """Forget every KEK but the current one (call once nothing else is in use)."""
        self.provider.retire(self._current.key_id)
        self._load()

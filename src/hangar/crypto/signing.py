"""The audit signing key: Ed25519, stored wrapped by the KEK.

Checkpoints of the audit hash chain are signed with it so that cutting the
tail of the chain, or rewriting it wholesale, is detectable by anyone holding
the public key (``audit-signing.pub``).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hangar.crypto.keyring import Keyring
from hangar.errors import IntegrityError, KeyMaterialError
from hangar.hostfs import write_private

__all__ = ["AuditSigner", "load_public_key", "public_key_from_pem", "verify_signature"]

_PURPOSE = "audit-signing-key"
_RAW = serialization.Encoding.Raw


class AuditSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def create(cls) -> AuditSigner:
        return cls(Ed25519PrivateKey.generate())

    def save(self, directory: Path, keyring: Keyring) -> None:
        raw = self._key.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        write_private(directory / "audit-signing.key.wrapped", keyring.wrap(raw, purpose=_PURPOSE))
        (directory / "audit-signing.pub").write_bytes(self.public_pem())

    @classmethod
    def load(cls, directory: Path, keyring: Keyring) -> AuditSigner:
        path = directory / "audit-signing.key.wrapped"
        if not path.exists():
            raise KeyMaterialError(f"audit signing key {path} is missing")
        raw = keyring.unwrap(path.read_bytes(), purpose=_PURPOSE)
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def public_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def public_key_from_pem(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMaterialError("audit public key is not an Ed25519 key")
    return key


def load_public_key(directory: Path) -> Ed25519PublicKey:
    return public_key_from_pem((directory / "audit-signing.pub").read_bytes())


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Raise IntegrityError unless ``signature`` is valid for ``message``."""
    try:
        public_key.verify(signature, message)
    except InvalidSignature as exc:
        raise IntegrityError("signature does not verify") from exc

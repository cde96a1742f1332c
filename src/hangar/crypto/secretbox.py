"""Secret values: envelope encryption under per-app data keys, and sealed delivery.

Each app has a data key (AES-256-GCM), stored only wrapped by the KEK. A
value is encrypted with a fresh nonce. Its associated data binds org, app,
name and version, so a ciphertext moved to another row, app or version does
not decrypt. Ciphertext format, version 1::

    0x01 | key version (4 bytes, big-endian) | nonce (12) | ciphertext+tag

A value's digest is an HMAC-SHA256 under a key derived from the app's data
key, so equal values in two apps have different digests. Digests show that a
value changed, never what it is.

Delivery to a host is sealed on top of TLS. The agent sends a one-time
X25519 public key; the values go back under AES-GCM with a key from ECDH and
HKDF, so a proxy or a log in between sees only ciphertext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hangar.crypto.keyring import Keyring
from hangar.errors import IntegrityError, ValidationError

__all__ = ["AppKey", "Opener", "SecretRef", "app_key_purpose", "new_app_key", "seal"]

_VERSION = 1
_NONCE = 12


def app_key_purpose(app_id: str, key_version: int) -> str:
    return f"app-data-key:{app_id}:{key_version}"


@dataclass(frozen=True)
class SecretRef:
    """Which secret a ciphertext belongs to: bound into its associated data."""

    org_id: str
    app_id: str
    name: str
    version: int

    def aad(self) -> bytes:
        return "\x00".join(
            ["hangar-secret", self.org_id, self.app_id, self.name, str(self.version)]
        ).encode()


def new_app_key(keyring: Keyring, app_id: str, key_version: int) -> bytes:
    """A fresh data key for an app, returned wrapped (the plaintext is not kept)."""
    _, wrapped = keyring.new_key(purpose=app_key_purpose(app_id, key_version))
    return wrapped


class AppKey:
    """One app's data key, unwrapped for the length of an operation."""

    def __init__(self, keyring: Keyring, app_id: str, key_version: int, wrapped: bytes) -> None:
        key = keyring.unwrap(wrapped, purpose=app_key_purpose(app_id, key_version))
        self.app_id = app_id
        self.key_version = key_version
        self._aead = AESGCM(key)
        self._digest_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"hangar-secret-digest"
        ).derive(key)

    def digest(self, value: bytes) -> str:
        return hmac.new(self._digest_key, value, hashlib.sha256).hexdigest()

    def encrypt(self, ref: SecretRef, value: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        body = self._aead.encrypt(nonce, value, ref.aad())
        return bytes([_VERSION]) + struct.pack(">I", self.key_version) + nonce + body

    def decrypt(self, ref: SecretRef, blob: bytes) -> bytes:
        if len(blob) < 1 + 4 + _NONCE + 16 or blob[0] != _VERSION:
            raise IntegrityError(f"secret {ref.name} is stored in an unknown format")
        (key_version,) = struct.unpack(">I", blob[1:5])
        if key_version != self.key_version:
            raise IntegrityError(
                f"secret {ref.name} is under data key v{key_version}, not v{self.key_version}"
            )
        try:
            return self._aead.decrypt(blob[5 : 5 + _NONCE], blob[5 + _NONCE :], ref.aad())
        except InvalidTag:
            raise IntegrityError(
                f"secret {ref.name} fails authentication: it was altered or moved",
                hint="set it again; `hangar audit list` shows who last changed it",
            ) from None


def _delivery_key(shared: bytes, machine_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"hangar-secret-delivery\x00" + machine_id.encode(),
    ).derive(shared)


def seal(values: dict[str, str], recipient_b64: str, machine_id: str) -> dict[str, str]:
    """Seal ``values`` to the agent's one-time public key (base64 of 32 raw bytes)."""
    try:
        recipient = X25519PublicKey.from_public_bytes(
            base64.b64decode(recipient_b64, validate=True)
        )
    except ValueError as exc:
        raise ValidationError("the delivery key is not a base64 X25519 public key") from exc
    ephemeral = X25519PrivateKey.generate()
    key = _delivery_key(ephemeral.exchange(recipient), machine_id)
    nonce = secrets.token_bytes(_NONCE)
    body = AESGCM(key).encrypt(nonce, json.dumps(values).encode(), machine_id.encode())
    public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {
        "ephemeral": base64.b64encode(public).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(body).decode(),
    }


class Opener:
    """The agent's side of one delivery: a one-time key, then the sealed values."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()

    def public_b64(self) -> str:
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def open(self, sealed: dict[str, str], machine_id: str) -> dict[str, str]:
        try:
            peer = X25519PublicKey.from_public_bytes(base64.b64decode(sealed["ephemeral"]))
            key = _delivery_key(self._key.exchange(peer), machine_id)
            plain = AESGCM(key).decrypt(
                base64.b64decode(sealed["nonce"]),
                base64.b64decode(sealed["ciphertext"]),
                machine_id.encode(),
            )
        except (KeyError, ValueError, InvalidTag) as exc:
            raise IntegrityError(f"the secrets for machine {machine_id} did not open") from exc
        values = json.loads(plain)
        assert isinstance(values, dict)
        return {str(k): str(v) for k, v in values.items()}

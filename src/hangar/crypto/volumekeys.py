"""Volumes' data keys: made here, stored only wrapped by the KEK, sent sealed.

Each volume has its own random key: 64 bytes for LUKS2 (``aes-xts-plain64``
with a 512-bit key), 32 for gocryptfs (its AES-256-GCM master key). The
store holds it only wrapped, under the purpose ``volume-key:<id>``, so a
wrapped key moved to another volume's row does not unwrap. A host gets the
keys of a machine it starts sealed to a one-time X25519 key (as secrets),
under a context of their own (``volume-keys:<machine>``), so a sealed
bundle of secrets can never be opened as volume keys, nor the reverse.
"""

from __future__ import annotations

import base64
import secrets

from hangar.crypto.keyring import Keyring
from hangar.crypto.secretbox import Opener, seal
from hangar.errors import IntegrityError, ValidationError

__all__ = [
    "KEY_BYTES",
    "new_volume_key",
    "open_sealed_keys",
    "open_volume_key",
    "seal_keys",
    "volume_key_purpose",
]

KEY_BYTES = {"luks2": 64, "gocryptfs": 32}


def volume_key_purpose(volume_id: str) -> str:
    return f"volume-key:{volume_id}"


def _context(machine_id: str) -> str:
    return f"volume-keys:{machine_id}"


def new_volume_key(keyring: Keyring, volume_id: str, encryption: str) -> bytes:
    """A fresh key for a volume, returned wrapped (the plaintext is not kept)."""
    if encryption not in KEY_BYTES:
        raise ValidationError(f"unknown volume encryption {encryption!r}")
    key = secrets.token_bytes(KEY_BYTES[encryption])
    return keyring.wrap(key, purpose=volume_key_purpose(volume_id))


def open_volume_key(keyring: Keyring, volume_id: str, wrapped: bytes) -> bytes:
    """A volume's key, unwrapped for delivery; IntegrityError if it was moved or altered."""
    return keyring.unwrap(wrapped, purpose=volume_key_purpose(volume_id))


def seal_keys(keys: dict[str, bytes], recipient_b64: str, machine_id: str) -> dict[str, str]:
    """Seal ``{volume id: key}`` to a host's one-time public key, for one machine."""
    values = {vid: base64.b64encode(key).decode() for vid, key in keys.items()}
    return seal(values, recipient_b64, _context(machine_id))


def open_sealed_keys(opener: Opener, sealed: dict[str, str], machine_id: str) -> dict[str, bytes]:
    """The host's side of ``seal_keys``: ``{volume id: key}``; IntegrityError if tampered."""
    values = opener.open(sealed, _context(machine_id))
    try:
        return {vid: base64.b64decode(v, validate=True) for vid, v in values.items()}
    except ValueError as exc:
        raise IntegrityError(f"the volume keys for machine {machine_id} are malformed") from exc

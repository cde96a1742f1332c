"""Re-wrapping every wrapped key under the current KEK (for KEK rotation).

The plaintext of each key exists only inside ``rewrap``, for the length of
one unwrap and wrap.
"""

from __future__ import annotations

from pathlib import Path

from hangar.crypto import ca, signing
from hangar.crypto.keyring import Keyring
from hangar.crypto.macaroons import TokenKeys
from hangar.crypto.secretbox import app_key_purpose
from hangar.hostfs import write_private

__all__ = ["WRAPPED_FILES", "app_key_purpose", "rewrap", "rewrap_file", "root_key_purpose"]

# Files in the data directory that hold a wrapped key, and the key's purpose.
WRAPPED_FILES = {
    "ca.key.wrapped": ca._CA_PURPOSE,
    "audit-signing.key.wrapped": signing._PURPOSE,
}


def root_key_purpose(key_id: str) -> str:
    return TokenKeys._purpose(key_id)


def rewrap(keyring: Keyring, blob: bytes, purpose: str) -> bytes:
    """``blob`` wrapped again under the current KEK (unchanged if it already is)."""
    if keyring.wrapped_by_current(blob):
        return blob
    return keyring.wrap(keyring.unwrap(blob, purpose=purpose), purpose=purpose)


def rewrap_file(keyring: Keyring, path: Path, purpose: str) -> bool:
    """Re-wrap a key file in place (atomically); True if it changed."""
    blob = path.read_bytes()
    fresh = rewrap(keyring, blob, purpose)
    if fresh == blob:
        return False
    tmp = path.with_name(path.name + ".new")
    write_private(tmp, fresh)
    tmp.replace(path)
    return True

"""WireGuard key pairs (Curve25519), for people's peers: made here, the private half shown once.

What the caller may rely on: the private key is returned and never stored;
only the public key is kept.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

__all__ = ["new_keypair"]


def new_keypair() -> tuple[str, str]:
    """(private key, public key), each base64 of 32 bytes, as ``wg`` writes them."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()

"""Secrets stored as digests, and the one way to check a presented secret.

A one-time secret that Hangar hands out once (a host's join token, a
machine lease's nonce) is stored only as ``hash_secret(secret)``: the
SHA-256 of its UTF-8 bytes, as 64 lowercase hex digits. That is the format
every stored row already holds, so rows written before this module existed
still verify.

``verify_secret`` is the only comparison. It runs in constant time and
returns nothing: a secret that does not match raises ``SecretMismatch``, so a
caller cannot forget to look at the answer. ``SecretMismatch`` is an
``AuthError`` (HTTP 401); a caller that owes its client another error (a
lease held by someone else is a conflict) catches it and raises its own.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from hangar.errors import AuthError

__all__ = ["SecretMismatch", "hash_secret", "verify_secret"]

_DIGEST = re.compile(r"[0-9a-f]{64}")


class SecretMismatch(AuthError):
    """A presented secret does not match the stored digest (or there was none to match)."""


def hash_secret(secret: str) -> str:
    """The digest to store for ``secret``: SHA-256 of its UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_secret(secret: str, expected_digest: str, *, what: str) -> None:
    """Return if ``hash_secret(secret)`` is ``expected_digest``; raise ``SecretMismatch`` if not.

    The comparison takes the same time wherever the digests differ. An empty
    secret never matches, nor does a stored digest that is not 64 lowercase
    hex digits (a damaged row refuses everyone rather than crashing). The
    error says only ``the <what> is not valid``: never which part was wrong.
    """
    refused = SecretMismatch(f"the {what} is not valid")
    if not secret or _DIGEST.fullmatch(expected_digest) is None:
        raise refused
    try:
        presented = hash_secret(secret)
    except UnicodeEncodeError:  # a lone surrogate: no secret Hangar made
        raise refused from None
    if not hmac.compare_digest(presented.encode(), expected_digest.encode()):
        raise refused

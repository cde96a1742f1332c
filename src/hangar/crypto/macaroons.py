"""Macaroon bearer tokens: an HMAC chain over an identifier and caveats.

A macaroon's signature starts as ``HMAC(root_key, identifier)``; each caveat
appended replaces it with ``HMAC(previous_signature, caveat)``. Anyone holding
a macaroon can add caveats (attenuate) without the root key, but nobody can
remove one: that would need the signature before it.

This small module is used instead of ``pymacaroons``, which has had no release
since 2018, pulls in PyNaCl for third-party caveats Hangar does not use, and
ships no type information. What the caller may rely on: ``verify`` raises
``AuthError`` unless the chain recomputes to the presented signature under the
given root key (compared in constant time); it does not judge caveats, which
are returned for the policy layer to evaluate, all of them, rejecting any it
does not know.

Wire format: ``hm1_`` followed by unpadded base64url of compact JSON
``{"i": identifier, "c": [caveat, ...], "s": signature-hex}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from hangar.crypto.keyring import Keyring
from hangar.errors import AuthError

__all__ = ["MAX_CAVEATS", "PREFIX", "Macaroon", "TokenKeys", "mint"]

PREFIX = "hm1_"
MAX_TOKEN_CHARS = 8192
MAX_CAVEATS = 32
_KEY_CONTEXT = b"hangar-macaroon-root-v1"


def _derive(root_key: bytes) -> bytes:
    # As the macaroon paper advises: never use the stored root key directly.
    return hmac.new(root_key, _KEY_CONTEXT, hashlib.sha256).digest()


def _chain(root_key: bytes, identifier: str, caveats: tuple[str, ...]) -> bytes:
    sig = hmac.new(_derive(root_key), identifier.encode(), hashlib.sha256).digest()
    for caveat in caveats:
        sig = hmac.new(sig, caveat.encode(), hashlib.sha256).digest()
    return sig


@dataclass(frozen=True)
class Macaroon:
    identifier: str
    caveats: tuple[str, ...]
    signature: bytes

    def attenuate(self, *caveats: str) -> Macaroon:
        """A narrower macaroon; needs no key."""
        sig = self.signature
        for caveat in caveats:
            _check_caveat_text(caveat)
            sig = hmac.new(sig, caveat.encode(), hashlib.sha256).digest()
        if len(self.caveats) + len(caveats) > MAX_CAVEATS:
            raise AuthError(f"a token holds at most {MAX_CAVEATS} caveats")
        return Macaroon(self.identifier, self.caveats + tuple(caveats), sig)

    def serialize(self) -> str:
        body = json.dumps(
            {"i": self.identifier, "c": list(self.caveats), "s": self.signature.hex()},
            separators=(",", ":"),
        ).encode()
        return PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode()

    @classmethod
    def parse(cls, token: str) -> Macaroon:
        """Decode a token's structure (not its signature); AuthError if malformed."""
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
            raise AuthError("the token is not a Hangar token", hint="run `hangar auth login`")
        raw = token[len(PREFIX) :]
        try:
            body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            identifier, caveats, sig = body["i"], body["c"], bytes.fromhex(body["s"])
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise AuthError("the token is malformed", hint="run `hangar auth login`") from exc
        if (
            not isinstance(identifier, str)
            or not isinstance(caveats, list)
            or not all(isinstance(c, str) for c in caveats)
            or len(caveats) > MAX_CAVEATS
            or len(sig) != hashlib.sha256().digest_size
        ):
            raise AuthError("the token is malformed", hint="run `hangar auth login`")
        return cls(identifier, tuple(caveats), sig)

    def verify(self, root_key: bytes) -> tuple[str, ...]:
        """Check the HMAC chain in constant time; return the caveats to evaluate."""
        expected = _chain(root_key, self.identifier, self.caveats)
        if not hmac.compare_digest(expected, self.signature):
            raise AuthError("the token's signature is not valid", hint="run `hangar auth login`")
        return self.caveats


def _check_caveat_text(caveat: str) -> None:
    if not caveat or len(caveat) > 1024 or "\n" in caveat:
        raise AuthError("a caveat must be one line of at most 1024 characters")


def mint(root_key: bytes, identifier: str, caveats: tuple[str, ...] = ()) -> Macaroon:
    base = Macaroon(identifier, (), _chain(root_key, identifier, ()))
    return base.attenuate(*caveats)


class TokenKeys:
    """Root keys for macaroons, kept inside crypto/: callers see ids and wrapped blobs.

    Unwrapped root keys are cached in memory by key id (they never change once
    made), so a request does not pay an AES-GCM unwrap.
    """

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._cache: dict[str, bytes] = {}

    @staticmethod
    def _purpose(key_id: str) -> str:
        return f"token-root-key:{key_id}"

    def new_root_key(self, key_id: str) -> bytes:
        """Make a root key for ``key_id``; returns its wrapped form for the store."""
        key, wrapped = self._keyring.new_key(purpose=self._purpose(key_id))
        self._cache[key_id] = key
        return wrapped

    def _key(self, key_id: str, wrapped: bytes) -> bytes:
        key = self._cache.get(key_id)
        if key is None:
            key = self._keyring.unwrap(wrapped, purpose=self._purpose(key_id))
            self._cache[key_id] = key
        return key

    def mint(
        self, key_id: str, wrapped: bytes, identifier: str, caveats: tuple[str, ...]
    ) -> Macaroon:
        return mint(self._key(key_id, wrapped), identifier, caveats)

    def verify(self, macaroon: Macaroon, key_id: str, wrapped: bytes) -> tuple[str, ...]:
        return macaroon.verify(self._key(key_id, wrapped))

"""Stored secret digests: the format rows already hold, and a check that raises."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pytest

from hangar.crypto import digests
from hangar.crypto.digests import SecretMismatch, hash_secret, verify_secret
from hangar.errors import AuthError, Conflict


def _old_digest(secret: str) -> str:
    # What join-token rows and lease nonces were stored as before this module.
    return hashlib.sha256(secret.encode()).hexdigest()


def test_the_digest_is_the_format_rows_already_hold() -> None:
    # SHA-256("abc"), FIPS 180-2 appendix B.1.
    assert hash_secret("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    for secret in (secrets.token_urlsafe(32), secrets.token_urlsafe(24), "é-ünïcode"):
        assert hash_secret(secret) == _old_digest(secret)


def test_a_row_written_before_verifies() -> None:
    secret = secrets.token_urlsafe(32)
    verify_secret(secret, _old_digest(secret), what="join token")  # no exception


def test_a_wrong_secret_raises_an_auth_error_that_names_only_what() -> None:
    secret = secrets.token_urlsafe(32)
    with pytest.raises(SecretMismatch) as info:
        verify_secret(secret + "x", hash_secret(secret), what="join token")
    assert isinstance(info.value, AuthError) and info.value.status == 401
    assert info.value.message == "the join token is not valid"
    assert secret not in str(info.value)


def test_an_empty_secret_never_matches() -> None:
    # Not even a digest of the empty string: a missing header is no secret.
    with pytest.raises(SecretMismatch):
        verify_secret("", hash_secret(""), what="lease nonce")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        hash_secret("s")[:-1],  # one digit short
        hash_secret("s") + "0",  # one digit long
        hash_secret("s").upper(),  # not the form Hangar writes
        hash_secret("s")[:-1] + "g",  # not hex
        hash_secret("s")[:-1] + "\u0661",  # a digit, but not ASCII
        hashlib.sha256(b"s").digest().hex()[:32],  # a truncated digest
    ],
)
def test_a_malformed_stored_digest_refuses_instead_of_crashing(stored: str) -> None:
    with pytest.raises(SecretMismatch):
        verify_secret("s", stored, what="join token")


def test_a_secret_that_is_not_text_is_refused() -> None:
    with pytest.raises(SecretMismatch):
        verify_secret("\ud800", hash_secret("x"), what="join token")


def test_the_comparison_is_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(digests.hmac, "compare_digest", recording)
    verify_secret("s", hash_secret("s"), what="x")
    with pytest.raises(SecretMismatch):
        verify_secret("t", hash_secret("s"), what="x")
    assert len(calls) == 2


def test_a_caller_that_owes_another_error_catches_the_mismatch() -> None:
    # How a lease check keeps answering 409: store hash_secret(nonce), verify, re-raise.
    nonce = secrets.token_urlsafe(24)
    stored = _old_digest(nonce)

    def check(presented: str) -> None:
        try:
            verify_secret(presented, stored, what="lease nonce")
        except SecretMismatch:
            raise Conflict("machine is leased") from None

    check(nonce)
    for wrong in ("", nonce[:-1], secrets.token_urlsafe(24)):
        with pytest.raises(Conflict):
            check(wrong)

"""A provider's answers are read to a bound, in size and in time, whatever endpoint."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from hangar.auth import oidc
from hangar.auth.oidc import OidcClient, OidcError, ProviderConfig

ISSUER = "https://idp.example"
PROVIDER = ProviderConfig(name="corp", issuer=ISSUER, client_id="hangar", client_secret="s3")
DISCOVERY = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
    "userinfo_endpoint": f"{ISSUER}/userinfo",
    "jwks_uri": f"{ISSUER}/jwks",
}
CHUNK = 64 * 1024


class Huge(httpx.SyncByteStream):
    """A body far larger than any bound (16 MiB); counts what was taken from it."""

    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(256):
            self.sent += CHUNK
            yield b" " * CHUNK


def _client(stream: Huge, slow_path: str) -> OidcClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=DISCOVERY)
        if request.url.path == slow_path:
            return httpx.Response(200, stream=stream)
        return httpx.Response(404)

    return OidcClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("path", ["/token", "/userinfo"])
def test_an_oversized_answer_is_cut_at_the_bound(path: str) -> None:
    stream = Huge()
    client = _client(stream, path)
    with pytest.raises(OidcError, match="too large"):
        if path == "/token":
            client.exchange_code(
                PROVIDER, code="c" * 20, code_verifier="v" * 43, redirect_uri="https://h/cb"
            )
        else:
            client.userinfo(PROVIDER, "access", "bob")
    assert stream.sent <= oidc.MAX_DOCUMENT_BYTES + 2 * CHUNK


def test_a_trickling_answer_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk arrives within the read timeout, but the whole never ends in time."""
    ticks = iter(range(0, 10**6, 7))
    monkeypatch.setattr(oidc.time, "monotonic", lambda: float(next(ticks)))
    stream = Huge()
    monkeypatch.setattr(oidc, "MAX_DOCUMENT_BYTES", 10**12)
    with pytest.raises(OidcError, match="too slow"):
        _client(stream, "/token").refresh(PROVIDER, "refresh")
    assert stream.sent < 10 * CHUNK

"""ID tokens as an attacker would forge them, against a provider served over real HTTP."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from pytest_httpserver import HTTPServer

from hangar.auth.oidc import JWKS_REFETCH_SECONDS, OidcClient, OidcError, ProviderConfig

NONCE = "n-0123456789"


@pytest.fixture
def key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})


@pytest.fixture
def provider(httpserver: HTTPServer, key: RSAKey) -> ProviderConfig:
    issuer = httpserver.url_for("/").rstrip("/")
    httpserver.expect_request("/.well-known/openid-configuration").respond_with_json(
        {
            "issuer": issuer,
            "authorization_endpoint": issuer + "/authorize",
            "token_endpoint": issuer + "/token",
            "jwks_uri": issuer + "/jwks",
        }
    )
    httpserver.expect_request("/jwks").respond_with_json({"keys": [key.as_dict(private=False)]})
    return ProviderConfig(name="t", issuer=issuer, client_id="hangar", client_secret=None)


def _claims(provider: ProviderConfig, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": provider.issuer,
        "aud": "hangar",
        "sub": "bob",
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict[str, Any], key: Any, alg: str = "RS256", kid: str = "k1") -> str:
    return jwt.encode({"alg": alg, "kid": kid}, claims, key)


def test_a_good_token_passes(provider: ProviderConfig, key: RSAKey) -> None:
    claims = OidcClient().verify_id_token(provider, _sign(_claims(provider), key), nonce=NONCE)
    assert claims["sub"] == "bob"


@pytest.mark.parametrize(
    "over",
    [
        {"iss": "https://evil.example"},
        {"aud": "someone-else"},
        {"exp": int(time.time()) - 3600},
        {"nonce": "replayed"},
        {"nonce": None},
        {"sub": None},
        {"aud": ["hangar", "other"]},  # several audiences and no azp
    ],
    ids=["issuer", "audience", "expired", "nonce", "no-nonce", "no-sub", "azp"],
)
def test_bad_claims_are_refused(
    provider: ProviderConfig, key: RSAKey, over: dict[str, Any]
) -> None:
    with pytest.raises(OidcError):
        OidcClient().verify_id_token(provider, _sign(_claims(provider, **over), key), nonce=NONCE)


def test_a_forged_signature_is_refused(provider: ProviderConfig) -> None:
    other = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    with pytest.raises(OidcError, match="signature"):
        OidcClient().verify_id_token(provider, _sign(_claims(provider), other), nonce=NONCE)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused(provider: ProviderConfig) -> None:
    token = f"{_b64({'alg': 'none', 'kid': 'k1'})}.{_b64(_claims(provider))}."
    with pytest.raises(OidcError, match="algorithm"):
        OidcClient().verify_id_token(provider, token, nonce=NONCE)


def test_hmac_with_the_public_key_or_client_secret_is_refused(provider: ProviderConfig) -> None:
    secret = OctKey.import_key(b"client-secret-known-to-the-attacker-0123456789")
    token = jwt.encode({"alg": "HS256", "kid": "k1"}, _claims(provider), secret)
    with pytest.raises(OidcError, match="algorithm"):
        OidcClient().verify_id_token(provider, token, nonce=NONCE)


def test_an_unknown_kid_refetches_the_jwks_but_only_so_often(
    provider: ProviderConfig, key: RSAKey
) -> None:
    client = OidcClient()
    client.verify_id_token(provider, _sign(_claims(provider), key), nonce=NONCE)
    assert client.jwks_fetches == 1
    for n in range(20):
        with pytest.raises(OidcError, match="unknown key"):
            client.verify_id_token(
                provider, _sign(_claims(provider), key, kid=f"made-up-{n}"), nonce=NONCE
            )
    # Every made-up kid fell inside the refetch bound: the provider was not asked again.
    assert client.jwks_fetches == 1
    # Past the bound (the provider rotated its key), an unknown kid fetches the JWKS again.
    client._cache(provider.issuer).keys_at -= JWKS_REFETCH_SECONDS + 1
    with pytest.raises(OidcError, match="unknown key"):
        client.verify_id_token(provider, _sign(_claims(provider), key, kid="k2"), nonce=NONCE)
    assert client.jwks_fetches == 2

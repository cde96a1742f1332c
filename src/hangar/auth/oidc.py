"""OpenID Connect relying party: discovery, authorization code with PKCE, ID tokens.

Built on authlib (PKCE, the authorization request, token-endpoint client
authentication) and joserfc (authlib's JOSE library: JWS signatures and JWT
claims); no JWT is parsed or verified by hand here.

What the caller may rely on, from ``verify_id_token``:

- the signature verifies under a key of the provider's JWKS (fetched from
  the ``jwks_uri`` its discovery document names), with an asymmetric
  algorithm only: ``none`` and the HMAC family (HS256...) are refused, so a
  token signed with the client secret, or not at all, never passes;
- a ``kid`` the cached JWKS lacks makes Hangar fetch the JWKS again (key
  rotation), at most once per ``JWKS_REFETCH_SECONDS`` per provider, so a
  stream of made-up key ids cannot make Hangar hammer the provider;
- ``iss`` is exactly the configured issuer (which discovery must also
  name), ``aud`` holds the client id (and ``azp`` is the client id when
  there are several audiences), ``exp`` is in the future and ``iat`` not in
  it (60 s leeway), ``nonce`` equals the one sent, ``sub`` is present.

Anything else raises ``OidcError``, whose message says what failed.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from hangar.errors import AuthError, ValidationError

__all__ = [
    "ALLOWED_ALGORITHMS",
    "JWKS_REFETCH_SECONDS",
    "OidcClient",
    "OidcError",
    "ProviderConfig",
    "check_issuer_url",
    "new_pkce_pair",
]

# Asymmetric algorithms only: never "none", never HS*.
ALLOWED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
JWKS_REFETCH_SECONDS = 30.0
DISCOVERY_TTL_SECONDS = 3600.0
LEEWAY_SECONDS = 60
MAX_DOCUMENT_BYTES = 512 * 1024
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# The whole of one exchange with a provider, however slowly it trickles.
HTTP_DEADLINE_SECONDS = 20.0


class OidcError(AuthError):
    """The identity provider's answer, or a token from it, did not pass a check."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_issuer_url(url: str) -> str:
    """``url`` if it can be an issuer: https (http only on loopback), no query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationError(f"the issuer {url!r} is not an https URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValidationError(
            f"the issuer {url!r} is not https", hint="only a provider on loopback may use http"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationError(f"the issuer {url!r} has a query, fragment or credentials")
    return url


def new_pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier (RFC 7636, 43-128 characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    return verifier, create_s256_code_challenge(verifier)


def s256(verifier: str) -> str:
    """The S256 challenge of ``verifier``."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class ProviderConfig:
    """An identity provider as the operator configured it."""

    name: str
    issuer: str
    client_id: str
    client_secret: str | None
    scopes: str = "openid email profile"
    groups_claim: str = "groups"


@dataclass
class _Cache:
    discovery: dict[str, Any] | None = None
    discovered_at: float = 0.0
    keys: KeySet | None = None
    keys_at: float = -1e9
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class TokenResponse:
    id_token: str
    access_token: str | None
    refresh_token: str | None


class OidcClient:
    """One process's view of every configured provider (discovery and JWKS cached)."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._caches: dict[str, _Cache] = {}
        self._lock = threading.Lock()
        self._transport = transport
        # Counts JWKS fetches (for tests of the refetch bound and for metrics).
        self.jwks_fetches = 0

    def _cache(self, issuer: str) -> _Cache:
        with self._lock:
            if issuer not in self._caches:
                if len(self._caches) >= 256:
                    self._caches.clear()
                self._caches[issuer] = _Cache()
            return self._caches[issuer]

    def _http(self) -> httpx.Client:
        return httpx.Client(timeout=HTTP_TIMEOUT, transport=self._transport, follow_redirects=False)

    def _fetch(self, method: str, url: str, what: str, **kwargs: Any) -> tuple[int, bytes]:
        """``(status, body)`` of one request: the body read to MAX_DOCUMENT_BYTES at
        most, and the whole exchange within HTTP_DEADLINE_SECONDS (a provider
        sending a byte every few seconds holds no thread for longer)."""
        deadline = time.monotonic() + HTTP_DEADLINE_SECONDS
        try:
            with self._http() as client, client.stream(method, url, **kwargs) as response:
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise OidcError(f"the identity provider's {what} is too large")
                    if time.monotonic() > deadline:
                        raise OidcError(f"the identity provider's {what} is too slow")
                return response.status_code, body
        except httpx.HTTPError as exc:
            raise OidcError(f"cannot reach the identity provider's {what}: {exc}") from exc

    def _get_json(self, url: str) -> dict[str, Any]:
        status, body = self._fetch("GET", url, url)
        if status != 200:
            raise OidcError(f"the identity provider answered {status} for {url}")
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise OidcError(f"the identity provider's {url} is not JSON") from exc
        if not isinstance(data, dict):
            raise OidcError(f"the identity provider's {url} is not a JSON object")
        return data

    def discover(self, provider: ProviderConfig) -> dict[str, Any]:
        """The provider's discovery document (cached an hour); its issuer must match."""
        cache = self._cache(provider.issuer)
        now = time.monotonic()
        if cache.discovery is not None and now - cache.discovered_at < DISCOVERY_TTL_SECONDS:
            return cache.discovery
        url = provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = self._get_json(url)
        if doc.get("issuer") != provider.issuer:
            raise OidcError(
                f"the provider's discovery document names issuer {doc.get('issuer')!r}, "
                f"not {provider.issuer!r}"
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(key)
            if not isinstance(value, str):
                raise OidcError(f"the provider's discovery document has no {key}")
            parts = urlsplit(value)
            if parts.scheme != "https" and not (
                parts.scheme == "http" and _is_loopback(parts.hostname or "")
            ):
                raise OidcError(f"the provider's {key} is not https")
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise OidcError("the provider does not support PKCE with S256")
        cache.discovery, cache.discovered_at = doc, now
        return doc

    def authorization_url(
        self,
        provider: ProviderConfig,
        *,
        redirect_uri: str,
        state: str,
        nonce: str,
        code_challenge: str,
    ) -> str:
        """Where to send the browser: an authorization request with PKCE (S256)."""
        doc = self.discover(provider)
        params = [
            ("response_type", "code"),
            ("client_id", provider.client_id),
            ("redirect_uri", redirect_uri),
            ("scope", provider.scopes),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", code_challenge),
            ("code_challenge_method", "S256"),
        ]
        return str(add_params_to_uri(doc["authorization_endpoint"], params))

    def exchange_code(
        self, provider: ProviderConfig, *, code: str, code_verifier: str, redirect_uri: str
    ) -> TokenResponse:
        """Trade an authorization code (and its PKCE verifier) for tokens."""
        doc = self.discover(provider)
        try:
            return self._token_request(
                provider,
                doc,
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": code_verifier,
                },
            )
        except _Refused as exc:
            # A code used twice, for another client, or without its PKCE verifier.
            raise OidcError(f"the identity provider refused the code: {exc.error}") from exc

    def refresh(self, provider: ProviderConfig, refresh_token: str) -> TokenResponse | None:
        """Use a refresh token; None when the provider refuses it (``invalid_grant``).

        A provider refuses the refresh token of a user it has disabled or
        signed out everywhere: that is how Hangar learns it no longer vouches
        for them. OidcError for anything else (it could not be asked).
        """
        doc = self.discover(provider)
        try:
            return self._token_request(
                provider, doc, {"grant_type": "refresh_token", "refresh_token": refresh_token}
            )
        except _Refused as exc:
            if exc.error in ("invalid_grant", "unauthorized_client", "access_denied"):
                return None
            raise OidcError(f"the identity provider refused the refresh: {exc.error}") from exc

    def _token_request(
        self, provider: ProviderConfig, doc: dict[str, Any], form: dict[str, str]
    ) -> TokenResponse:
        auth = None
        if provider.client_secret:
            auth = httpx.BasicAuth(provider.client_id, provider.client_secret)
        else:
            form = {**form, "client_id": provider.client_id}
        status, raw = self._fetch(
            "POST",
            doc["token_endpoint"],
            "token response",
            data=form,
            auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
            headers={"Accept": "application/json"},
        )
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise OidcError("the identity provider's token response is not JSON") from exc
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise _Refused(str(error or status))
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the identity provider's token response has no ID token")
        access = body.get("access_token")
        refresh = body.get("refresh_token")
        return TokenResponse(
            id_token=id_token,
            access_token=access if isinstance(access, str) else None,
            refresh_token=refresh if isinstance(refresh, str) else None,
        )

    def userinfo(self, provider: ProviderConfig, access_token: str, sub: str) -> dict[str, Any]:
        """The UserInfo endpoint's claims, for a provider that keeps them out of the ID token.

        OidcError unless its ``sub`` is the ID token's (OIDC Core 5.3.2: a
        response for another person must not be used).
        """
        doc = self.discover(provider)
        endpoint = doc.get("userinfo_endpoint")
        if not isinstance(endpoint, str):
            return {}
        status, raw = self._fetch(
            "GET",
            endpoint,
            "userinfo",
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
        if status != 200:
            raise OidcError(f"the identity provider's userinfo answered {status}")
        try:
            claims = json.loads(raw)
        except ValueError as exc:
            raise OidcError("the identity provider's userinfo is not JSON") from exc
        if not isinstance(claims, dict) or claims.get("sub") != sub:
            raise OidcError("the identity provider's userinfo is about someone else")
        return claims

    def _keys(self, provider: ProviderConfig, kid: str | None) -> KeySet:
        """The provider's JWKS, fetched again for an unknown ``kid`` (bounded)."""
        cache = self._cache(provider.issuer)
        with cache.lock:
            known = cache.keys is not None and (
                kid is None or any(k.kid == kid for k in cache.keys.keys)
            )
            if known:
                assert cache.keys is not None
                return cache.keys
            if time.monotonic() - cache.keys_at < JWKS_REFETCH_SECONDS:
                if cache.keys is None:
                    raise OidcError("the identity provider's keys could not be fetched")
                raise OidcError(f"the ID token is signed with an unknown key {kid!r}")
            doc = self.discover(provider)
            cache.keys_at = time.monotonic()
            self.jwks_fetches += 1
            data = self._get_json(doc["jwks_uri"])
            try:
                cache.keys = KeySet.import_key_set(data)  # type: ignore[arg-type]
            except (JoseError, ValueError, KeyError, TypeError) as exc:
                raise OidcError(f"the identity provider's JWKS is not usable: {exc}") from exc
            if kid is not None and not any(k.kid == kid for k in cache.keys.keys):
                raise OidcError(f"the ID token is signed with an unknown key {kid!r}")
            return cache.keys

    def verify_id_token(
        self, provider: ProviderConfig, id_token: str, *, nonce: str, now: float | None = None
    ) -> dict[str, Any]:
        """The ID token's claims, once every check in the module doc has passed."""
        try:
            header = extract_compact(id_token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeEncodeError) as exc:
            raise OidcError("the ID token is malformed") from exc
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise OidcError(f"the ID token's algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        keys = self._keys(provider, kid if isinstance(kid, str) else None)
        try:
            token = jwt.decode(id_token, keys, algorithms=list(ALLOWED_ALGORITHMS))
        except JoseError as exc:
            raise OidcError(f"the ID token's signature does not verify: {exc.error}") from exc
        claims = dict(token.claims)
        stamp = int(now if now is not None else time.time())
        registry = jwt.JWTClaimsRegistry(
            now=stamp,
            leeway=LEEWAY_SECONDS,
            iss={"essential": True, "value": provider.issuer},
            aud={"essential": True, "value": provider.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise OidcError(
                f"the ID token is not valid here: {exc.description or exc.error}"
            ) from exc
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != provider.client_id:
            raise OidcError("the ID token names several audiences but not this client as azp")
        iat = claims.get("iat")
        if isinstance(iat, int | float) and iat > stamp + LEEWAY_SECONDS:
            raise OidcError("the ID token was issued in the future")
        return claims


class _Refused(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error

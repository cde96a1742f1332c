"""Second factors, verified: WebAuthn credentials, TOTP codes and recovery codes.

What a caller may rely on:

* ``verify_registration`` and ``verify_assertion`` return only for a response
  made for this relying party (the RP ID hash in the authenticator data is
  that of the server's public host name), from this origin (the
  ``clientDataJSON`` origin is the server's public URL exactly), answering
  the challenge the caller handed out, with the user present, and (for an
  assertion) signed by the stored public key. Anything else raises
  ``FactorRejected``.
* An assertion whose signature counter is not above the stored one (when
  either is non-zero) raises ``ClonedAuthenticator`` *after* the signature
  verified: a genuine signature with a counter that went back means two
  authenticators hold the same key.
* ``verify_totp`` accepts a code of the current time step or the one either
  side of it, and never a step at or before ``last_step``: a code, once
  accepted, is refused for the rest of its window.

Nothing here stores anything; ``controlplane/factors.py`` does, and audits.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyotp
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import bytes_to_base64url
from webauthn.helpers.exceptions import (
    InvalidAuthenticationResponse,
    InvalidRegistrationResponse,
    WebAuthnException,
)
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from hangar.errors import AuthError

__all__ = [
    "CHALLENGE_BYTES",
    "TOTP_PERIOD",
    "ClonedAuthenticator",
    "FactorRejected",
    "NewCredential",
    "RelyingParty",
    "assertion_options",
    "new_recovery_codes",
    "new_totp_secret",
    "normalize_recovery_code",
    "registration_options",
    "totp_uri",
    "verify_assertion",
    "verify_registration",
    "verify_totp",
]

CHALLENGE_BYTES = 32
TOTP_PERIOD = 30
TOTP_DIGITS = 6
# A code of the step before or after the current one is accepted (clock drift).
TOTP_DRIFT_STEPS = 1
# What a browser may send back: a credential is a few KiB at most.
MAX_CREDENTIAL_JSON = 64 << 10


class FactorRejected(AuthError):
    """A second factor that did not verify (the message never says which part failed)."""


class ClonedAuthenticator(FactorRejected):
    """A valid signature whose counter went back: the credential exists twice."""


@dataclass(frozen=True)
class RelyingParty:
    """The WebAuthn relying party: the server's public host name and origin."""

    id: str
    origin: str
    name: str = "Hangar"

    @classmethod
    def from_public_url(cls, url: str) -> RelyingParty:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{url!r} is not an https origin")
        return cls(id=parts.hostname, origin=f"{parts.scheme}://{parts.netloc}")


@dataclass(frozen=True)
class NewCredential:
    credential_id: str  # base64url
    public_key: bytes  # COSE
    sign_count: int
    aaguid: str


def _credential(payload: object) -> dict[str, Any]:
    """A credential as the browser's JSON; FactorRejected if it is not one."""
    if isinstance(payload, str):
        if len(payload) > MAX_CREDENTIAL_JSON:
            raise FactorRejected("the security key's answer is too large")
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise FactorRejected("the security key's answer is not JSON") from exc
    if not isinstance(payload, dict):
        raise FactorRejected("the security key's answer is not a credential")
    if len(json.dumps(payload)) > MAX_CREDENTIAL_JSON:
        raise FactorRejected("the security key's answer is too large")
    return payload


def registration_options(
    rp: RelyingParty,
    *,
    user_handle: bytes,
    email: str,
    challenge: bytes,
    exclude: list[str],
) -> dict[str, Any]:
    """``publicKey`` options for ``navigator.credentials.create`` (as JSON-ready data)."""
    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_name=email,
        user_id=user_handle,
        challenge=challenge,
        timeout=120_000,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=_b64url_bytes(c)) for c in exclude],
    )
    result: dict[str, Any] = json.loads(options_to_json(options))
    return result


def verify_registration(rp: RelyingParty, payload: object, challenge: bytes) -> NewCredential:
    """The new credential, if the browser's answer is for this RP, origin and challenge."""
    credential = _credential(payload)
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
        )
    except (InvalidRegistrationResponse, WebAuthnException, ValueError, KeyError) as exc:
        raise FactorRejected(f"the security key was not registered: {_reason(exc)}") from exc
    return NewCredential(
        credential_id=bytes_to_base64url(verified.credential_id),
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        aaguid=str(verified.aaguid),
    )


def assertion_options(rp: RelyingParty, *, challenge: bytes, allow: list[str]) -> dict[str, Any]:
    """``publicKey`` options for ``navigator.credentials.get`` (as JSON-ready data)."""
    options = generate_authentication_options(
        rp_id=rp.id,
        challenge=challenge,
        timeout=120_000,
        allow_credentials=[PublicKeyCredentialDescriptor(id=_b64url_bytes(c)) for c in allow],
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    result: dict[str, Any] = json.loads(options_to_json(options))
    return result


def assertion_credential_id(payload: object) -> str:
    """The credential id an assertion claims (not verified: only to find the stored key)."""
    credential = _credential(payload)
    raw = credential.get("id")
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,1400}", raw):
        raise FactorRejected("the security key's answer names no credential")
    return raw


def verify_assertion(
    rp: RelyingParty,
    payload: object,
    *,
    challenge: bytes,
    public_key: bytes,
    stored_count: int,
) -> int:
    """The authenticator's new signature counter, if the assertion verifies.

    ``ClonedAuthenticator`` when the signature is good but the counter did
    not move forward (either counter non-zero).
    """
    credential = _credential(payload)
    try:
        # The counter is checked below, after the signature, so a counter
        # that went back is told apart from a forged answer.
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            credential_public_key=public_key,
            credential_current_sign_count=0,
        )
    except (InvalidAuthenticationResponse, WebAuthnException, ValueError, KeyError) as exc:
        raise FactorRejected(f"the security key's answer did not verify: {_reason(exc)}") from exc
    new_count = verified.new_sign_count
    if (new_count or stored_count) and new_count <= stored_count:
        raise ClonedAuthenticator(
            f"the security key's signature counter went back ({new_count} after "
            f"{stored_count}): it may have been cloned, so it was disabled",
            hint="enrol a new security key; use a recovery code to get in meanwhile",
        )
    return new_count


def _reason(exc: Exception) -> str:
    """The library's reason, short and on one line (it names the check, not secrets)."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return text[:200] or type(exc).__name__


def _b64url_bytes(value: str) -> bytes:
    from webauthn.helpers import base64url_to_bytes

    return base64url_to_bytes(value)


def new_totp_secret() -> str:
    """A fresh TOTP secret: 160 random bits in base32, as authenticator apps expect."""
    return pyotp.random_base32(length=32)


def totp_uri(secret: str, *, email: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(
        name=email, issuer_name=issuer
    )


def verify_totp(secret: str, code: str, *, last_step: int | None, now: float | None = None) -> int:
    """The time step ``code`` belongs to; FactorRejected if none near now, or already used."""
    code = code.strip().replace(" ", "")
    if not re.fullmatch(rf"[0-9]{{{TOTP_DIGITS}}}", code):
        raise FactorRejected(f"a TOTP code is {TOTP_DIGITS} digits")
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD)
    current = int((time.time() if now is None else now) // TOTP_PERIOD)
    matched = None
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        # Every candidate is compared, so the time taken says nothing of which matched.
        if hmac.compare_digest(totp.generate_otp(step), code) and matched is None:
            matched = step
    if matched is None:
        raise FactorRejected("the TOTP code is not valid")
    if last_step is not None and matched <= last_step:
        raise FactorRejected(
            "this TOTP code was already used", hint="wait for the next code of your app"
        )
    return matched


RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """Codes like ``k3xm-9pqa-7hwe-2ntc``: 16 characters of 31, about 79 bits each."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(16))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def normalize_recovery_code(code: str) -> str:
    """The code as issued, whatever case or separators it was typed with."""
    raw = re.sub(r"[\s-]", "", code.strip().lower())
    if not re.fullmatch(rf"[{_RECOVERY_ALPHABET}]{{16}}", raw):
        raise FactorRejected("that is not a recovery code")
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))

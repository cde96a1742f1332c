"""A host's own key and certificate requests, on the agent's side.

The key is made on the host and never leaves it: the control plane sees only
the certificate request. The files are written 0600.
"""

from __future__ import annotations

import datetime as dt
import hmac

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hangar.errors import IntegrityError

__all__ = ["certificate_window", "csr_for", "new_host_key", "pin_matches"]


def new_host_key() -> bytes:
    """A fresh P-256 private key, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def csr_for(key_pem: bytes, name: str) -> bytes:
    """A certificate request for ``key_pem``, PEM. The CA decides the certificate's name."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def certificate_window(cert_pem: bytes) -> tuple[dt.datetime, dt.datetime]:
    """(not before, not after) of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def pin_matches(ca_pem: bytes, pin: str) -> None:
    """Raise IntegrityError unless ``ca_pem``'s SHA-256 fingerprint is ``pin``."""
    try:
        cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise IntegrityError("the server sent no valid CA certificate") from exc
    actual = cert.fingerprint(hashes.SHA256()).hex()
    if not hmac.compare_digest(actual, pin.lower()):
        raise IntegrityError(
            "the server's CA certificate does not match the join token's pin",
            hint="check --api: this is not the installation that made the token",
        )

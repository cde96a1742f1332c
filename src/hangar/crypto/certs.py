"""Edge certificates: keys and CSRs for ACME, checks on imported ones, the default one.

Everything here touches private keys, which is why it lives in ``crypto/``.
What a caller may rely on: ``inspect_bundle`` raises ``ValidationError`` unless
the chain parses, its leaf is currently valid, covers the host name and
matches the private key; ``new_key_pem`` makes an ECDSA P-256 key (the
Mozilla intermediate profile's preferred certificate type).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import itertools
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from josepy.jwk import JWKEC

from hangar.errors import KeyMaterialError, ValidationError

__all__ = [
    "CertInfo",
    "account_jwk",
    "csr_pem",
    "info_of",
    "inspect_bundle",
    "key_pem_of",
    "new_key_pem",
    "parse_chain",
    "self_signed_pem",
]


@dataclass(frozen=True)
class CertInfo:
    """What ``certs show`` tells about a certificate (no key material)."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serial: str
    fingerprint: str


def new_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def key_pem_of(key_pem: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """The private key in ``key_pem``; ValidationError unless an EC or RSA ≥ 2048 key."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValidationError("the private key is not an unencrypted PEM private key") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValidationError(f"an RSA key of {key.key_size} bits is too weak (2048 at least)")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise ValidationError(f"curve {key.curve.name} is not P-256 or P-384")
        return key
    raise ValidationError("the private key must be ECDSA (P-256, P-384) or RSA")


def parse_chain(fullchain_pem: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(fullchain_pem.encode())
    except ValueError as exc:
        raise ValidationError("the certificate chain is not PEM certificates") from exc
    if not chain:
        raise ValidationError("the certificate chain is empty")
    return chain


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(ext.value.get_values_for_type(x509.DNSName))


def _covers(sans: tuple[str, ...], hostname: str) -> bool:
    for name in sans:
        name = name.lower()
        if name == hostname:
            return True
        # A wildcard covers exactly one label.
        if (
            name.startswith("*.")
            and fnmatch.fnmatchcase(hostname, name)
            and hostname.count(".") == name.count(".")
        ):
            return True
    return False


def info_of(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=_sans(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=format(cert.serial_number, "x"),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def inspect_bundle(
    hostname: str, fullchain_pem: str, key_pem: str, *, now: dt.datetime | None = None
) -> CertInfo:
    """Check a chain and key for ``hostname``; raise ValidationError saying what is wrong."""
    now = now or dt.datetime.now(dt.UTC)
    chain = parse_chain(fullchain_pem)
    leaf = chain[0]
    key = key_pem_of(key_pem)
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValidationError("the private key does not belong to the certificate")
    if not _covers(_sans(leaf), hostname):
        raise ValidationError(
            f"the certificate does not name {hostname} (it names {', '.join(_sans(leaf)) or '-'})"
        )
    if leaf.not_valid_after_utc <= now:
        raise ValidationError(f"the certificate expired at {leaf.not_valid_after_utc:%Y-%m-%d}")
    if leaf.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise ValidationError("the certificate is not valid yet")
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ValidationError(
                "the chain is out of order: each certificate must be issued by the next"
            ) from exc
    return info_of(leaf)


def self_signed_pem(common_name: str, *, days: int = 3650) -> str:
    """A key and a self-signed certificate naming only ``common_name``, as one PEM.

    The edge serves it to a client whose SNI no app holds, so it must name
    nothing internal and belong to no tenant.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key_pem.decode()


def account_jwk(key_pem: str) -> JWKEC:
    """The ACME account's key as a JWK, for signing requests (ES256)."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError("the ACME account key does not parse") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyMaterialError("the ACME account key is not an ECDSA key")
    return JWKEC(key=key)


def csr_pem(key_pem: str, hostname: str) -> bytes:
    """A certificate signing request for ``hostname`` (its only name), signed by the key."""
    key = key_pem_of(key_pem)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)

"""Hangar's internal certificate authority.

The CA signs the API's TLS certificate now and agents' client certificates
later. Its private key is stored wrapped by the KEK (``ca.key.wrapped``); the
certificate is public (``ca.crt``) and is what clients pin.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hangar.crypto.keyring import Keyring
from hangar.crypto.peercert import HOST_URI_PREFIX, SCRAPER_URI_PREFIX
from hangar.errors import ValidationError
from hangar.hostfs import write_private

__all__ = ["InternalCA"]

_CA_PURPOSE = "internal-ca-key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class InternalCA:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @classmethod
    def create(cls, name: str) -> InternalCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} internal CA")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def save(self, directory: Path, keyring: Keyring) -> None:
        pem_key = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(directory / "ca.key.wrapped", keyring.wrap(pem_key, purpose=_CA_PURPOSE))
        (directory / "ca.crt").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @classmethod
    def load(cls, directory: Path, keyring: Keyring) -> InternalCA:
        blob = (directory / "ca.key.wrapped").read_bytes()
        key = serialization.load_pem_private_key(
            keyring.unwrap(blob, purpose=_CA_PURPOSE), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        return cls(key, cert)

    def issue_server_cert(self, hostnames: list[str], *, days: int = 397) -> tuple[bytes, bytes]:
        """Issue a TLS server certificate; returns (cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate (DER), hex: what a join token pins."""
        return self.cert.fingerprint(hashes.SHA256()).hex()

    def issue_host_cert(
        self, csr_pem: bytes, host_id: str, *, lifetime: dt.timedelta
    ) -> x509.Certificate:
        """Sign a host's CSR as a client certificate naming ``host_id``.

        Only the CSR's public key is used: the name, usage and lifetime come
        from here, so a CSR cannot ask for a CA certificate or another host.
        """
        return self._issue_client(csr_pem, host_id, HOST_URI_PREFIX + host_id, lifetime)

    def issue_scraper_cert(
        self, csr_pem: bytes, name: str, *, lifetime: dt.timedelta
    ) -> x509.Certificate:
        """Sign a metrics scraper's CSR as a client certificate naming ``name``.

        It names no host: the agents' API refuses it, and only the metrics
        listener over mutual TLS accepts it.
        """
        return self._issue_client(csr_pem, name, SCRAPER_URI_PREFIX + name, lifetime)

    def _issue_client(
        self, csr_pem: bytes, common_name: str, uri: str, lifetime: dt.timedelta
    ) -> x509.Certificate:
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise ValidationError("the certificate request is not a PEM CSR") from exc
        if not csr.is_signature_valid:
            raise ValidationError("the certificate request's signature does not verify")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise ValidationError("a client key must be ECDSA (P-256 or stronger) or Ed25519")
        if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size < 256:
            raise ValidationError("a client key must be ECDSA (P-256 or stronger) or Ed25519")
        now = _now()
        # A little slack for clocks; small against the lifetime, whose last third
        # is when a host renews.
        slack = min(dt.timedelta(minutes=5), lifetime * 0.05)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - slack)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
            .sign(self._key, hashes.SHA256())
        )

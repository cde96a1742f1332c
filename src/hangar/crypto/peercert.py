"""Hosts' client certificates, read: who a peer is, and what the CA issued.

A joined host is known by the client certificate the internal CA gave it:
the certificate names the host by one ``hangar://host/<id>`` URI in its
subjectAltName, and the store records its serial (lowercase hex, no leading
zeros) so a removed host or a replaced certificate stops working. This module
is the one place that reads those two facts out of a certificate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hangar.errors import AuthError

__all__ = [
    "HOST_URI_PREFIX",
    "SCRAPER_URI_PREFIX",
    "IssuedCert",
    "PeerIdentity",
    "host_id_of",
    "scraper_of",
    "serial_hex",
]

# A host's client certificate names it by this URI in its subjectAltName.
HOST_URI_PREFIX = "hangar://host/"
# A metrics scraper's (a Prometheus on another host) names it by this one.
SCRAPER_URI_PREFIX = "hangar://metrics/"


def serial_hex(cert: x509.Certificate) -> str:
    """The certificate's serial as the store records it: lowercase hex."""
    return format(cert.serial_number, "x")


def _named(cert: x509.Certificate, prefix: str) -> str | None:
    """The one name under ``prefix`` in the certificate's URIs; None if none or several."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    names = [u.removeprefix(prefix) for u in uris if u.startswith(prefix)]
    return names[0] if len(names) == 1 else None


def host_id_of(cert: x509.Certificate) -> str | None:
    """The host a client certificate names, or None if it names none or several."""
    return _named(cert, HOST_URI_PREFIX)


def scraper_of(cert: x509.Certificate) -> str | None:
    """The metrics scraper a client certificate names, or None (a host's, or no one's)."""
    if host_id_of(cert) is not None:
        return None
    return _named(cert, SCRAPER_URI_PREFIX)


@dataclass(frozen=True)
class PeerIdentity:
    """Who a verified client certificate says its holder is.

    This reads; it does not verify. TLS has already checked the chain to the
    internal CA, the dates and the client-auth usage; the caller still checks
    that the store accepts ``serial`` for ``host_id``. ``host_id`` is None
    when the certificate names no single host, which no store row matches.
    """

    host_id: str | None
    serial: str

    @classmethod
    def from_der(cls, der: bytes) -> PeerIdentity:
        """The identity in a DER certificate; AuthError if it is not one."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise AuthError("the client certificate is malformed") from exc
        return cls.from_cert(cert)

    @classmethod
    def from_cert(cls, cert: x509.Certificate) -> PeerIdentity:
        return cls(host_id=host_id_of(cert), serial=serial_hex(cert))


class IssuedCert:
    """A client certificate the CA just issued, in the forms the store and the host need."""

    def __init__(self, cert: x509.Certificate) -> None:
        self.cert = cert
        self.pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.serial = serial_hex(cert)
        self.expires_at: dt.datetime = cert.not_valid_after_utc

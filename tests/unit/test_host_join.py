"""Join tokens, host certificates, the assignment wire form and blob transfer."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from hangar.contract.assignments import Assignment, CheckSpec
from hangar.crypto.ca import InternalCA
from hangar.crypto.hostcert import certificate_window, csr_for, new_host_key, pin_matches
from hangar.crypto.peercert import IssuedCert, PeerIdentity, host_id_of
from hangar.domain.jointoken import JoinToken, format_join_token, parse_join_token
from hangar.domain.reconcile import RestartPolicy
from hangar.errors import AuthError, IntegrityError, ValidationError
from hangar.images.oci import receive_blob

PIN = "ab" * 32


def test_join_tokens_round_trip_and_malformed_ones_are_refused() -> None:
    token = JoinToken("jt_0123456789abcdef", "s" * 43, PIN)
    assert parse_join_token(format_join_token(token)) == token
    for bad in ("", "hjt1", format_join_token(token)[:-1], "hjt2" + format_join_token(token)[4:]):
        with pytest.raises(ValidationError, match="not a Hangar join token"):
            parse_join_token(bad)


def test_a_host_certificate_takes_only_the_key_from_the_request() -> None:
    ca = InternalCA.create("test")
    lifetime = dt.timedelta(hours=1)
    cert = ca.issue_host_cert(csr_for(new_host_key(), "admin"), "host_x", lifetime=lifetime)
    assert host_id_of(cert) == "host_x"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host_x"
    start, end = certificate_window(cert.public_bytes(serialization.Encoding.PEM))
    # Renewal is at two thirds of the lifetime: the back-dating must stay small.
    assert end - start < lifetime * 1.1
    pin_matches(ca.cert.public_bytes(serialization.Encoding.PEM), ca.fingerprint())
    with pytest.raises(IntegrityError, match="pin"):
        pin_matches(ca.cert.public_bytes(serialization.Encoding.PEM), PIN)


def _self_signed(uris: list[str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x0ABC)
        .not_valid_before(dt.datetime.now(dt.UTC))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    )
    if uris:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_a_peer_is_known_by_the_host_its_certificate_names_and_its_serial() -> None:
    ca = InternalCA.create("test")
    cert = ca.issue_host_cert(
        csr_for(new_host_key(), "admin"), "host_x", lifetime=dt.timedelta(hours=1)
    )
    peer = PeerIdentity.from_der(cert.public_bytes(serialization.Encoding.DER))
    # The serial in the form the store records: lowercase hex, no leading zeros.
    assert peer == PeerIdentity(host_id="host_x", serial=format(cert.serial_number, "x"))
    assert IssuedCert(cert).serial == peer.serial
    assert PeerIdentity.from_cert(_self_signed([])).serial == "abc"


@pytest.mark.parametrize(
    "uris",
    [
        [],
        ["https://example.test/"],
        ["hangar://host/host_a", "hangar://host/host_b"],
    ],
)
def test_a_certificate_naming_no_single_host_names_none(uris: list[str]) -> None:
    cert = _self_signed(uris)
    assert host_id_of(cert) is None
    assert PeerIdentity.from_der(cert.public_bytes(serialization.Encoding.DER)).host_id is None


def test_a_malformed_peer_certificate_is_refused() -> None:
    for der in (b"", b"not a certificate", b"\x30\x03\x02\x01\x01"):
        with pytest.raises(AuthError, match="malformed"):
            PeerIdentity.from_der(der)


def test_bad_certificate_requests_are_refused() -> None:
    ca = InternalCA.create("test")
    with pytest.raises(ValidationError, match="not a PEM CSR"):
        ca.issue_host_cert(b"hello", "host_x", lifetime=dt.timedelta(hours=1))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # RSA: refused
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(weak, hashes.SHA256())
    )
    with pytest.raises(ValidationError, match="ECDSA"):
        ca.issue_host_cert(
            csr.public_bytes(serialization.Encoding.PEM), "host_x", lifetime=dt.timedelta(hours=1)
        )


def test_assignments_survive_the_wire() -> None:
    want = Assignment(
        machine_id="m_1",
        app="web",
        version=3,
        state="started",
        image="oci:/images/web:latest",
        args=["httpd", "-f"],
        env={"A": "1"},
        restart=RestartPolicy("always", 3),
        checks=[CheckSpec("http-0", "http", 8080, headers={"X": "y"})],
        image_digest="sha256:" + "0" * 64,
    )
    assert Assignment.from_json(want.to_json()) == want
    with pytest.raises(ValidationError, match="malformed assignment"):
        Assignment.from_json({"machine_id": "m_1", "surprise": True})


def test_a_received_blob_is_kept_only_if_it_is_whole_and_right(tmp_path: Path) -> None:
    data = b"layer bytes" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs = tmp_path / "blobs/sha256"
    with pytest.raises(IntegrityError, match="does not match"):
        receive_blob(tmp_path, digest, len(data), [data[:-1] + b"X"])
    with pytest.raises(IntegrityError, match="larger than"):
        receive_blob(tmp_path, digest, len(data) - 1, [data])
    with pytest.raises(IntegrityError, match="has 10 bytes"):
        receive_blob(tmp_path, digest, len(data), [data[:10]])
    assert not any(blobs.iterdir())  # nothing partial left behind
    receive_blob(tmp_path, digest, len(data), [data[:5], data[5:]])
    assert (blobs / digest.removeprefix("sha256:")).read_bytes() == data

"""Mesh input checks and the peer file (pure parts of net.wireguard)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from hangar.contract.mesh import Peer
from hangar.crypto.wgkeys import new_keypair
from hangar.errors import ValidationError
from hangar.net.wireguard import Mesh, interface_name, validate_endpoint, validate_public_key


@pytest.mark.parametrize(
    "bad", ["", "not base64!", base64.b64encode(b"short").decode(), "A" * 44, "a" * 100]
)
def test_malformed_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        validate_public_key(bad)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "10.0.0.1",
        "10.0.0.1:0",
        "10.0.0.1:70000",
        "[fd00::1",
        "[not-v6]:51820",
        "host name:51820",
        "fd00::1:51820",
        "-bad.example:51820",
        "x:y",
    ],
)
def test_malformed_endpoints_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        validate_endpoint(bad)


def test_good_input_passes() -> None:
    _, public = new_keypair()
    assert validate_public_key(public) == public
    for good in ("10.0.0.1:51820", "[fd00::1]:51820", "mesh-1.example.com:51820"):
        assert validate_endpoint(good) == good


def test_interface_names_fit_and_differ() -> None:
    names = {interface_name(f"host_{i}") for i in range(100)}
    assert len(names) == 100 and all(len(n) <= 15 for n in names)


def test_the_peer_file(tmp_path: Path) -> None:
    mesh = Mesh("host_a", tmp_path)
    private, _ = new_keypair()
    mesh.key_file.write_text(private + "\n")
    _, other = new_keypair()
    _, laptop = new_keypair()
    text = mesh._config(
        (
            Peer("h2", other, "10.0.0.2:51820", ("fd00:0:1:2::/64", "fd00:0:2:2::/64")),
            Peer("peer:laptop", laptop, "", ("fd00:0:1:1::ffff:1/128",)),
        )
    )
    assert f"PrivateKey = {private}" in text and "ListenPort = 51820" in text
    assert "AllowedIPs = fd00:0:1:2::/64, fd00:0:2:2::/64" in text
    # A person's device calls in: no endpoint for it, and no keepalive toward it.
    laptop_part = text.split(laptop, 1)[1]
    assert "Endpoint" not in laptop_part and "AllowedIPs = fd00:0:1:1::ffff:1/128" in laptop_part

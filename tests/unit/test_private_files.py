"""Files that hold a secret are written 0600 through the one private-file writer."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hangar.cli.client import save_login
from hangar.config.settings import ClientSettings, client_config_path
from hangar.crypto.wgkeys import new_keypair
from hangar.net import wireguard
from hangar.net.wireguard import Mesh, Peer


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_login_file_is_private_even_if_it_was_loose() -> None:
    path = client_config_path()
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text("{}")
    os.chmod(path, 0o644)
    assert save_login(ClientSettings(token="tok-canary")) == path
    assert _mode(path) == 0o600
    assert json.loads(path.read_text())["token"] == "tok-canary"


def test_the_mesh_key_is_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(argv: Sequence[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        out = b"generated-key\n" if list(argv) == ["wg", "genkey"] else b"public\n"
        return subprocess.CompletedProcess(list(argv), 0, out, b"")

    monkeypatch.setattr(wireguard.hostcmd, "run", run)
    mesh = Mesh("host_a", tmp_path / "keys")
    assert mesh.public_key() == "public"
    assert _mode(mesh.key_file) == 0o600 and mesh.key_file.read_bytes() == b"generated-key\n"
    assert _mode(mesh.key_file.parent) == 0o700


def test_the_mesh_configuration_is_private_and_removed_after_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = Mesh("host_a", tmp_path)
    private, _ = new_keypair()
    mesh.key_file.write_text(private + "\n")
    os.chmod(mesh.key_file, 0o600)
    seen: list[tuple[int, str]] = []

    def run(argv: Sequence[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        if list(argv[:2]) == ["wg", "syncconf"]:
            conf = Path(argv[3])
            seen.append((_mode(conf), conf.read_text()))
        return subprocess.CompletedProcess(list(argv), 0, b"", b"")

    monkeypatch.setattr(wireguard.hostcmd, "run", run)
    monkeypatch.setattr(wireguard, "link_exists", lambda name: True)
    _, other = new_keypair()
    assert mesh.apply([Peer("h2", other, "10.0.0.2:51820", ("fd00:0:1:2::/64",))])
    [(mode, text)] = seen
    assert mode == 0o600 and f"PrivateKey = {private}" in text
    # Nothing holding the private key is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.key"]

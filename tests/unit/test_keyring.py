from __future__ import annotations

import os
from pathlib import Path

import pytest

from hangar.config.settings import ServerSettings
from hangar.controlplane.state import kek_provider
from hangar.crypto.kek import (
    PROVIDERS,
    EnvKekProvider,
    FileKekProvider,
    Pkcs11KekProvider,
    generate_kek_file,
    provider_for,
)
from hangar.crypto.keyring import Keyring
from hangar.errors import ConfigError, IntegrityError, KeyMaterialError


@pytest.fixture
def kek(tmp_path: Path) -> Path:
    path = tmp_path / "kek.key"
    generate_kek_file(path)
    return path


def test_kek_file_is_private(kek: Path) -> None:
    assert (kek.stat().st_mode & 0o777) == 0o600


def test_generate_refuses_to_overwrite(kek: Path) -> None:
    with pytest.raises(FileExistsError):
        generate_kek_file(kek)


def test_wrap_roundtrip_and_nonce_is_fresh(kek: Path) -> None:
    ring = Keyring(FileKekProvider(kek))
    a, b = ring.wrap(b"secret", purpose="p"), ring.wrap(b"secret", purpose="p")
    assert a != b
    assert ring.unwrap(a, purpose="p") == b"secret"
    assert b"secret" not in a


def test_purpose_binds_the_blob(kek: Path) -> None:
    ring = Keyring(FileKekProvider(kek))
    blob = ring.wrap(b"secret", purpose="org-root-key:a")
    with pytest.raises(IntegrityError):
        ring.unwrap(blob, purpose="org-root-key:b")


def test_flipped_byte_fails_authentication(kek: Path) -> None:
    ring = Keyring(FileKekProvider(kek))
    blob = bytearray(ring.wrap(b"secret", purpose="p"))
    blob[-1] ^= 1
    with pytest.raises(IntegrityError):
        ring.unwrap(bytes(blob), purpose="p")


def test_wrong_kek_is_named(kek: Path, tmp_path: Path) -> None:
    blob = Keyring(FileKekProvider(kek)).wrap(b"secret", purpose="p")
    other = tmp_path / "other.key"
    generate_kek_file(other)
    with pytest.raises(KeyMaterialError, match="another key-encryption key"):
        Keyring(FileKekProvider(other)).unwrap(blob, purpose="p")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_loose_kek_file_is_refused(kek: Path, mode: int) -> None:
    os.chmod(kek, mode)
    with pytest.raises(KeyMaterialError, match="readable by its owner only") as info:
        FileKekProvider(kek).load()
    assert info.value.hint == f"chmod 600 {kek}"


@pytest.mark.parametrize("content", ["nothex", "00" * 16, ""])
def test_malformed_kek_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyMaterialError):
        FileKekProvider(path).load()


def test_missing_kek_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError) as info:
        FileKekProvider(tmp_path / "none").load()
    assert info.value.hint and "server init" in info.value.hint


def test_rotation_keeps_old_blobs_readable_until_the_old_key_is_retired(kek: Path) -> None:
    ring = Keyring(FileKekProvider(kek))
    old_id, old_blob = ring.kek_id, ring.wrap(b"secret", purpose="p")
    new_id = ring.rotate()
    assert new_id != old_id and len(kek.read_text().split()) == 2
    assert (kek.stat().st_mode & 0o777) == 0o600
    assert ring.unwrap(old_blob, purpose="p") == b"secret"  # still readable
    new_blob = ring.wrap(b"secret", purpose="p")
    assert ring.wrapped_by_current(new_blob) and not ring.wrapped_by_current(old_blob)
    ring.retire_others()
    assert len(kek.read_text().split()) == 1
    with pytest.raises(KeyMaterialError, match="another key-encryption key"):
        ring.unwrap(old_blob, purpose="p")
    # A fresh start reads only the new key, and it opens what it wrapped.
    assert Keyring(FileKekProvider(kek)).unwrap(new_blob, purpose="p") == b"secret"


def test_the_env_provider_takes_the_key_out_of_the_environment(
    kek: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KEK_HEX", kek.read_text().strip())
    ring = Keyring(EnvKekProvider("TEST_KEK_HEX"))
    assert "TEST_KEK_HEX" not in os.environ  # no child process inherits it
    assert ring.kek_id == Keyring(FileKekProvider(kek)).kek_id
    with pytest.raises(KeyMaterialError, match="is not set"):
        Keyring(EnvKekProvider("TEST_KEK_HEX"))
    monkeypatch.setenv("TEST_KEK_HEX", "zz")
    with pytest.raises(KeyMaterialError, match="not hex"):
        Keyring(EnvKekProvider("TEST_KEK_HEX"))


class _Settings:
    """Just the fields a KEK provider is built from."""

    def __init__(self, tmp_path: Path) -> None:
        self.effective_kek_file = tmp_path / "kek.key"
        self.kek_env = "TEST_KEK_HEX"
        self.pkcs11_module = tmp_path / "libsofthsm2.so"
        self.pkcs11_token = "hangar"
        self.effective_pin_file = tmp_path / "pkcs11.pin"
        self.pkcs11_key_label = "hangar-kek"


def test_each_provider_is_built_by_its_name(tmp_path: Path) -> None:
    settings = _Settings(tmp_path)
    assert set(PROVIDERS) == {"file", "env", "pkcs11"}
    file = provider_for("file", settings)
    assert isinstance(file, FileKekProvider) and file.path == settings.effective_kek_file
    env = provider_for("env", settings)
    assert isinstance(env, EnvKekProvider) and env.name == "TEST_KEK_HEX"
    hsm = provider_for("pkcs11", settings)
    assert isinstance(hsm, Pkcs11KekProvider)
    assert (hsm.module, hsm.token_label, hsm.pin_file, hsm.label) == (
        settings.pkcs11_module,
        "hangar",
        settings.effective_pin_file,
        "hangar-kek",
    )


def test_an_unknown_provider_is_refused_not_replaced_by_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key-encryption key provider 'kms'"):
        provider_for("kms", _Settings(tmp_path))


def test_the_server_settings_choose_the_provider(tmp_path: Path) -> None:
    default = kek_provider(ServerSettings(data_dir=tmp_path))
    assert isinstance(default, FileKekProvider) and default.path == tmp_path / "kek.key"
    env = kek_provider(ServerSettings(data_dir=tmp_path, kek_provider="env", kek_env="MY_KEK"))
    assert isinstance(env, EnvKekProvider) and env.name == "MY_KEK"
    hsm = kek_provider(ServerSettings(data_dir=tmp_path, kek_provider="pkcs11"))
    assert isinstance(hsm, Pkcs11KekProvider) and hsm.pin_file == tmp_path / "pkcs11.pin"


def test_rotation_replaces_the_file_whole_and_private(kek: Path) -> None:
    os.chmod(kek, 0o600)
    before = kek.stat().st_ino
    Keyring(FileKekProvider(kek)).rotate()
    # A new inode: the file was renamed over, never truncated in place.
    assert kek.stat().st_ino != before and (kek.stat().st_mode & 0o777) == 0o600
    assert not kek.with_name(kek.name + ".new").exists()

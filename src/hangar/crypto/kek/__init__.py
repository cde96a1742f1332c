"""Key-encryption key providers, one module each, chosen by name.

- ``file`` (``FileKekProvider``): hex in a file that must be mode 0600 (the default);
- ``env`` (``EnvKekProvider``): hex in an environment variable, removed from the
  environment once read so no child process inherits it;
- ``pkcs11`` (``Pkcs11KekProvider``): an AES key inside an HSM (or SoftHSM) that
  never leaves it. Wrapping and unwrapping happen in the token.

``provider_for(name, settings)`` builds the one a name asks for, and refuses a
name it does not know rather than fall back to a weaker one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from hangar.crypto.kek.base import Kek, KekProvider
from hangar.crypto.kek.env import EnvKekProvider
from hangar.crypto.kek.file import FileKekProvider, generate_kek_file
from hangar.crypto.kek.pkcs11 import Pkcs11KekProvider
from hangar.errors import ConfigError

__all__ = [
    "PROVIDERS",
    "EnvKekProvider",
    "FileKekProvider",
    "Kek",
    "KekProvider",
    "KekSettings",
    "Pkcs11KekProvider",
    "generate_kek_file",
    "provider_for",
]


class KekSettings(Protocol):
    """The settings a provider is built from (the server's settings have them all)."""

    @property
    def effective_kek_file(self) -> Path: ...
    @property
    def kek_env(self) -> str: ...
    @property
    def pkcs11_module(self) -> Path: ...
    @property
    def pkcs11_token(self) -> str: ...
    @property
    def effective_pin_file(self) -> Path: ...
    @property
    def pkcs11_key_label(self) -> str: ...


def _file(settings: KekSettings) -> KekProvider:
    return FileKekProvider(settings.effective_kek_file)


def _env(settings: KekSettings) -> KekProvider:
    return EnvKekProvider(settings.kek_env)


def _pkcs11(settings: KekSettings) -> KekProvider:
    return Pkcs11KekProvider(
        settings.pkcs11_module,
        settings.pkcs11_token,
        settings.effective_pin_file,
        settings.pkcs11_key_label,
    )


# Every provider by the name settings use for it.
PROVIDERS: Mapping[str, Callable[[KekSettings], KekProvider]] = {
    "file": _file,
    "env": _env,
    "pkcs11": _pkcs11,
}


def provider_for(name: str, settings: KekSettings) -> KekProvider:
    """The provider called ``name``, built from ``settings``; ConfigError for an unknown name."""
    factory = PROVIDERS.get(name)
    if factory is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigError(f"unknown key-encryption key provider {name!r}; known: {known}")
    return factory(settings)

"""The key-encryption key (KEK) and what it wraps.

The KEK lives outside the database. It never encrypts user data directly;
it wraps other keys (organization token root keys, the CA key, the audit
signing key, apps' data keys) with AES-256-GCM. Where it lives is a
provider's business:

- ``FileKekProvider``: hex in a file that must be mode 0600 (the default);
- ``EnvKekProvider``: hex in an environment variable, removed from the
  environment once read so no child process inherits it;
- ``Pkcs11KekProvider``: an AES key inside an HSM (or SoftHSM) that never
  leaves it. Wrapping and unwrapping happen in the token.

Wrapped format, version 1::

    0x01 | kek_id (8 bytes) | nonce (12 bytes) | ciphertext+tag

The associated data is a purpose string chosen by the caller (for example
``org-root-key:org_123``), so a wrapped blob moved to another row or file does
not unwrap. Callers may rely on: ``unwrap`` either returns exactly the bytes
given to ``wrap`` with the same purpose, or raises ``IntegrityError``.

A provider may hold several KEKs: the first wraps, every one unwraps what it
wrapped. That is how rotation stays online. A new KEK goes first, every
wrapped key is re-wrapped under it, and then the old one is retired.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hangar.errors import ConfigError, IntegrityError, KeyMaterialError

__all__ = [
    "EnvKekProvider",
    "FileKekProvider",
    "Kek",
    "KekProvider",
    "Keyring",
    "Pkcs11KekProvider",
    "generate_kek_file",
]

KEY_BYTES = 32
_VERSION = 1
_NONCE_BYTES = 12
_KID_BYTES = 8


class Kek(Protocol):
    """One key-encryption key: it seals and opens, and says which key it is."""

    key_id: bytes

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, nonce: bytes, body: bytes, aad: bytes) -> bytes:
        """The plaintext; raises InvalidTag (or IntegrityError) if it does not authenticate."""
        ...


class KekProvider(Protocol):
    """Where the key-encryption keys come from."""

    def load(self) -> list[Kek]:
        """The KEKs, the one that wraps first; KeyMaterialError saying why not."""
        ...

    def rotate(self) -> Kek:
        """Make a new KEK and put it first (the old ones still open what they wrapped)."""
        ...

    def retire(self, keep: bytes) -> None:
        """Forget every KEK but ``keep`` (once nothing is wrapped by them any more)."""
        ...


class _MemoryKek:
    """A KEK whose bytes are in this process (file and environment providers)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key_id = _kek_id(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, body: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(nonce, body, aad)


def _kek_id(kek: bytes) -> bytes:
    # A public fingerprint of the KEK so a blob says which KEK wrapped it.
    return hashlib.sha256(b"hangar-kek-id\x00" + kek).digest()[:_KID_BYTES]


def _parse_hex(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise KeyMaterialError(f"key-encryption key {where} is not hex") from exc
    if len(key) != KEY_BYTES:
        raise KeyMaterialError(
            f"key-encryption key {where} holds {len(key)} bytes, expected {KEY_BYTES}"
        )
    return key


def _write_private_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file holding ``text``."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def generate_kek_file(path: Path) -> None:
    """Write a fresh random KEK to ``path`` with mode 0600, refusing to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(KEY_BYTES).hex().encode() + b"\n")


class FileKekProvider:
    """KEKs from a hex file that only its owner may read: one per line, the current first."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        try:
            info = self.path.stat()
        except FileNotFoundError as exc:
            raise KeyMaterialError(
                f"key-encryption key file {self.path} does not exist",
                hint="run `hangar server init`, or point --kek-file at the key",
            ) from exc
        if not stat.S_ISREG(info.st_mode):
            raise KeyMaterialError(f"key-encryption key {self.path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyMaterialError(
                f"key-encryption key {self.path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                "it must be readable by its owner only",
                hint=f"chmod 600 {self.path}",
            )
        lines = [line.strip() for line in self.path.read_text().splitlines() if line.strip()]
        if not lines:
            raise KeyMaterialError(f"key-encryption key {self.path} is empty")
        return lines

    def load(self) -> list[Kek]:
        return [_MemoryKek(_parse_hex(line, str(self.path))) for line in self._lines()]

    def rotate(self) -> Kek:
        lines = self._lines()
        new = secrets.token_bytes(KEY_BYTES)
        _write_private_text(self.path, "\n".join([new.hex(), *lines]) + "\n")
        return _MemoryKek(new)

    def retire(self, keep: bytes) -> None:
        kept = [line for line in self._lines() if _kek_id(_parse_hex(line, "")) == keep]
        if not kept:
            raise KeyMaterialError("the key to keep is not in the key file")
        _write_private_text(self.path, kept[0] + "\n")


class EnvKekProvider:
    """The KEK from an environment variable (hex), taken out of the environment once read.

    Weaker than a file: the process's initial environment stays readable by
    root in /proc/<pid>/environ. Prefer the file or PKCS#11 where you can.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._keys: list[Kek] | None = None

    def load(self) -> list[Kek]:
        if self._keys is None:
            text = os.environ.pop(self.name, None)
            if text is None:
                raise KeyMaterialError(
                    f"${self.name}, which should hold the key-encryption key, is not set"
                )
            self._keys = [_MemoryKek(_parse_hex(text, f"${self.name}"))]
        return self._keys

    def rotate(self) -> Kek:
        raise ConfigError(
            "a key-encryption key from the environment cannot be rotated in place",
            hint="move it to a key file or an HSM first, or set a new one and re-initialise",
        )

    def retire(self, keep: bytes) -> None:
        raise ConfigError("a key-encryption key from the environment cannot be retired")


class _Pkcs11Kek:
    def __init__(self, provider: Pkcs11KekProvider, label: str) -> None:
        self._provider = provider
        self.label = label
        self.key_id = hashlib.sha256(b"hangar-pkcs11-kek\x00" + label.encode()).digest()[
            :_KID_BYTES
        ]

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._provider._crypt("encrypt", self.label, nonce, plaintext, aad)

    def open(self, nonce: bytes, body: bytes, aad: bytes) -> bytes:
        return self._provider._crypt("decrypt", self.label, nonce, body, aad)


class Pkcs11KekProvider:
    """KEKs that are AES keys in a PKCS#11 token; their bytes never leave it.

    Keys are found by label: ``<label>-<n>``, the highest ``n`` wrapping. The
    PIN is read from a 0600 file.
    """

    def __init__(self, module: Path, token: str, pin_file: Path, label: str) -> None:
        self.module = module
        self.token_label = token
        self.pin_file = pin_file
        self.label = label
        self._session: Any = None

    def _open(self) -> Any:
        if self._session is not None:
            return self._session
        try:
            import pkcs11
        except ImportError as exc:  # pragma: no cover - a dependency
            raise KeyMaterialError("python-pkcs11 is not installed") from exc
        try:
            info = self.pin_file.stat()
        except FileNotFoundError as exc:
            raise KeyMaterialError(f"PKCS#11 PIN file {self.pin_file} does not exist") from exc
        if info.st_mode & 0o077:
            raise KeyMaterialError(
                f"PKCS#11 PIN file {self.pin_file} must be readable by its owner only",
                hint=f"chmod 600 {self.pin_file}",
            )
        pin = self.pin_file.read_text().strip()
        try:
            lib = pkcs11.lib(str(self.module))
            token = lib.get_token(token_label=self.token_label)
            try:
                self._session = token.open(user_pin=pin, rw=True)
            except pkcs11.UserAlreadyLoggedIn:
                # PKCS#11 logs in per process: another session here already did.
                self._session = token.open(rw=True)
        except (RuntimeError, OSError, pkcs11.PKCS11Error) as exc:
            raise KeyMaterialError(
                f"cannot open PKCS#11 token {self.token_label!r} with {self.module}: "
                f"{type(exc).__name__} {exc}".strip(),
                hint="check the module path, the token label and the PIN",
            ) from exc
        return self._session

    def _labels(self) -> list[str]:
        import pkcs11

        session = self._open()
        found = []
        for key in session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY}):
            label = str(key.label or "")
            prefix, _, number = label.rpartition("-")
            if prefix == self.label and number.isdigit():
                found.append((int(number), label))
        return [label for _, label in sorted(found, reverse=True)]

    def load(self) -> list[Kek]:
        labels = self._labels()
        if not labels:
            raise KeyMaterialError(
                f"PKCS#11 token {self.token_label!r} holds no key labelled {self.label}-<n>",
                hint="`hangar server init --kek-provider pkcs11` makes the first one",
            )
        return [_Pkcs11Kek(self, label) for label in labels]

    def create(self) -> Kek:
        """The first KEK, at init, when the token has none yet."""
        if self._labels():
            raise KeyMaterialError(f"the token already holds {self.label} keys")
        return self._generate(1)

    def _generate(self, number: int) -> Kek:
        import pkcs11

        label = f"{self.label}-{number}"
        self._open().generate_key(
            pkcs11.KeyType.AES,
            256,
            label=label,
            store=True,
            template={
                pkcs11.Attribute.SENSITIVE: True,
                pkcs11.Attribute.EXTRACTABLE: False,
                pkcs11.Attribute.ENCRYPT: True,
                pkcs11.Attribute.DECRYPT: True,
            },
        )
        return _Pkcs11Kek(self, label)

    def rotate(self) -> Kek:
        labels = self._labels()
        highest = int(labels[0].rpartition("-")[2]) if labels else 0
        return self._generate(highest + 1)

    def retire(self, keep: bytes) -> None:
        import pkcs11

        for label in self._labels():
            if _Pkcs11Kek(self, label).key_id != keep:
                key = self._open().get_key(label=label, key_type=pkcs11.KeyType.AES)
                key.destroy()

    def _crypt(self, op: str, label: str, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        import pkcs11
        from pkcs11.mechanisms import GCMParams

        key = self._open().get_key(label=label, key_type=pkcs11.KeyType.AES)
        params = GCMParams(nonce, aad, 128)
        try:
            if op == "encrypt":
                return bytes(
                    key.encrypt(data, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params)
                )
            return bytes(
                key.decrypt(data, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params)
            )
        except pkcs11.PKCS11Error as exc:
            if op == "decrypt":
                raise InvalidTag() from exc
            raise KeyMaterialError(f"the PKCS#11 token refused to wrap: {exc!r}") from exc


class Keyring:
    """Wraps and unwraps keys under the KEK(s) of a provider."""

    def __init__(self, provider: KekProvider) -> None:
        self.provider = provider
        self._load()

    def _load(self) -> None:
        keks = self.provider.load()
        self._current = keks[0]
        self._by_id = {k.key_id: k for k in keks}

    @property
    def kek_id(self) -> str:
        return self._current.key_id.hex()

    @property
    def kek_ids(self) -> list[str]:
        return [kid.hex() for kid in self._by_id]

    def wrap(self, plaintext: bytes, *, purpose: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        body = self._current.seal(nonce, plaintext, purpose.encode())
        return bytes([_VERSION]) + self._current.key_id + nonce + body

    def unwrap(self, blob: bytes, *, purpose: str) -> bytes:
        header = 1 + _KID_BYTES + _NONCE_BYTES
        if len(blob) < header + 16 or blob[0] != _VERSION:
            raise IntegrityError(f"wrapped key for {purpose} is malformed")
        kid, nonce, body = blob[1 : 1 + _KID_BYTES], blob[1 + _KID_BYTES : header], blob[header:]
        kek = self._by_id.get(kid)
        if kek is None:
            raise KeyMaterialError(
                f"key for {purpose} was wrapped by another key-encryption key "
                f"({kid.hex()}, this one is {self.kek_id})",
                hint="start the server with the key-encryption key it was initialised with",
            )
        try:
            return kek.open(nonce, body, purpose.encode())
        except InvalidTag as exc:
            raise IntegrityError(f"wrapped key for {purpose} fails authentication") from exc

    def wrapped_by_current(self, blob: bytes) -> bool:
        return blob[1 : 1 + _KID_BYTES] == self._current.key_id

    def new_key(self, *, purpose: str) -> tuple[bytes, bytes]:
        """Return a fresh 32-byte key and its wrapped form."""
        key = secrets.token_bytes(KEY_BYTES)
        return key, self.wrap(key, purpose=purpose)

    def rotate(self) -> str:
        """A new KEK wraps from now on; the old ones still unwrap. Returns the new id."""
        self.provider.rotate()
        self._load()
        return self.kek_id

    def retire_others(self) -> None:
        """Forget every KEK but the current one (call once nothing else is in use)."""
        self.provider.retire(self._current.key_id)
        self._load()

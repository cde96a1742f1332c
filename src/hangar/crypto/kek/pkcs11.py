"""KEKs that are AES keys inside a PKCS#11 token (an HSM, or SoftHSM); they never leave it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from hangar.crypto.kek.base import KID_BYTES, Kek
from hangar.errors import KeyMaterialError

__all__ = ["Pkcs11KekProvider"]


class _Pkcs11Kek:
    def __init__(self, provider: Pkcs11KekProvider, label: str) -> None:
        self._provider = provider
        self.label = label
        self.key_id = hashlib.sha256(b"hangar-pkcs11-kek\x00" + label.encode()).digest()[:KID_BYTES]

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

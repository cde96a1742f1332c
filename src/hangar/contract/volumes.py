"""Volumes as they cross between the control plane and a host.

``HostVolume`` is one volume a host keeps (every volume of the host that is
not destroyed: the host deletes the files of any other). ``VolumeMount`` is
one volume a machine mounts, carried in its ``Assignment``. Neither holds a
key: a host asks for the keys of a machine it starts (``ControlPlaneLink.
volume_keys``), and gets them sealed to a one-time key, as secrets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticError
from pydantic.dataclasses import dataclass

from hangar.errors import ValidationError

__all__ = ["VOLUME_ID_PATTERN", "HostVolume", "VolumeMount"]

_STRICT = ConfigDict(extra="forbid")
VOLUME_ID_PATTERN = r"^vol_[0-9a-z]{6,30}$"
Encryption = Literal["luks2", "gocryptfs"]


@dataclass(frozen=True, config=_STRICT)
class VolumeMount:
    """A volume a machine mounts at ``destination`` (an absolute, normalized guest path)."""

    volume_id: str = Field(pattern=VOLUME_ID_PATTERN)
    name: str = Field(max_length=63)
    destination: str = Field(pattern=r"^/[\x21-\x7e]{1,511}$")
    size_mb: int = Field(ge=1, le=16 * 1024 * 1024)
    encryption: Encryption = "gocryptfs"


@dataclass(frozen=True, config=_STRICT)
class HostVolume:
    """A volume that lives on the host, at its size (the host grows it to this)."""

    volume_id: str = Field(pattern=VOLUME_ID_PATTERN)
    size_mb: int = Field(ge=1, le=16 * 1024 * 1024)
    encryption: Encryption = "gocryptfs"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostVolume:
        try:
            return _HOST_VOLUME.validate_python(dict(data))
        except PydanticError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "volume"
            raise ValidationError(f"malformed volume: {where}: {first['msg']}") from exc


_HOST_VOLUME = TypeAdapter(HostVolume)

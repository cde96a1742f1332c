"""The volume driver protocol, and where a volume's files live on a host.

Every volume of a host has:

- ``<volumes_dir>/<id>/volume.img``: a sparse file of the volume's size. It
  holds the only persistent copy of the data, as ciphertext: a LUKS2
  container (``luks2``), or an ext4 file system whose ``cipher/`` directory
  is a gocryptfs tree (``gocryptfs``). Snapshots and backups copy this
  file (or read the plaintext mount, frozen); nothing else needs copying.
- ``<volumes_dir>/<id>/handle.json``: a versioned handle (driver, size,
  created_at), so a restarted agent knows what it made.
- ``<run_dir>/<id>/data``: where the plaintext is mounted while a machine
  holds the volume, on a tmpfs path (never under ``volumes_dir``), bind-
  mounted into the machine. ``luks2`` mounts ext4 from the dm-crypt device
  there; ``gocryptfs`` mounts its FUSE file system there, over the ext4 of
  ``volume.img`` mounted at ``<run_dir>/<id>/lower``.

The key is a driver's argument, never its state: it is given to ``mount``
(and ``extend`` where the backend needs it), passed to ``cryptsetup`` or
``gocryptfs`` on stdin, and never written to a file. ``destroy`` removes
every file; the control plane has already dropped the wrapped key, so a
copy of ``volume.img`` made earlier is ciphertext nobody can open.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hangar.errors import ValidationError

__all__ = [
    "HANDLE_VERSION",
    "MIN_SIZE_MB",
    "VolumeDriver",
    "VolumeLayout",
    "VolumeSpec",
    "check_volume_id",
]

HANDLE_VERSION = 1
# ext4 with a journal needs a few MB; LUKS2's header takes 16 MB of the file.
MIN_SIZE_MB = 64
_ID = re.compile(r"^vol_[0-9a-z]{6,30}$")


def check_volume_id(volume_id: str) -> str:
    """``volume_id`` if it is a volume id (safe as a path component); else ValidationError."""
    if not _ID.fullmatch(volume_id):
        raise ValidationError(f"bad volume id {volume_id!r}")
    return volume_id


@dataclass(frozen=True)
class VolumeSpec:
    """A volume as its host needs it: which, how large, which backend."""

    id: str
    size_mb: int
    encryption: str  # the driver's name: "luks2" or "gocryptfs"


@dataclass(frozen=True)
class VolumeLayout:
    """Where a host keeps its volumes' files (persistent) and mount points (tmpfs)."""

    volumes_dir: Path
    run_dir: Path

    @classmethod
    def for_agent(cls, agent_dir: Path) -> VolumeLayout:
        """An agent's: ciphertext under ``volumes/``, plaintext mounted on its bundles tmpfs."""
        return cls(agent_dir / "volumes", agent_dir / "bundles" / ".volumes")

    def dir(self, volume_id: str) -> Path:
        return self.volumes_dir / check_volume_id(volume_id)

    def backing(self, volume_id: str) -> Path:
        """The sparse file that holds the volume's ciphertext."""
        return self.dir(volume_id) / "volume.img"

    def handle(self, volume_id: str) -> Path:
        return self.dir(volume_id) / "handle.json"

    def mount_dir(self, volume_id: str) -> Path:
        return self.run_dir / check_volume_id(volume_id)

    def plain(self, volume_id: str) -> Path:
        """Where the plaintext is mounted while a machine holds the volume."""
        return self.mount_dir(volume_id) / "data"

    def lower(self, volume_id: str) -> Path:
        """gocryptfs only: where the ext4 holding the ciphertext tree is mounted."""
        return self.mount_dir(volume_id) / "lower"

    def on_disk(self) -> list[str]:
        """Ids of the volumes that have files here."""
        if not self.volumes_dir.is_dir():
            return []
        return sorted(p.name for p in self.volumes_dir.iterdir() if _ID.fullmatch(p.name))

    def read_handle(self, volume_id: str) -> dict[str, object] | None:
        try:
            data = json.loads(self.handle(volume_id).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


class VolumeDriver(Protocol):
    """An encryption backend for volumes. Failures are HangarErrors (``CommandError``…).

    Every method is idempotent, so the reconciler may call it again after a
    crash: ``mount`` of a mounted volume returns its mount point, ``unmount``
    of an unmounted one does nothing, ``destroy`` of a missing one does nothing.
    """

    name: str
    layout: VolumeLayout

    def mount(self, spec: VolumeSpec, key: bytes, *, owner: int, group: int | None = None) -> Path:
        """Make the volume on first use, mount its plaintext and return the mount point.

        ``owner`` (a host uid, the machine's user namespace root) owns the
        top directory of a volume made now; with ``group`` (a host gid, the
        machine user's group) that group may write there too (mode 2775).
        """
        ...

    def unmount(self, volume_id: str) -> None:
        """Unmount the plaintext (and whatever is under it: loop device, dm-crypt map)."""
        ...

    def mounted(self, volume_id: str) -> bool:
        """Whether the plaintext is mounted now."""
        ...

    def extend(self, spec: VolumeSpec, key: bytes | None) -> bool:
        """Grow the volume to ``spec.size_mb``; True once done, False if it must be
        unmounted first (the reconciler then grows it at its next mount)."""
        ...

    def destroy(self, volume_id: str) -> None:
        """Unmount and delete every file of the volume."""
        ...

    def cleanup_stale(self) -> list[str]:
        """Undo what a killed agent left (a dead FUSE mount, a loop device whose
        file system is not mounted); the ids of volumes it touched."""
        ...

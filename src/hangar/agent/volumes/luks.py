"""Volumes encrypted with LUKS2 (dm-crypt, ``aes-xts-plain64``, 512-bit key).

For hosts whose kernel has device-mapper. ``volume.img`` is a sparse file
of the volume's size, attached to a loop device and formatted as LUKS2; the
volume's key (64 bytes from the control plane) opens its one key slot and is
given to ``cryptsetup`` on stdin (``--key-file -``), never in a file. The
key slot uses PBKDF2 at its minimum cost: the key is 512 random bits, which
no password-guessing cost protects further. The mapping
(``/dev/mapper/hangar-<id>``) holds an ext4, mounted at ``data``. It is
opened with ``--disable-keyring`` so that ``cryptsetup resize`` (growing a
volume in use) needs no key. ``destroy`` erases the key slots
(``cryptsetup erase``) before deleting the file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hangar import hostcmd
from hangar.agent.volumes import _mounts
from hangar.agent.volumes.base import VolumeLayout, VolumeSpec
from hangar.agent.volumes.registry import register
from hangar.errors import CommandError, IntegrityError

__all__ = ["LuksDriver", "mapper_name"]

KEY_BYTES = 64


def mapper_name(volume_id: str) -> str:
    return f"hangar-{volume_id}"


def _is_ext4(device: Path) -> bool:
    probed = hostcmd.run(["blkid", "-p", "-s", "TYPE", "-o", "value", str(device)], check=False)
    return probed.returncode == 0 and probed.stdout.strip() == b"ext4"


@register("luks2")
class LuksDriver:
    name = "luks2"

    def __init__(self, layout: VolumeLayout) -> None:
        self.layout = layout

    @staticmethod
    def unavailable() -> str | None:
        if not Path("/dev/mapper/control").exists():
            return "the kernel has no device-mapper (/dev/mapper/control is missing)"
        if shutil.which("cryptsetup") is None:
            return "cryptsetup is not installed (apt-get install cryptsetup)"
        return None

    def _device(self, volume_id: str) -> Path:
        return Path("/dev/mapper") / mapper_name(volume_id)

    def _loop_of(self, backing: Path) -> str | None:
        found = hostcmd.run(["losetup", "-j", str(backing), "-O", "NAME", "-n"], timeout=30)
        names = found.stdout.decode().split()
        return names[0] if names else None

    def mounted(self, volume_id: str) -> bool:
        return _mounts.mount_source(self.layout.plain(volume_id)) is not None

    def mount(self, spec: VolumeSpec, key: bytes, *, owner: int, group: int | None = None) -> Path:
        if len(key) != KEY_BYTES:
            raise IntegrityError(f"volume {spec.id}'s key is not a LUKS2 key")
        layout = self.layout
        plain, backing = layout.plain(spec.id), layout.backing(spec.id)
        if self.mounted(spec.id):
            return plain
        made = not _mounts.made(layout, spec)
        if made:
            # What a create killed before its LUKS2 header was written left (never
            # opened, so it holds nothing): made again from nothing.
            _mounts.discard_unmade(layout, spec.id)
            layout.dir(spec.id).mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                _mounts.make_sparse(backing, spec.size_mb)
            except BaseException:
                _mounts.discard_unmade(layout, spec.id)
                raise
        grow = not made and _mounts.fs_size_mb(layout, spec.id) < spec.size_mb
        if grow:  # extended while unmounted; kept at its size if the disk cannot hold it
            grow = _mounts.grow_file_if_room(backing, spec.size_mb)
        loop = self._loop_of(backing)
        if loop is None:
            attached = hostcmd.run(["losetup", "--find", "--show", str(backing)], timeout=60)
            loop = attached.stdout.decode().strip()
        try:
            if made:
                hostcmd.run(
                    [
                        "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
                        "--cipher", "aes-xts-plain64", "--key-size", "512",
                        "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                        "--key-file", "-", loop,
                    ],
                    input=key,
                    timeout=120,
                )  # fmt: skip
            device = self._device(spec.id)
            if not device.exists():
                hostcmd.run(
                    ["cryptsetup", "open", "--type", "luks2", "--disable-keyring",
                     "--key-file", "-", loop, mapper_name(spec.id)],
                    input=key,
                    timeout=120,
                )  # fmt: skip
            # A create killed after luksFormat left a container with no file system
            # in it (no handle yet): made now.
            unmade = not made and not layout.handle(spec.id).exists() and not _is_ext4(device)
            if made or unmade:
                _mounts.make_ext4(str(device), spec.id)
            elif grow:
                hostcmd.run(["cryptsetup", "resize", mapper_name(spec.id)], timeout=60)
                _mounts.ext4_grow(str(device), mounted=False)
            _mounts.write_handle(layout, spec)
            _mounts.mount_points(layout, spec.id, owner, plain)
            hostcmd.run(
                ["mount", "-t", "ext4", "-o", "nosuid,nodev", str(device), str(plain)],
                timeout=60,
            )
        except CommandError:
            self.unmount(spec.id)
            if made:  # a half-made volume is made again from nothing next time
                _mounts.discard_unmade(layout, spec.id)
            raise
        if made or os.stat(plain).st_uid == 0:
            # New, or made by a run killed before it gave the top to the machine's
            # root (no machine can give a file to the host's root).
            _mounts.own_top(plain, owner, group)
        return plain

    def unmount(self, volume_id: str) -> None:
        _mounts.unmount(self.layout.plain(volume_id))
        if self._device(volume_id).exists():
            hostcmd.run(["cryptsetup", "close", mapper_name(volume_id)], timeout=60)
        backing = self.layout.backing(volume_id)
        if backing.exists():
            loop = self._loop_of(backing)
            if loop is not None:
                hostcmd.run(["losetup", "-d", loop], timeout=60)

    def extend(self, spec: VolumeSpec, key: bytes | None) -> bool:
        backing = self.layout.backing(spec.id)
        if not backing.exists() or _mounts.fs_size_mb(self.layout, spec.id) >= spec.size_mb:
            return True
        if not self.mounted(spec.id) or not _mounts.can_grow_online():
            return False  # grown at its next mount
        loop = self._loop_of(backing)
        if loop is None:
            return False
        _mounts.grow_file(backing, spec.size_mb)
        hostcmd.run(["losetup", "-c", loop], timeout=60)
        hostcmd.run(["cryptsetup", "resize", mapper_name(spec.id)], timeout=60)
        _mounts.ext4_grow(str(self._device(spec.id)), mounted=True)
        _mounts.write_handle(self.layout, spec)
        return True

    def destroy(self, volume_id: str) -> None:
        self.unmount(volume_id)
        backing = self.layout.backing(volume_id)
        if backing.exists():
            # Wipe the key slots: the header no longer opens with any key.
            hostcmd.run(["cryptsetup", "erase", "--batch-mode", str(backing)], check=False)
        shutil.rmtree(self.layout.mount_dir(volume_id), ignore_errors=True)
        shutil.rmtree(self.layout.dir(volume_id), ignore_errors=True)

    def cleanup_stale(self) -> list[str]:
        touched = []
        for volume_id in self.layout.on_disk():
            if self.mounted(volume_id):
                continue  # adopted
            if self._device(volume_id).exists() or self._loop_of(self.layout.backing(volume_id)):
                self.unmount(volume_id)
                touched.append(volume_id)
        return touched

"""Volumes encrypted with gocryptfs (AES-256-GCM, FUSE), over a sized ext4 file.

For hosts without device-mapper. ``volume.img`` is a sparse file of the
volume's size holding an ext4 file system; it is loop-mounted (``nosuid,
nodev,noexec``) at ``lower``, and its ``cipher/`` directory is the gocryptfs
tree: file contents under AES-256-GCM, names under EME, each file with its
own nonce. gocryptfs mounts the plaintext at ``data``. Because the
ciphertext lives on an ext4 of the volume's size, a full volume gives the
machine ENOSPC and touches nothing else on the host.

The master key is the volume's key (32 bytes, from the control plane). It is
given to gocryptfs on stdin (``-masterkey=stdin``): no ``gocryptfs.conf``
exists, so nothing on disk wraps it, and without the control plane's copy
the files are ciphertext nobody can open. The only file gocryptfs needs
besides its tree is the root's ``gocryptfs.diriv``: 16 random bytes, not
secret, written when the volume is made.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from hangar import hostcmd
from hangar.agent.volumes import _mounts
from hangar.agent.volumes.base import VolumeLayout, VolumeSpec
from hangar.agent.volumes.registry import register
from hangar.errors import CommandError, IntegrityError

__all__ = ["GocryptfsDriver"]

KEY_BYTES = 32


@register("gocryptfs")
class GocryptfsDriver:
    name = "gocryptfs"

    def __init__(self, layout: VolumeLayout) -> None:
        self.layout = layout

    @staticmethod
    def unavailable() -> str | None:
        """Why this host cannot use the driver; None if it can."""
        if shutil.which("gocryptfs") is None:
            return "gocryptfs is not installed (apt-get install gocryptfs)"
        if not Path("/dev/fuse").exists():
            return "the kernel offers no FUSE (/dev/fuse is missing)"
        return None

    def _cipher(self, volume_id: str) -> Path:
        return self.layout.lower(volume_id) / "cipher"

    def mounted(self, volume_id: str) -> bool:
        found = _mounts.mount_source(self.layout.plain(volume_id))
        return found is not None and found[1] == "fuse.gocryptfs"

    def mount(self, spec: VolumeSpec, key: bytes, *, owner: int, group: int | None = None) -> Path:
        if len(key) != KEY_BYTES:
            raise IntegrityError(f"volume {spec.id}'s key is not a gocryptfs key")
        layout = self.layout
        plain, lower = layout.plain(spec.id), layout.lower(spec.id)
        if self.mounted(spec.id) and not _mounts.is_stale(plain):
            return plain
        _mounts.unmount(plain, lazy=True)  # a stale mount left by a killed daemon
        backing = layout.backing(spec.id)
        made = not _mounts.made(layout, spec)
        if made:
            # What a create killed before its file system was whole left (never
            # mounted, so it holds nothing): made again from nothing.
            _mounts.discard_unmade(layout, spec.id)
            layout.dir(spec.id).mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                _mounts.make_sparse(backing, spec.size_mb)
                _mounts.make_ext4(str(backing), spec.id)
            except BaseException:
                _mounts.discard_unmade(layout, spec.id)  # made again next time
                raise
            _mounts.write_handle(layout, spec)
        elif (
            _mounts.fs_size_mb(layout, spec.id) < spec.size_mb
            and _mounts.mount_source(lower) is None
            and _mounts.grow_file_if_room(backing, spec.size_mb)  # extended while unmounted
        ):
            _mounts.ext4_grow(str(backing), mounted=False)
            _mounts.write_handle(layout, spec)
        _mounts.mount_points(layout, spec.id, owner, lower, plain)
        if _mounts.mount_source(lower) is None:
            hostcmd.run(
                ["mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noexec", str(backing), str(lower)],
                timeout=60,
            )
        cipher = self._cipher(spec.id)
        self._make_tree(spec.id, cipher)
        try:
            hostcmd.run(
                [
                    "gocryptfs",
                    # Not -nosyslog: the daemon would keep this call's pipes open.
                    "-q",
                    "-masterkey=stdin",
                    # The machine's users are unprivileged host uids; as root,
                    # gocryptfs gives each file the owner that made it.
                    "-allow_other",
                    str(cipher),
                    str(plain),
                ],
                input=key.hex().encode(),
                timeout=60,
            )
        except CommandError:
            _mounts.unmount(lower)
            raise
        if made or os.stat(plain).st_uid == 0:
            # New, or made by a run killed before it gave the top to the machine's
            # root (no machine can give a file to the host's root).
            _mounts.own_top(plain, owner, group)
        return plain

    def _make_tree(self, volume_id: str, cipher: Path) -> None:
        """The empty gocryptfs tree: ``cipher/`` and its ``gocryptfs.diriv``, written whole
        (renamed into place), so a run killed half-way leaves a tree made again next time."""
        diriv = cipher / "gocryptfs.diriv"
        if diriv.exists():
            return
        cipher.mkdir(mode=0o700, exist_ok=True)
        if any(cipher.iterdir()):
            raise IntegrityError(
                f"volume {volume_id}'s encrypted tree has files but no gocryptfs.diriv"
            )
        tmp = cipher.parent / "gocryptfs.diriv.new"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o440)
        try:
            os.write(fd, secrets.token_bytes(16))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, diriv)

    def unmount(self, volume_id: str) -> None:
        plain, lower = self.layout.plain(volume_id), self.layout.lower(volume_id)
        daemons = _mounts.daemons_serving(plain)
        _mounts.unmount(plain, lazy=_mounts.is_stale(plain))
        # The daemon flushes and closes its files as it exits; only then is the
        # ext4 under it idle. Never lazily while it runs: the next mount of
        # volume.img would be a second ext4 over the same blocks.
        if not _mounts.wait_exited(daemons):
            raise CommandError(
                ["gocryptfs", str(plain)], -1, "the daemon did not exit after its unmount"
            )
        _mounts.unmount_when_idle(lower)  # the loop device goes with it (autoclear)

    def extend(self, spec: VolumeSpec, key: bytes | None) -> bool:
        backing = self.layout.backing(spec.id)
        if not backing.exists() or _mounts.fs_size_mb(self.layout, spec.id) >= spec.size_mb:
            return True  # made at its new size, or grown already
        found = _mounts.mount_source(self.layout.lower(spec.id))
        if found is None or not _mounts.can_grow_online():
            return False  # grown at its next mount
        device = found[0]
        _mounts.grow_file(backing, spec.size_mb)
        hostcmd.run(["losetup", "-c", device], timeout=60)  # the loop device sees the new size
        _mounts.ext4_grow(device, mounted=True)
        _mounts.write_handle(self.layout, spec)
        return True

    def destroy(self, volume_id: str) -> None:
        self.unmount(volume_id)
        shutil.rmtree(self.layout.mount_dir(volume_id), ignore_errors=True)
        shutil.rmtree(self.layout.dir(volume_id), ignore_errors=True)

    def cleanup_stale(self) -> list[str]:
        touched = []
        for volume_id in self._with_mounts():
            plain = self.layout.plain(volume_id)
            if self.mounted(volume_id) and not _mounts.is_stale(plain):
                continue  # adopted: its daemon still serves it
            self.unmount(volume_id)
            touched.append(volume_id)
        return touched

    def _with_mounts(self) -> list[str]:
        ids = set()
        for _, point, _ in _mounts.mounts_under(self.layout.run_dir):
            rel = (
                point.relative_to(self.layout.run_dir).parts if point != self.layout.run_dir else ()
            )
            if rel:
                ids.add(rel[0])
        return sorted(ids)

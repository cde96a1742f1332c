"""A host's volumes, as the agent keeps them: mounted for machines, grown, destroyed.

``VolumeManager`` wraps the host's driver. The reconciler asks it to mount a
starting machine's volumes (``mount_for``, with the keys the control plane
just delivered, held only for the call) and to unmount them once the machine
is stopped or removed (``release``). Each round the agent gives it the
host's volumes (``sync``): a volume of this host the control plane no longer
lists is destroyed (its files deleted: its key is gone already), one that
grew is grown, online if the kernel lets this process. ``recover`` runs at
start: a FUSE mount whose daemon died, or a loop device or dm-crypt mapping
left without its mount, is undone; mounts that still work are adopted.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path

from hangar.agent.volumes import _mounts, registry
from hangar.agent.volumes.base import VolumeDriver, VolumeLayout, VolumeSpec
from hangar.contract.assignments import Assignment
from hangar.contract.volumes import HostVolume
from hangar.domain.volumes import check_destination
from hangar.errors import ConfigError, HangarError, PermissionDenied, ValidationError

__all__ = ["VolumeManager", "check_destinations", "resolve_in_root"]

log = logging.getLogger("hangar.agent.volumes")


_MAX_LINKS = 40  # as the kernel's path walk


def resolve_in_root(root: Path, path: str) -> str:
    """Where ``path`` leads inside the image root ``root``, its symlinks followed as
    the machine would see them: never above ``root`` (``..`` stops there, an absolute
    target starts from it). What does not exist is taken as written."""
    parts = deque(p for p in path.split("/") if p)
    current: list[str] = []
    links = 0
    missing = False
    while parts:
        part = parts.popleft()
        if part == ".":
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        if not missing:
            here = root.joinpath(*current, part)
            try:
                found = os.lstat(here)
            except OSError:
                missing = True
            else:
                if stat.S_ISLNK(found.st_mode):
                    links += 1
                    if links > _MAX_LINKS:
                        raise ValidationError(f"{path} in the image is a loop of symlinks")
                    target = os.readlink(here)
                    if target.startswith("/"):
                        current = []
                    parts.extendleft(reversed([p for p in target.split("/") if p]))
                    continue
        current.append(part)
    return "/" + "/".join(current)


def check_destinations(want: Assignment, rootfs: Path) -> None:
    """Refuse a mount whose destination the image made a symlink to a place no volume
    may go (/dev, /proc, /run, a system directory...), before anything is mounted."""
    for mount in want.mounts:
        check_destination(mount.destination)  # as hangar.toml was checked (a release kept
        # from before a rule was added is checked again here)
        resolved = resolve_in_root(rootfs, mount.destination)
        if resolved == mount.destination:
            continue
        try:
            check_destination(resolved)
        except ValidationError as exc:
            raise ValidationError(
                f"mount destination {mount.destination} is a symlink in the image to "
                f"{resolved}: {exc.message}",
                hint="mount the volume on a directory of its own (not a symlink in the image)",
            ) from exc


class VolumeManager:
    def __init__(self, layout: VolumeLayout, backend: str = "auto") -> None:
        self.layout = layout
        self.backend = registry.choose(backend)
        self.driver: VolumeDriver = registry.create(self.backend, layout)
        self.online_resize = _mounts.can_grow_online()
        layout.volumes_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Volumes extended while in use that could not grow online: at next mount.
        self.pending_growth: set[str] = set()

    def recover(self) -> list[str]:
        """Undo what a killed agent left; the volumes touched."""
        touched = self.driver.cleanup_stale()
        for volume_id in touched:
            log.warning("volume %s: cleaned up a mount left by an earlier run", volume_id)
        return touched

    def mount_for(
        self, want: Assignment, keys: dict[str, bytes], *, owner: int, group: int | None = None
    ) -> dict[str, Path]:
        """Mount the machine's volumes; {guest destination: host mount point}."""
        out: dict[str, Path] = {}
        for mount in want.mounts:
            if mount.encryption != self.backend:
                raise ConfigError(
                    f"volume {mount.volume_id} is {mount.encryption}, and this host "
                    f"encrypts volumes with {self.backend}"
                )
            key = keys.get(mount.volume_id)
            if key is None:
                raise PermissionDenied(
                    f"the control plane sent no key for volume {mount.volume_id}"
                )
            spec = VolumeSpec(mount.volume_id, mount.size_mb, mount.encryption)
            out[mount.destination] = self.driver.mount(spec, key, owner=owner, group=group)
            self.pending_growth.discard(mount.volume_id)
        return out

    def release(self, volume_ids: Iterable[str]) -> None:
        """Unmount volumes a machine no longer runs with."""
        for volume_id in volume_ids:
            self.driver.unmount(volume_id)

    def stale(self, in_use: Iterable[str]) -> list[str]:
        """Volumes held here whose plaintext mount lost its daemon (a gocryptfs killed or
        crashed): the machines holding them see only errors until they start again."""
        return sorted(
            volume_id
            for volume_id in set(in_use)
            if _mounts.mount_source(self.layout.plain(volume_id)) is not None
            and _mounts.is_stale(self.layout.plain(volume_id))
        )

    def sync(self, desired: Sequence[HostVolume], in_use: Iterable[str]) -> list[str]:
        """Destroy volumes no longer listed, unmount those no machine here holds, grow
        the others; errors, in words."""
        errors: list[str] = []
        wanted = {v.volume_id: v for v in desired}
        busy = set(in_use)
        for volume_id in self.layout.on_disk():
            if volume_id in wanted:
                continue
            if volume_id in busy:
                errors.append(f"volume {volume_id}: destroyed, but a machine here still uses it")
                continue
            try:
                self.driver.destroy(volume_id)
                log.info("volume %s: destroyed (its key was dropped)", volume_id)
            except (HangarError, OSError) as exc:
                errors.append(f"volume {volume_id}: {exc}")
        for volume in desired:
            if not self.driver.mounted(volume.volume_id):
                continue
            if volume.volume_id not in busy:
                # No machine here holds it (one that failed to start, one removed
                # while the agent was down): nothing may write to it now.
                try:
                    self.driver.unmount(volume.volume_id)
                except (HangarError, OSError) as exc:
                    errors.append(f"volume {volume.volume_id}: {exc}")
                continue
            spec = VolumeSpec(volume.volume_id, volume.size_mb, volume.encryption)
            try:
                if not self.driver.extend(spec, None):
                    if volume.volume_id not in self.pending_growth:
                        log.warning(
                            "volume %s: grows to %d MB at its machine's next start "
                            "(this host cannot grow a file system in use)",
                            volume.volume_id,
                            volume.size_mb,
                        )
                    self.pending_growth.add(volume.volume_id)
            except (HangarError, OSError) as exc:
                errors.append(f"volume {volume.volume_id}: {exc}")
        return errors

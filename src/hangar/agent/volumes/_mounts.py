"""What the volume drivers share: the mount table, sparse files, ext4 and handles."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import time
from pathlib import Path

from hangar import hostcmd
from hangar.agent.volumes.base import HANDLE_VERSION, VolumeLayout, VolumeSpec
from hangar.errors import CommandError

__all__ = [
    "can_grow_online",
    "daemons_serving",
    "ext4_grow",
    "file_size_mb",
    "fs_size_mb",
    "grow_file",
    "is_stale",
    "make_ext4",
    "make_sparse",
    "mount_points",
    "mount_source",
    "mounts_under",
    "own_top",
    "unmount",
    "unmount_when_idle",
    "wait_exited",
    "write_handle",
]

MB = 1 << 20


def _unescape(path: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def _table() -> list[tuple[str, Path, str]]:
    """(source, mount point, type) of every mount, in mount order."""
    out = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3:
                out.append((_unescape(fields[0]), Path(_unescape(fields[1])), fields[2]))
    return out


def mount_source(point: Path) -> tuple[str, str] | None:
    """(source, type) of what is mounted at ``point`` (the top one); None if nothing."""
    found = None
    for source, where, kind in _table():
        if where == point:
            found = (source, kind)
    return found


def mounts_under(root: Path) -> list[tuple[str, Path, str]]:
    """Mounts at or under ``root``, deepest first (the order to unmount)."""
    root = root.resolve() if root.exists() else root
    found = [(s, p, k) for s, p, k in _table() if p == root or root in p.parents]
    return sorted(found, key=lambda m: (-len(m[1].parts), str(m[1])))


def is_stale(point: Path) -> bool:
    """Whether a FUSE mount at ``point`` lost its daemon (ENOTCONN, or EIO)."""
    try:
        os.stat(point)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.EIO)
    return False


def unmount(point: Path, *, lazy: bool = False) -> None:
    """Unmount ``point`` if something is mounted there."""
    if mount_source(point) is None:
        return
    argv = ["umount", "-l", str(point)] if lazy else ["umount", str(point)]
    try:
        hostcmd.run(argv, timeout=60)
    except CommandError:
        if lazy:
            raise
        # Still busy (a process of a stopped machine lingers): detach it now, the
        # kernel finishes when the last user goes; nothing new can open it.
        hostcmd.run(["umount", "-l", str(point)], timeout=60)


def daemons_serving(point: Path) -> list[int]:
    """Pids of processes whose command line names ``point`` (a FUSE daemon serving it)."""
    wanted = str(point).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv:
            found.append(int(entry.name))
    return found


def wait_exited(pids: list[int], timeout: float = 30.0) -> bool:
    """Wait until none of ``pids`` runs; False if one still does after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            alive.append(pid)
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def unmount_when_idle(point: Path, timeout: float = 30.0) -> None:
    """Unmount ``point``, retrying while it is busy; lazily only as the last resort."""
    deadline = time.monotonic() + timeout
    while mount_source(point) is not None:
        done = hostcmd.run(["umount", str(point)], timeout=60, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() >= deadline:
            hostcmd.run(["umount", "-l", str(point)], timeout=60)
            return
        time.sleep(0.05)


def mount_points(layout: VolumeLayout, volume_id: str, owner: int, *points: Path) -> None:
    """The directories down to a volume's mount points: only root and the machines'
    root group (``owner``, whose runc init opens the bind source) may pass; the
    mount points themselves are root's (what is mounted there sets its own)."""
    for directory in (layout.run_dir, layout.mount_dir(volume_id)):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chown(directory, 0, owner)
        os.chmod(directory, 0o710)  # noqa: S103 - search, for the machines' root group only
    for point in points:
        point.mkdir(exist_ok=True, mode=0o700)


def own_top(plain: Path, owner: int, group: int | None) -> None:
    """A new volume's top directory: the machine's root owns it; its user's group may
    write in it too, and what is made there keeps that group."""
    os.chown(plain, owner, owner if group is None else group)
    os.chmod(plain, 0o755 if group is None else 0o2775)


def make_sparse(path: Path, size_mb: int) -> None:
    """A new sparse file of ``size_mb`` (0600); its blocks are allocated as written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size_mb * MB)
    finally:
        os.close(fd)


def grow_file(path: Path, size_mb: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_size < size_mb * MB:
            os.ftruncate(fd, size_mb * MB)
    finally:
        os.close(fd)


def file_size_mb(path: Path) -> int:
    return os.stat(path).st_size // MB


def make_ext4(device: str, label: str) -> None:
    """ext4 with no blocks reserved for root: a machine's root is not the host's,
    and gets every block of its volume; full means ENOSPC for everyone in it."""
    hostcmd.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-L", label[:16], "-E", "nodiscard", device],
        timeout=300,
    )


def ext4_grow(device: str, *, mounted: bool) -> None:
    """Grow the ext4 on ``device`` to the device's size (online if mounted)."""
    if not mounted:
        # resize2fs refuses an unmounted file system that was not checked.
        hostcmd.run(["e2fsck", "-f", "-p", device], timeout=600)
    hostcmd.run(["resize2fs", device], timeout=600)


def fs_size_mb(layout: VolumeLayout, volume_id: str) -> int:
    """The size the volume's file system was made or last grown to (0: unknown)."""
    handle = layout.read_handle(volume_id) or {}
    size = handle.get("size_mb", 0)
    return size if isinstance(size, int) else 0


def can_grow_online() -> bool:
    """Whether this process may grow a mounted ext4 (CAP_SYS_RESOURCE, as resize2fs needs)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


def write_handle(layout: VolumeLayout, spec: VolumeSpec) -> None:
    """Record the volume's driver and the size its file system has now."""
    handle = {
        "version": HANDLE_VERSION,
        "driver": spec.encryption,
        "id": spec.id,
        "size_mb": spec.size_mb,
        "updated_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    path = layout.handle(spec.id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(handle))
    os.replace(tmp, path)

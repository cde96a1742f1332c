"""What the volume drivers share: the mount table, sparse files, ext4 and handles."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import stat
import time
from pathlib import Path

from hangar import hostcmd
from hangar.agent.volumes.base import HANDLE_VERSION, VolumeLayout, VolumeSpec
from hangar.errors import CommandError, Conflict

__all__ = [
    "can_grow_online",
    "check_room",
    "daemons_serving",
    "discard_unmade",
    "ext4_grow",
    "file_size_mb",
    "fs_size_mb",
    "grow_file",
    "grow_file_if_room",
    "has_ext4",
    "is_stale",
    "made",
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
log = logging.getLogger("hangar.agent.volumes")


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


def _host_program(entry: Path, program: str) -> bool:
    """Whether the process ``entry`` (a /proc/PID) runs ``program`` in this host's
    user namespace. A machine's processes run in a user namespace of their own, so
    none passes, whatever it names itself or its arguments. (Not by uid: a gocryptfs
    daemon takes on its callers' uids as it serves them.)"""
    try:
        same_userns = os.readlink(entry / "ns" / "user") == os.readlink("/proc/self/ns/user")
        exe = os.readlink(entry / "exe")
    except OSError:
        return False
    return same_userns and Path(exe.removesuffix(" (deleted)")).name == program


def daemons_serving(point: Path, program: str = "gocryptfs") -> list[int]:
    """Pids of the host's ``program`` processes whose command line names ``point`` (the
    FUSE daemon serving it); never a process of a machine that merely names it."""
    wanted = str(point).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv and _host_program(entry, program):
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


def _unallocated(path: Path) -> int:
    """Bytes a sparse file may still take on its disk (0 if it is no file)."""
    try:
        found = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISREG(found.st_mode):
        return 0
    return max(0, found.st_size - found.st_blocks * 512)


def check_room(path: Path, size_mb: int) -> None:
    """Refuse a volume file of ``size_mb`` that its host's disk could not hold whole.

    Volume files are sparse: each takes blocks as its machine writes. The disk's free
    blocks must hold what every volume of the host may still take, or a machine
    filling its volume would fill the host's disk under every other one.
    """
    here = path.parent
    disk = os.statvfs(here.parent)
    free = disk.f_bavail * disk.f_frsize
    promised = sum(
        _unallocated(other / path.name)
        for other in here.parent.iterdir()
        if other.name != here.name and other.is_dir() and not other.is_symlink()
    )
    try:
        allocated = os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        allocated = 0
    need = size_mb * MB - allocated
    if need > free - promised:
        raise Conflict(
            f"volume {here.name} of {size_mb} MB does not fit on this host: its disk has "
            f"{free // MB} MB free, and {promised // MB} MB of that may yet be written to "
            "its other volumes",
            hint="free disk space on the host, or make the volume on another host "
            "(`hangar volumes create NAME --host HOST`)",
        )


def make_sparse(path: Path, size_mb: int) -> None:
    """A new sparse file of ``size_mb`` (0600); its blocks are allocated as written.
    Refused (Conflict) if the host's disk could not hold it whole."""
    check_room(path, size_mb)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size_mb * MB)
    finally:
        os.close(fd)


def grow_file(path: Path, size_mb: int) -> None:
    """Grow the file to ``size_mb``; refused (Conflict) if the host's disk could not
    hold it whole."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_size < size_mb * MB:
            check_room(path, size_mb)
            os.ftruncate(fd, size_mb * MB)
    finally:
        os.close(fd)


def grow_file_if_room(path: Path, size_mb: int) -> bool:
    """``grow_file``, or False (and a warning) where the host's disk could not hold the
    volume grown: a volume being mounted keeps its size rather than fail its machine."""
    try:
        grow_file(path, size_mb)
    except Conflict as exc:
        log.warning("%s; it keeps its size for now", exc.message)
        return False
    return True


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


def _starts_with(path: Path, magic: bytes, offset: int = 0) -> bool:
    try:
        with open(path, "rb") as image:
            image.seek(offset)
            return image.read(len(magic)) == magic
    except OSError:
        return False


def has_ext4(path: Path) -> bool:
    """Whether ``path`` holds an ext4 superblock (its magic, written last by mkfs)."""
    return _starts_with(path, b"\x53\xef", 1024 + 0x38)


def made(layout: VolumeLayout, spec: VolumeSpec) -> bool:
    """Whether the volume's file system was made whole. Its handle is written once it is,
    before it is first mounted: with neither a handle nor a file system, ``volume.img``
    is what a create killed half-way left, and never held data. A file system whose
    handle was lost gets one again (at the file's size)."""
    if layout.handle(spec.id).exists():
        return True
    backing = layout.backing(spec.id)
    if spec.encryption == "luks2":
        # Formatted: whether its ext4 was made too is seen once it is open.
        return _starts_with(backing, b"LUKS\xba\xbe")
    if not has_ext4(backing):
        return False
    write_handle(layout, VolumeSpec(spec.id, file_size_mb(backing), spec.encryption))
    return True


def discard_unmade(layout: VolumeLayout, volume_id: str) -> None:
    """Delete what a create that failed or was killed left (``volume.img`` and its
    handle), to make the volume again from nothing; nothing else in its directory."""
    handle = layout.handle(volume_id)
    for path in (handle, handle.with_suffix(".tmp"), layout.backing(volume_id)):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        layout.dir(volume_id).rmdir()  # only if nothing else (snapshots) is there


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

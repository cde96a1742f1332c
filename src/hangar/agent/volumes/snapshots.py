"""Volumes' snapshots on their host, their backups with restic, and restore drills.

A snapshot is a copy of the volume's ``volume.img``: **ciphertext**, the
same as the volume itself (a LUKS2 container, or an ext4 holding a
gocryptfs tree), opened only with the volume's key. It is consistent as a
power cut is: while a machine holds the volume, the ext4 file system that
holds the ciphertext is frozen (``fsfreeze``: its dirty data flushed, new
writes held) for the length of the copy, after the plaintext mount has been
synced; then it is thawed in a ``finally``. For gocryptfs that file system
is the loop-mounted ``lower``; for LUKS2 the ext4 over dm-crypt. A machine
writing during the copy waits; it never sees an error. Copies are sparse
(``cp --sparse=always``, and a reflink where the file system has them).

Each snapshot is ``<volume dir>/snapshots/<id>.img`` with ``<id>.json``
beside it: when it was taken, why, its size and the SHA-256 of the image,
which a restore, a fork and a drill verify before trusting it.

Backups send a snapshot to the organization's restic repository as it is:
ciphertext inside restic's own encryption. restic never sees plaintext and
the repository's password alone opens nothing of the volume; a restore
needs the volume's key as well, which the control plane keeps wrapped by
the KEK (a volume's key outlives it while backups of it are kept).
Unchanged ciphertext stays identical between snapshots (gocryptfs keeps a
file's nonce and content until it is rewritten; XTS is deterministic per
sector), so restic's deduplication still works.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from hangar import hostcmd
from hangar.agent.volumes import _mounts
from hangar.agent.volumes.base import VolumeDriver, VolumeLayout, VolumeSpec, check_volume_id
from hangar.backups.restic import Progress, Restic, Summary
from hangar.errors import (
    CommandError,
    Conflict,
    HangarError,
    IntegrityError,
    NotFound,
    ValidationError,
)

__all__ = [
    "DEFAULT_KEEP_DAYS",
    "DrillResult",
    "SnapshotInfo",
    "Snapshots",
    "check_snapshot_id",
    "new_snapshot_id",
]

DEFAULT_KEEP_DAYS = 5
MAX_KEEP_DAYS = 60
_ID = re.compile(r"^snap_[0-9a-z]{6,30}$")
_IMAGE = "volume.img"
_META = "snapshot.json"


def new_snapshot_id() -> str:
    return "snap_" + secrets.token_hex(8)


def check_snapshot_id(snapshot_id: str) -> str:
    if not _ID.fullmatch(snapshot_id):
        raise ValidationError(f"bad snapshot id {snapshot_id!r}")
    return snapshot_id


def check_keep_days(days: int) -> int:
    if not 1 <= days <= MAX_KEEP_DAYS:
        raise ValidationError(f"snapshots are kept 1 to {MAX_KEEP_DAYS} days")
    return days


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    volume_id: str
    created_at: str  # ISO 8601, UTC
    size_mb: int  # the volume's size when taken
    bytes: int  # the image's apparent size
    sha256: str  # of the ciphertext image
    reason: str  # "schedule", "manual" or "backup"
    encryption: str
    consistent: str  # how: "frozen" (in use, fsfreeze) or "unmounted"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SnapshotInfo:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise IntegrityError("a snapshot's metadata is not an object")
        info = cls(**data)
        check_snapshot_id(info.id)
        check_volume_id(info.volume_id)
        return info


@dataclass(frozen=True)
class DrillResult:
    """What a restore drill found: an auditor's evidence."""

    ok: bool
    backup_id: str
    volume_id: str
    snapshot_id: str
    bytes: int
    expected_sha256: str
    restored_sha256: str
    restore_seconds: float
    check_ok: bool
    check_subset: str
    check_seconds: float
    detail: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_sparse(source: Path, target: Path) -> None:
    """Copy keeping holes (and sharing blocks where the file system can); atomic."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
    try:
        hostcmd.run(
            ["cp", "--sparse=always", "--reflink=auto", "--", str(source), str(tmp)],
            timeout=3600,
        )
        os.chmod(tmp, 0o600)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


class Snapshots:
    """The snapshots of a host's volumes, kept beside them."""

    def __init__(self, layout: VolumeLayout, driver: VolumeDriver) -> None:
        self.layout = layout
        self.driver = driver

    def dir(self, volume_id: str) -> Path:
        return self.layout.dir(volume_id) / "snapshots"

    def image(self, volume_id: str, snapshot_id: str) -> Path:
        return self.dir(volume_id) / f"{check_snapshot_id(snapshot_id)}.img"

    def _meta(self, volume_id: str, snapshot_id: str) -> Path:
        return self.dir(volume_id) / f"{check_snapshot_id(snapshot_id)}.json"

    def _frozen_fs(self, volume_id: str) -> Path | None:
        """The mounted ext4 that holds the volume's ciphertext; None if unmounted."""
        if not self.driver.mounted(volume_id):
            return None
        if self.driver.name == "gocryptfs":
            return self.layout.lower(volume_id)
        return self.layout.plain(volume_id)  # LUKS2: ext4 over dm-crypt

    @contextlib.contextmanager
    def _consistent(self, volume_id: str) -> Iterator[str]:
        point = self._frozen_fs(volume_id)
        if point is None:
            yield "unmounted"
            return
        # Flush what the machine wrote through the plaintext mount first, then
        # hold the file system still: the copy is what a power cut would leave.
        hostcmd.run(["sync", "-f", str(self.layout.plain(volume_id))], timeout=300)
        hostcmd.run(["fsfreeze", "--freeze", str(point)], timeout=300)
        try:
            yield "frozen"
        finally:
            hostcmd.run(["fsfreeze", "--unfreeze", str(point)], timeout=300)

    def thaw_stale(self) -> list[str]:
        """Thaw what a killed agent left frozen mid-snapshot (machines' writes would
        hang until then); the volumes thawed. Run once when the agent starts."""
        thawed = []
        for volume_id in self.layout.on_disk():
            point = self._frozen_fs(volume_id)
            if point is None:
                continue
            # EINVAL ("not frozen") is the usual answer: nothing to undo.
            done = hostcmd.run(["fsfreeze", "--unfreeze", str(point)], timeout=60, check=False)
            if done.returncode == 0:
                thawed.append(volume_id)
        return thawed

    def take(self, volume_id: str, snapshot_id: str, *, reason: str = "manual") -> SnapshotInfo:
        """A consistent copy of the volume's ciphertext (see the module)."""
        check_snapshot_id(snapshot_id)
        backing = self.layout.backing(volume_id)
        if not backing.exists():
            raise NotFound(f"volume {volume_id} has no data on this host yet")
        target = self.image(volume_id, snapshot_id)
        if target.exists():
            return self.info(volume_id, snapshot_id)
        self.dir(volume_id).mkdir(mode=0o700, exist_ok=True)
        handle = self.layout.read_handle(volume_id) or {}
        with self._consistent(volume_id) as how:
            _copy_sparse(backing, target)
        info = SnapshotInfo(
            id=snapshot_id,
            volume_id=volume_id,
            created_at=dt.datetime.now(dt.UTC).isoformat(),
            size_mb=int(str(handle.get("size_mb", _mounts.file_size_mb(target)))),
            bytes=target.stat().st_size,
            sha256=_sha256(target),
            reason=reason,
            encryption=self.driver.name,
            consistent=how,
        )
        meta = self._meta(volume_id, snapshot_id)
        meta.write_text(info.to_json())
        os.chmod(meta, 0o600)
        return info

    def info(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        meta = self._meta(volume_id, snapshot_id)
        if not meta.exists() or not self.image(volume_id, snapshot_id).exists():
            raise NotFound(f"snapshot {snapshot_id} of volume {volume_id} not found")
        return SnapshotInfo.from_json(meta.read_text())

    def taken(self, volume_id: str) -> list[SnapshotInfo]:
        """Newest first."""
        found = []
        directory = self.dir(volume_id)
        if directory.is_dir():
            for meta in directory.glob("snap_*.json"):
                with contextlib.suppress(HangarError, OSError, ValueError, TypeError):
                    info = SnapshotInfo.from_json(meta.read_text())
                    if self.image(volume_id, info.id).exists():
                        found.append(info)
        return sorted(found, key=lambda s: s.created_at, reverse=True)

    def delete(self, volume_id: str, snapshot_id: str) -> None:
        self.image(volume_id, snapshot_id).unlink(missing_ok=True)
        self._meta(volume_id, snapshot_id).unlink(missing_ok=True)

    def prune(self, volume_id: str, keep_days: int, *, now: dt.datetime | None = None) -> list[str]:
        """Delete snapshots older than ``keep_days`` (the newest always stays); their ids."""
        check_keep_days(keep_days)
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=keep_days)
        removed = []
        for info in self.taken(volume_id)[1:]:
            if dt.datetime.fromisoformat(info.created_at) < cutoff:
                self.delete(volume_id, info.id)
                removed.append(info.id)
        return removed

    def _verified(self, volume_id: str, snapshot_id: str) -> tuple[SnapshotInfo, Path]:
        info = self.info(volume_id, snapshot_id)
        image = self.image(volume_id, snapshot_id)
        if _sha256(image) != info.sha256:
            raise IntegrityError(f"snapshot {snapshot_id} of volume {volume_id} is damaged")
        return info, image

    def restore(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        """Put the volume back as it was at the snapshot (the volume must be unmounted)."""
        if self.driver.mounted(volume_id):
            raise Conflict(
                f"volume {volume_id} is in use",
                hint="stop the machine that holds it, then restore",
            )
        info, image = self._verified(volume_id, snapshot_id)
        _copy_sparse(image, self.layout.backing(volume_id))
        return info

    def fork(self, volume_id: str, snapshot_id: str, new_volume_id: str) -> SnapshotInfo:
        """A new volume (same key, same data) from a snapshot, on this host."""
        info, image = self._verified(volume_id, snapshot_id)
        self._adopt(image, info, new_volume_id, copy=True)
        return info

    def _adopt(self, image: Path, info: SnapshotInfo, new_volume_id: str, *, copy: bool) -> None:
        check_volume_id(new_volume_id)
        if self.layout.backing(new_volume_id).exists():
            raise Conflict(f"volume {new_volume_id} already has data on this host")
        self.layout.dir(new_volume_id).mkdir(mode=0o700, parents=True, exist_ok=True)
        if copy:
            _copy_sparse(image, self.layout.backing(new_volume_id))
        else:
            image.replace(self.layout.backing(new_volume_id))
        _mounts.write_handle(self.layout, VolumeSpec(new_volume_id, info.size_mb, info.encryption))

    # -- restic -----------------------------------------------------------------

    def backup(
        self,
        restic: Restic,
        volume_id: str,
        snapshot_id: str,
        *,
        tags: tuple[str, ...] = (),
        progress: Callable[[Progress], None] | None = None,
    ) -> Summary:
        """Send a snapshot (ciphertext, with its metadata) to the repository."""
        info, image = self._verified(volume_id, snapshot_id)
        staging = self.layout.dir(volume_id) / f".backup-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            os.link(image, staging / _IMAGE)  # no copy: the same blocks
            (staging / _META).write_text(info.to_json())
            return restic.backup(
                staging,
                # The snapshot's id is in its metadata, not a tag: retention groups
                # backups by their tags, one group per volume.
                tags=(f"volume:{volume_id}", *tags),
                host=socket.gethostname(),
                progress=progress,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _fetch(self, restic: Restic, backup_id: str) -> tuple[SnapshotInfo, Path, Path]:
        staging = self.layout.volumes_dir / f".restore-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700, parents=True)
        try:
            restic.restore(backup_id, staging)
            meta, image = staging / _META, staging / _IMAGE
            if not meta.is_file() or not image.is_file():
                raise IntegrityError(f"backup {backup_id} holds no volume snapshot")
            info = SnapshotInfo.from_json(meta.read_text())
            return info, image, staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def restore_backup(
        self, restic: Restic, backup_id: str, new_volume_id: str, *, expect_volume: str = ""
    ) -> SnapshotInfo:
        """A backup as a new volume on this host (any host: the key travels with the
        volume's record, not with the host). Verified against its checksum first."""
        info, image, staging = self._fetch(restic, backup_id)
        try:
            if expect_volume and info.volume_id != expect_volume:
                raise IntegrityError(
                    f"backup {backup_id} is of volume {info.volume_id}, not {expect_volume}"
                )
            if _sha256(image) != info.sha256:
                raise IntegrityError(f"backup {backup_id} does not match its checksum")
            self._adopt(image, info, new_volume_id, copy=False)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return info

    def drill(
        self, restic: Restic, backup_id: str = "latest", *, read_data_subset: str = "5%"
    ) -> DrillResult:
        """Restore a backup into a scratch directory, compare its checksum with the
        one taken with the snapshot, and read back part of the repository's data."""
        started = time.monotonic()
        info, image, staging = self._fetch(restic, backup_id)
        try:
            restored = _sha256(image)
            size = image.stat().st_size
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        restore_seconds = time.monotonic() - started
        started = time.monotonic()
        check = restic.check(read_data_subset=read_data_subset)
        check_seconds = time.monotonic() - started
        same = restored == info.sha256
        detail = "" if same else "the restored image does not match the snapshot's checksum"
        if not check.ok:
            detail = (detail + "; " if detail else "") + check.detail[-500:]
        return DrillResult(
            ok=same and check.ok,
            backup_id=backup_id,
            volume_id=info.volume_id,
            snapshot_id=info.id,
            bytes=size,
            expected_sha256=info.sha256,
            restored_sha256=restored,
            restore_seconds=round(restore_seconds, 3),
            check_ok=check.ok,
            check_subset=read_data_subset,
            check_seconds=round(check_seconds, 3),
            detail=detail,
        )

    # -- export -----------------------------------------------------------------

    def export_tar(self, volume_id: str, snapshot_id: str, key: bytes, out: IO[bytes]) -> int:
        """Stream the snapshot's files, decrypted, as a tar to ``out``; the bytes written.

        The snapshot is opened read-only, in a private mount point under the
        host's run directory, and unmounted after, whatever happens; the key
        reaches gocryptfs on stdin.
        """
        if self.driver.name != "gocryptfs":
            raise ValidationError(
                f"exporting a {self.driver.name} snapshot is not supported on this host",
                hint="fork the snapshot to a new volume and copy its files out of a machine",
            )
        _, image = self._verified(volume_id, snapshot_id)
        base = self.layout.run_dir / f".export-{secrets.token_hex(6)}"
        lower, plain = base / "lower", base / "plain"
        for directory in (base, lower, plain):
            directory.mkdir(mode=0o700, parents=True)
        try:
            hostcmd.run(
                [
                    "mount",
                    "-t",
                    "ext4",
                    "-o",
                    "loop,ro,noload,nosuid,nodev,noexec",
                    str(image),
                    str(lower),
                ],
                timeout=60,
            )
            hostcmd.run(
                ["gocryptfs", "-q", "-ro", "-masterkey=stdin", str(lower / "cipher"), str(plain)],
                input=key.hex().encode(),
                timeout=60,
            )
            # gocryptfs takes any master key and hides the names a wrong one cannot
            # decrypt: a tree with files that shows none was opened with the wrong key.
            stored = [p for p in (lower / "cipher").iterdir() if p.name != "gocryptfs.diriv"]
            if stored and not any(plain.iterdir()):
                raise IntegrityError(f"the key given does not open snapshot {snapshot_id}")
            return _stream_tar(plain, out)
        finally:
            _mounts.unmount(plain, lazy=True)
            _mounts.unmount(lower)
            shutil.rmtree(base, ignore_errors=True)


def _stream_tar(root: Path, out: IO[bytes]) -> int:
    proc = hostcmd.start(
        ["tar", "--numeric-owner", "-C", str(root), "-cf", "-", "."],
        stdout=hostcmd.PIPE,
        stderr=hostcmd.PIPE,
    )
    written = 0
    assert proc.stdout is not None and proc.stderr is not None
    try:
        for block in iter(lambda: proc.stdout.read(1 << 16), b""):  # type: ignore[union-attr]
            out.write(block)
            written += len(block)
        code = proc.wait(timeout=3600)
        said = proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if code != 0:
        raise CommandError(["tar", "-cf", "-"], code, said)
    return written

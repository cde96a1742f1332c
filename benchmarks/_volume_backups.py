"""Snapshot, backup and restore times of an encrypted volume, against plain tools on the
same data in the same run: the rows ``benchmarks/volumes.py`` adds under its I/O table.

A gocryptfs volume is filled with ``size`` bytes of random data (files of
8 MiB) through its plaintext mount; the same files are written to a plain
directory on the same disk. Then, each timed:

- snapshot: Hangar's consistent snapshot of the mounted volume (sync,
  fsfreeze, sparse copy of the ciphertext, its SHA-256), against ``cp -a``
  of the plaintext directory;
- backup: the snapshot into a fresh local restic repository (ciphertext
  inside restic's encryption), against ``restic backup`` of the plaintext
  directory into another fresh repository;
- restore: that backup restored as a new volume (checksum verified), against
  ``restic restore`` of the plaintext backup.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hangar.agent.volumes.base import VolumeLayout, VolumeSpec
from hangar.agent.volumes.gocryptfs import GocryptfsDriver
from hangar.agent.volumes.snapshots import Snapshots, new_snapshot_id
from hangar.backups.restic import Repository, Restic

CHUNK = 8 << 20


@dataclass(frozen=True)
class Row:
    name: str
    hangar: float
    baseline: float
    baseline_is: str


def _fill(directory: Path, size: int, seed: bytes) -> None:
    written, n = 0, 0
    block = seed * (CHUNK // len(seed))
    while written < size:
        part = min(CHUNK, size - written)
        # Different bytes in every file, so nothing deduplicates by accident.
        data = secrets.token_bytes(32) + block[32:part]
        with (directory / f"f{n:05d}.bin").open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        written += part
        n += 1


def _timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def measure(work: Path, size: int) -> list[Row]:
    if GocryptfsDriver.unavailable():
        raise SystemExit(f"gocryptfs: {GocryptfsDriver.unavailable()}")
    layout = VolumeLayout(work / "volumes", Path("/run") / f"hangar-bench-{secrets.token_hex(4)}")
    driver = GocryptfsDriver(layout)
    snapshots = Snapshots(layout, driver)
    key = secrets.token_bytes(32)
    size_mb = size // (1 << 20) + max(64, size // (1 << 20) // 5)  # room for ext4 itself
    spec = VolumeSpec("vol_bench0001", size_mb, "gocryptfs")
    plain = work / "plain"
    plain.mkdir()
    seed = os.urandom(CHUNK)
    try:
        data = driver.mount(spec, key, owner=0)
        _fill(data, size, seed)
        _fill(plain, size, seed)
        subprocess.run(["sync"], check=True)

        snapshot_id = new_snapshot_id()
        snap = _timed(lambda: snapshots.take(spec.id, snapshot_id))
        copy = _timed(
            lambda: subprocess.run(["cp", "-a", str(plain), str(work / "plain-copy")], check=True)
        )

        ours = Restic(Repository(str(work / "repo-volume"), secrets.token_hex(16)))
        theirs = Restic(Repository(str(work / "repo-plain"), secrets.token_hex(16)))
        ours.ensure()
        theirs.ensure()
        summary: list[str] = []
        backup = _timed(
            lambda: summary.append(snapshots.backup(ours, spec.id, snapshot_id).snapshot_id)
        )
        plain_ids: list[str] = []
        plain_backup = _timed(lambda: plain_ids.append(theirs.backup(plain).snapshot_id))

        restore = _timed(lambda: snapshots.restore_backup(ours, summary[0], "vol_bench0002"))
        target = work / "plain-restored"
        plain_restore = _timed(lambda: theirs.restore(plain_ids[0], target))
    finally:
        for volume_id in layout.on_disk():
            driver.unmount(volume_id)
        shutil.rmtree(layout.run_dir, ignore_errors=True)
    return [
        Row("snapshot", snap, copy, "cp -a"),
        Row("backup", backup, plain_backup, "restic backup"),
        Row("restore", restore, plain_restore, "restic restore"),
    ]


def step(_volume: object, args: argparse.Namespace) -> list[tuple[str, str]]:
    """``benchmarks/volumes.py``'s rows for snapshot, backup and restore of ``--size-mb``
    (32 MiB with ``--quick``), on a volume of their own under ``--dir``."""
    size = (32 if args.quick else args.size_mb) << 20
    work = Path(tempfile.mkdtemp(prefix="hangar-bench-backups-", dir=args.dir))
    try:
        rows = measure(work, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = []
    for row in rows:
        ratio = row.hangar / row.baseline if row.baseline > 0 else float("inf")
        out.append(
            (
                f"{row.name} {size >> 20} MiB (vs {row.baseline_is})",
                f"{row.hangar:.2f} s vs {row.baseline:.2f} s, ratio {ratio:.2f}",
            )
        )
    return out

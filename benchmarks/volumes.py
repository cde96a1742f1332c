"""Encrypted volumes' I/O: what encryption at rest costs, against a plain directory.

Measured with fio in one run, on one disk (under ``--dir``, /var/tmp by
default): a plain directory (the baseline), an ext4 loop file of the
volume's size without encryption (what sizing costs alone), and an encrypted
volume made and mounted by Hangar's own driver for this host (LUKS2 where
the kernel has device-mapper, gocryptfs otherwise). Each target runs the
same four jobs: sequential write and read (1 MiB blocks), random write and
read (4 KiB blocks, a queue of 8 at most through libaio where it applies).
Writes end with fsync; each read job drops the file's cached pages first
(fio's ``invalidate``). That is the file's own cache only: gocryptfs reads
may still come from the page cache of the ext4 below it, and the plain
directory's writes from the page cache until the final fsync. The figures
are what a machine sees, on this host, now.

    sudo .venv/bin/python benchmarks/volumes.py [--size-mb 1024] [--seconds 10] [--quick]

Printed: MB/s (and IOPS for random I/O) per target, and each target's ratio
against the plain directory. More rows are added as ``Step`` functions in
``STEPS``: each gets the mounted volume and returns rows to print under the
table. ``_volume_backups.step`` adds snapshot, backup and restore times of
``--size-mb`` of data (1 GiB by default), each against a baseline on the same
plaintext in the same run: ``cp -a``, ``restic backup``, ``restic restore``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import _volume_backups
from hangar.agent.volumes import _mounts
from hangar.agent.volumes.base import VolumeLayout, VolumeSpec
from hangar.agent.volumes.manager import VolumeManager
from hangar.crypto.volumekeys import KEY_BYTES


@dataclass(frozen=True)
class Job:
    name: str
    rw: str  # fio's rw: write, read, randwrite, randread
    bs: str

    @property
    def random(self) -> bool:
        return self.rw.startswith("rand")


JOBS = [
    Job("sequential write", "write", "1M"),
    Job("sequential read", "read", "1M"),
    Job("random write 4k", "randwrite", "4k"),
    Job("random read 4k", "randread", "4k"),
]


@dataclass(frozen=True)
class Volume:
    """The encrypted volume a benchmark step works on (mounted at ``plain``)."""

    manager: VolumeManager
    spec: VolumeSpec
    key: bytes
    plain: Path


Step = Callable[[Volume, argparse.Namespace], list[tuple[str, str]]]
"""A further measurement on the mounted volume: rows of (what, figure) to print."""

STEPS: list[Step] = [_volume_backups.step]


def fio(directory: Path, job: Job, size_mb: int, seconds: float) -> tuple[float, float]:
    """(MB/s, IOPS) of one fio job on a file in ``directory``."""
    argv = [
        "fio",
        "--name=bench",
        f"--directory={directory}",
        "--filename=fio.data",
        f"--rw={job.rw}",
        f"--bs={job.bs}",
        f"--size={size_mb}M",
        "--ioengine=libaio" if job.random else "--ioengine=psync",
        "--iodepth=8" if job.random else "--iodepth=1",
        "--invalidate=1",
        "--end_fsync=1",
        "--time_based",
        f"--runtime={seconds:g}",
        "--output-format=json",
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=seconds * 20 + 300
    )
    stats = json.loads(done.stdout)["jobs"][0]
    side = stats["write" if "write" in job.rw else "read"]
    return side["bw_bytes"] / 1e6, side["iops"]


def prepare(directory: Path, size_mb: int) -> None:
    """Lay the file down once, so read jobs read written blocks, not holes."""
    subprocess.run(
        ["fio", "--name=fill", f"--directory={directory}", "--filename=fio.data",
         "--rw=write", "--bs=1M", f"--size={size_mb}M", "--output-format=json"],
        capture_output=True, check=True, timeout=600,
    )  # fmt: skip


@contextmanager
def ext4_loop(work: Path, size_mb: int) -> Iterator[Path]:
    """An ext4 loop file of ``size_mb``, unencrypted: the sizing layer on its own."""
    image, point = work / "plain.img", work / "plain-ext4"
    point.mkdir()
    _mounts.make_sparse(image, size_mb)
    _mounts.make_ext4(str(image), "bench")
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


@contextmanager
def encrypted(work: Path, size_mb: int) -> Iterator[Volume]:
    layout = VolumeLayout(work / "volumes", work / "run")
    manager = VolumeManager(layout)
    spec = VolumeSpec(f"vol_{secrets.token_hex(8)}", size_mb, manager.backend)
    key = secrets.token_bytes(KEY_BYTES[manager.backend])
    plain = manager.driver.mount(spec, key, owner=0)
    try:
        yield Volume(manager, spec, key, plain)
    finally:
        manager.driver.destroy(spec.id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="the volume and file size")
    parser.add_argument("--seconds", type=float, default=10.0, help="each fio job's length")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="on the disk to test")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.seconds = 96, 1.0
    if os.geteuid() != 0 or shutil.which("fio") is None:
        sys.exit("needs root (loop devices, mounts) and fio (make deps)")
    work = Path(tempfile.mkdtemp(prefix="hangar-bench-vol-", dir=args.dir))
    file_mb = args.size_mb * 3 // 4  # room for the file system's own blocks
    started = time.monotonic()
    try:
        baseline = work / "plain-dir"
        baseline.mkdir()
        with ext4_loop(work, args.size_mb) as loop, encrypted(work, args.size_mb) as volume:
            targets = [
                ("plain directory", baseline),
                ("ext4 loop file", loop),
                (f"encrypted ({volume.manager.backend})", volume.plain),
            ]
            results: dict[str, list[tuple[float, float]]] = {}
            for name, directory in targets:
                prepare(directory, file_mb)
                results[name] = [fio(directory, job, file_mb, args.seconds) for job in JOBS]
            print(f"fio on {args.dir}: {file_mb} MB file, {args.seconds:g} s per job")
            print(f"  {'job':<18}{'target':<24}{'MB/s':>10}{'IOPS':>10}{'ratio':>8}")
            for n, job in enumerate(JOBS):
                base = results["plain directory"][n][0]
                for name, _ in targets:
                    mbps, iops = results[name][n]
                    ratio = mbps / base if base else 0.0
                    iops_text = f"{iops:.0f}" if job.random else "-"
                    print(f"  {job.name:<18}{name:<24}{mbps:>10.1f}{iops_text:>10}{ratio:>8.2f}")
            for step in STEPS:
                for what, figure in step(volume, args):
                    print(f"  {what:<42}{figure}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

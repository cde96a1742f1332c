"""Encrypted volumes: snapshot, backup and restore times for 1 GiB.

Each against a baseline measured in the same run on the same data and disk
(see ``_volume_backups``): ``cp -a`` of the plaintext, ``restic backup`` and
``restic restore`` of the plaintext. Needs root (loop mounts, FUSE, fsfreeze).

Usage: python benchmarks/volumes.py [--size-mb 1024] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _volume_backups import measure, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="32 MiB: a check that it runs")
    args = parser.parse_args()
    size = (32 if args.quick else args.size_mb) << 20
    work = Path(tempfile.mkdtemp(prefix="hangar-bench-volumes-", dir="/var/tmp"))
    try:
        report(measure(work, size), size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

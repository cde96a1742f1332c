"""Machines' output logs: NDJSON files rotated by size, and reading them back.

A log is ``output.log`` plus rotated ``output.log.1`` (newest) … ``.N``
(oldest). Each line is one record, ``{"ts", "stream", "line"}``. Writers
append whole lines and flush, so a reader takes everything up to the last
newline and leaves a line being written for next time.

``read_since`` follows a log by a cursor (the inode of a file and an offset
in it), which survives rotation: a rotated file keeps its inode under its
new name. Standard library only: the shim imports this.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import IO, Any

__all__ = ["LOG_KEEP", "LOG_MAX_BYTES", "RotatingLog", "read_all", "read_since"]

LOG_MAX_BYTES = 8 << 20
LOG_KEEP = 3

Record = dict[str, Any]
Cursor = dict[str, int]  # {"inode": …, "offset": …}


class RotatingLog:
    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._handle: IO[bytes] = path.open("ab")

    def write(self, stream: str, line: bytes) -> None:
        self.write_record(
            {
                "ts": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                "stream": stream,
                "line": line.decode(errors="replace"),
            }
        )

    def write_record(self, record: Record) -> None:
        self._handle.write(json.dumps(record).encode() + b"\n")
        self._handle.flush()
        if self._handle.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._handle.close()
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._handle = self.path.open("ab")

    def close(self) -> None:
        self._handle.close()


def _files(path: Path) -> list[Path]:
    """The log's files, oldest first."""
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, path]


def _records(data: bytes) -> list[Record]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def read_all(path: Path) -> list[Record]:
    """Every record still on disk, oldest first."""
    records: list[Record] = []
    for file in _files(path):
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            continue
        records += _records(data[: data.rfind(b"\n") + 1])
    return records


def read_since(
    path: Path, cursor: Cursor | None, budget: int = 256 << 10
) -> tuple[list[Record], Cursor | None]:
    """Records after ``cursor`` (all if None), up to about ``budget`` bytes; and the new cursor.

    At least 64 KiB are read per call (more than the longest line), so a
    small budget still makes progress.

    If the cursor's file has been rotated away entirely, reading starts at
    the oldest file still there: what rotated out in between is gone.
    """
    files = []
    for file in _files(path):
        try:
            files.append((file, file.stat().st_ino))
        except FileNotFoundError:
            continue
    start, offset = 0, 0
    if cursor is not None:
        for index, (_, inode) in enumerate(files):
            if inode == cursor["inode"]:
                start, offset = index, cursor["offset"]
                break
    records: list[Record] = []
    new = cursor
    for file, inode in files[start:]:
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(offset)
            data = handle.read(max(0, min(size - offset, max(budget, 1 << 16))))
        whole = data[: data.rfind(b"\n") + 1]
        records += _records(whole)
        new = {"inode": inode, "offset": offset + len(whole)}
        budget -= len(whole)
        finished = offset + len(whole) >= size
        offset = 0
        if budget <= 0 or not finished:
            break  # out of budget, or more (or a line still being written) waits
    return records, new

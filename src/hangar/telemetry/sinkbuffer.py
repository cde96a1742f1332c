"""A log sink's disk-backed buffer: records wait here until the sink has taken them.

Records are appended as NDJSON to numbered segment files in the buffer's
directory and ``fsync``ed before ``append`` returns, so a record handed to
the buffer survives a crash. ``peek`` returns the oldest records; ``ack``
moves the head past them once the sink accepted them (and persists the head
atomically). A crash between the sink accepting and ``ack`` sends those
records again: at least once, never lost silently.

The buffer holds at most ``cap`` bytes. When an append would pass it, the
oldest records are dropped to make room and counted exactly (``dropped``
since the last ``take_dropped``); the caller reports the count.

Standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["SinkBuffer"]

Record = dict[str, Any]
_SEGMENT_BYTES = 4 << 20


def _write_atomic(path: Path, data: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class SinkBuffer:
    def __init__(self, directory: Path, cap: int) -> None:
        if cap < 1024:
            raise ValueError("a sink buffer holds at least 1 KiB")
        self.directory = directory
        self.cap = cap
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._head_file = directory / "head.json"
        head = json.loads(self._head_file.read_text()) if self._head_file.exists() else {}
        # The oldest record still wanted: (segment number, byte offset in it).
        self._head = (int(head.get("segment", 0)), int(head.get("offset", 0)))
        self._dropped = int(head.get("dropped", 0))
        for segment in self._segments():
            if segment < self._head[0]:
                self._path(segment).unlink(missing_ok=True)  # acked before a crash
        self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        """A crash mid-append can leave a last line without its newline: it was never
        acknowledged to anyone, and the next append must not glue itself onto it."""
        segments = self._segments()
        if not segments:
            return
        path = self._path(segments[-1])
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            keep = size
            while keep > 0:
                step = min(keep, 1 << 16)
                handle.seek(keep - step)
                chunk = handle.read(step)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = keep - step + newline + 1
                    break
                keep -= step
            if keep != size:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:010d}.ndjson"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.ndjson"))

    def _save_head(self) -> None:
        segment, offset = self._head
        _write_atomic(
            self._head_file,
            json.dumps({"segment": segment, "offset": offset, "dropped": self._dropped}),
        )

    @property
    def head(self) -> tuple[int, int]:
        """Where the oldest record waiting starts: changes when records are acked or dropped."""
        return self._head

    def size(self) -> int:
        """Bytes still waiting (from the head to the end)."""
        total = 0
        for segment in self._segments():
            size = self._path(segment).stat().st_size
            total += size - (self._head[1] if segment == self._head[0] else 0)
        return total

    def append(self, records: list[Record]) -> None:
        """Keep ``records`` (durably); drop the oldest ones if the cap requires it."""
        if not records:
            return
        lines = [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records]
        dropped_before = self._dropped
        incoming = sum(len(line) for line in lines)
        if incoming > self.cap:
            # More than the whole buffer holds: only the newest that fit are kept.
            kept: list[bytes] = []
            room = self.cap
            for line in reversed(lines):
                if len(line) > room:
                    break
                kept.append(line)
                room -= len(line)
            self._dropped += len(lines) - len(kept)
            lines, incoming = list(reversed(kept)), self.cap - room
        over = self.size() + incoming - self.cap
        if over > 0:
            self._drop_oldest(over)
        segments = self._segments()
        segment = segments[-1] if segments else self._head[0]
        if self._path(segment).exists() and self._path(segment).stat().st_size >= _SEGMENT_BYTES:
            segment += 1
        with open(self._path(segment), "ab") as handle:
            handle.write(b"".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        if self._dropped != dropped_before:
            self._save_head()  # the new head, and the drops, outlive a crash

    def _drop_oldest(self, at_least: int) -> None:
        """Move the head past whole records totalling at least ``at_least`` bytes."""
        freed = 0
        while freed < at_least:
            records = self._read(1)
            if not records:
                break
            _, end = records[0]
            freed += self._advance(end)
            self._dropped += 1

    def _read(self, limit: int, max_bytes: int = 1 << 30) -> list[tuple[Record, tuple[int, int]]]:
        """Up to ``limit`` records from the head, each with the position just after it."""
        out: list[tuple[Record, tuple[int, int]]] = []
        taken = 0
        for segment in self._segments():
            if segment < self._head[0]:
                continue
            offset = self._head[1] if segment == self._head[0] else 0
            with open(self._path(segment), "rb") as handle:
                handle.seek(offset)
                for line in handle:
                    if not line.endswith(b"\n"):
                        break  # torn by a crash mid-write: never acknowledged, not kept
                    offset += len(line)
                    if out and taken + len(line) > max_bytes:
                        return out
                    taken += len(line)
                    out.append((json.loads(line), (segment, offset)))
                    if len(out) >= limit:
                        return out
        return out

    def _advance(self, to: tuple[int, int]) -> int:
        """Move the head to ``to``; returns the bytes passed. Deletes emptied segments."""
        before = self.size()
        for segment in self._segments():
            if segment < to[0]:
                self._path(segment).unlink(missing_ok=True)
        self._head = to
        return before - self.size()

    def peek(self, limit: int, max_bytes: int = 1 << 20) -> list[Record]:
        """The oldest records waiting, up to ``limit`` of them and about ``max_bytes``."""
        return [record for record, _ in self._read(limit, max_bytes)]

    def ack(self, count: int) -> None:
        """The sink took the oldest ``count`` records: forget them."""
        if count <= 0:
            return
        records = self._read(count)
        if records:
            self._advance(records[-1][1])
            self._save_head()

    def take_dropped(self) -> int:
        """Records dropped by the cap since the last call (persisted until taken)."""
        dropped, self._dropped = self._dropped, 0
        if dropped:
            self._save_head()
        return dropped

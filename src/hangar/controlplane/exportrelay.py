"""Snapshot exports in flight: a tar a volume's host uploads, relayed to the person who asked.

The API request that asked for an export reads from a bounded queue the
host's upload fills: nothing is kept on the control plane's disk, and a
slow reader slows the host's tar (backpressure) instead of filling memory.
Each side waits a bounded time for the other. Like the exec broker, it lives
in this process: with several API replicas, an export must reach the
replica the host uploads to.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from hangar.errors import Conflict, HangarError, WaitTimeout

__all__ = ["ExportRelay"]

CHUNKS = 64  # queued at most (64 KiB each): 4 MiB in flight per export
IDLE_SECONDS = 120.0
_END = b""


@dataclass
class _Export:
    chunks: queue.Queue[bytes | HangarError] = field(
        default_factory=lambda: queue.Queue(maxsize=CHUNKS)
    )
    uploading: bool = False
    closed: bool = False


class ExportRelay:
    def __init__(self, idle: float = IDLE_SECONDS) -> None:
        self.idle = idle
        self._lock = threading.Lock()
        self._exports: dict[str, _Export] = {}

    def open(self, job_id: str) -> None:
        with self._lock:
            self._exports[job_id] = _Export()

    def _get(self, job_id: str) -> _Export:
        with self._lock:
            export = self._exports.get(job_id)
        if export is None or export.closed:
            raise Conflict(f"no one is waiting for export {job_id}")
        return export

    def start(self, job_id: str) -> None:
        """The host begins its upload (once)."""
        export = self._get(job_id)
        with self._lock:
            if export.uploading:
                raise Conflict(f"export {job_id} is already being uploaded")
            export.uploading = True

    def push(self, job_id: str, chunk: bytes) -> None:
        """One piece of the tar; waits while the reader is behind (bounded)."""
        if not chunk:
            return
        export = self._get(job_id)
        try:
            export.chunks.put(chunk, timeout=self.idle)
        except queue.Full:
            raise WaitTimeout(f"export {job_id}: no one read it for {self.idle:g}s") from None

    def end(self, job_id: str) -> None:
        export = self._get(job_id)
        try:
            export.chunks.put(_END, timeout=self.idle)
        except queue.Full:
            raise WaitTimeout(f"export {job_id}: no one read it for {self.idle:g}s") from None

    def upload(self, job_id: str, chunks: Iterator[bytes]) -> int:
        """The host's side, in one call: push the tar through; the bytes relayed."""
        self.start(job_id)
        sent = 0
        try:
            for chunk in chunks:
                self.push(job_id, chunk)
                sent += len(chunk)
        except BaseException:
            self.fail(job_id, HangarError(f"the upload of export {job_id} broke off"))
            raise
        self.end(job_id)
        return sent

    def fail(self, job_id: str, error: HangarError) -> None:
        """End the reader's stream with ``error`` (the host could not do it)."""
        with self._lock:
            export = self._exports.get(job_id)
        if export is not None:
            with contextlib.suppress(queue.Full):
                export.chunks.put(error, timeout=1)

    def read(self, job_id: str) -> Iterator[bytes]:
        """The person's side: the tar's bytes as they come; ends at the tar's end."""
        export = self._get(job_id)
        try:
            while True:
                try:
                    item = export.chunks.get(timeout=self.idle)
                except queue.Empty:
                    raise WaitTimeout(
                        f"export {job_id}: the volume's host sent nothing for {self.idle:g}s"
                    ) from None
                if isinstance(item, HangarError):
                    raise item
                if item == _END:
                    return
                yield item
        finally:
            with self._lock:
                export.closed = True
                self._exports.pop(job_id, None)
            # Unblock an upload still pushing into a queue no one reads.
            while not export.chunks.empty():
                export.chunks.get_nowait()

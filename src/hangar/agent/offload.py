"""Slow work kept off the agent's loop, bounded per organization.

The agent's loop starts and stops every organization's machines; anything
that can take long (a health check against a slow server, unpacking an image,
stopping a machine that waits out its kill timeout) runs here instead, in a
bounded pool of threads. A job has a key (one job per key at a time: a
machine's stop, a check) and an organization, which may have at most
``per_org`` jobs running at once: one tenant's slow work fills its own slots,
never the loop and never every thread. The loop submits, looks again on a
later round, and collects what finished with ``take``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["Offload"]


class Offload:
    """A bounded pool: one job per key, at most ``per_org`` per organization."""

    def __init__(self, *, workers: int = 8, per_org: int = 2, name: str = "hangar-offload") -> None:
        if workers < 1 or per_org < 1:
            raise ValueError("an offload pool needs at least one worker and one slot per org")
        self.per_org = per_org
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.RLock()
        self._running: dict[str, tuple[str, Future[Any]]] = {}
        self._done: dict[str, Future[Any]] = {}
        # Called (from a worker thread) when a job finishes: wakes the loop.
        self.on_done: Callable[[], None] | None = None

    def busy(self, key: str) -> bool:
        """True while ``key``'s job runs or its outcome waits to be taken."""
        with self._lock:
            return key in self._running or key in self._done

    def pending(self) -> bool:
        """True while any job runs or an outcome waits to be taken."""
        with self._lock:
            return bool(self._running or self._done)

    def running(self, org: str) -> int:
        with self._lock:
            return sum(1 for owner, _ in self._running.values() if owner == org)

    def submit(self, key: str, org: str, job: Callable[[], Any]) -> bool:
        """Start ``job`` unless ``key`` is busy or ``org`` has no free slot; True if started."""
        with self._lock:
            if self.busy(key) or self.running(org) >= self.per_org:
                return False
            future = self._pool.submit(job)
            self._running[key] = (org, future)
        future.add_done_callback(lambda f: self._finished(key, f))
        return True

    def _finished(self, key: str, future: Future[Any]) -> None:
        with self._lock:
            self._running.pop(key, None)
            self._done[key] = future
        if self.on_done is not None:
            self.on_done()

    def take(self) -> dict[str, Future[Any]]:
        """The jobs finished since the last call, by key (each future is done)."""
        with self._lock:
            done, self._done = self._done, {}
        return done

    def forget(self, key: str) -> None:
        """Drop a finished job's outcome (a running job still finishes)."""
        with self._lock:
            self._done.pop(key, None)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

"""Failed sign-ins, limited per person and per address, with exponential backoff.

Each key ("addr:203.0.113.9", "user:bob@example.com") may fail ``free``
times; after that each further attempt must wait ``base * 2**(n - free)``
seconds (at most ``cap``) after the last failure, or it is refused with
``TooManyRequests`` before any work is done. A success clears the key.
Memory is bounded: at most ``max_keys`` keys are kept, the least recently
failed dropped first (an attacker spraying addresses forgets their own
history sooner than anyone else's, never grows the process).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from hangar.errors import TooManyRequests

__all__ = ["FailureLimiter"]


class FailureLimiter:
    def __init__(
        self,
        *,
        free: int = 5,
        base: float = 1.0,
        cap: float = 900.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = free
        self._base = base
        self._cap = cap
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (failures, time of the last failure)
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def wait_for(self, key: str) -> float:
        """Seconds ``key`` must still wait before its next attempt (0: it may go on)."""
        with self._lock:
            entry = self._failures.get(key)
        if entry is None:
            return 0.0
        count, last = entry
        if count < self._free:
            return 0.0
        delay = min(self._cap, self._base * 2.0 ** (count - self._free))
        return max(0.0, float(last + delay - self._clock()))

    def check(self, keys: Iterable[str]) -> None:
        """Raise TooManyRequests if any of ``keys`` must still wait."""
        wait = max((self.wait_for(k) for k in keys if k), default=0.0)
        if wait > 0:
            raise TooManyRequests(
                "too many failed sign-in attempts: wait before trying again",
                retry_after=wait,
                hint=f"try again in {int(wait) + 1} seconds",
            )

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                if not key:
                    continue
                count, _ = self._failures.pop(key, (0, now))
                self._failures[key] = (count + 1, now)
                while len(self._failures) > self._max_keys:
                    self._failures.popitem(last=False)

    def succeeded(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)

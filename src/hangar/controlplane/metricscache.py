"""The newest figures agents shipped of each machine, held in memory by the control plane."""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["STALE", "MetricsCache", "Shipped"]

STALE = 300.0  # seconds after which a machine's figures are no longer served


@dataclass(frozen=True)
class Shipped:
    host_id: str
    at: float
    text: str


class MetricsCache:
    """The newest figures of each machine, in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_machine: dict[str, Shipped] = {}

    def put(self, machine_id: str, shipped: Shipped) -> None:
        with self._lock:
            self._by_machine[machine_id] = shipped

    def get(self, machine_id: str, now: float) -> Shipped | None:
        with self._lock:
            shipped = self._by_machine.get(machine_id)
            if shipped is not None and now - shipped.at > STALE:
                del self._by_machine[machine_id]
                return None
            return shipped

    def matching(self, prefix: str, now: float) -> list[tuple[str, Shipped]]:
        """The fresh entries whose key starts with ``prefix``, by key."""
        with self._lock:
            found = []
            for key in sorted(k for k in self._by_machine if k.startswith(prefix)):
                shipped = self._by_machine[key]
                if now - shipped.at > STALE:
                    del self._by_machine[key]
                else:
                    found.append((key, shipped))
            return found

"""A few slots per organization for work that holds a thread while it runs.

``machines exec`` holds an API thread (and, on another host, an agent thread)
until the command ends or times out; an organization may run only a few at
once, so one tenant's commands cannot take every thread the API has.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hangar.errors import Conflict

__all__ = ["OrgSlots"]


class OrgSlots:
    def __init__(self, per_org: int, what: str) -> None:
        self.per_org = per_org
        self.what = what
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    @contextmanager
    def hold(self, org_id: str) -> Iterator[None]:
        """One slot of ``org_id`` for the block; Conflict if all are taken (nothing waits)."""
        with self._lock:
            if self._held.get(org_id, 0) >= self.per_org:
                raise Conflict(
                    f"this organization already has {self.per_org} {self.what} running",
                    hint="try again when one finishes",
                )
            self._held[org_id] = self._held.get(org_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._held[org_id] -= 1
                if not self._held[org_id]:
                    del self._held[org_id]

"""A background loop: rounds on a daemon thread, woken early, stopped cleanly.

The control plane's loops (the deployer with the local agent, the ACME
issuer) each subclass ``BackgroundLoop`` and implement ``round``. A round
that raises is logged and does not end the loop: the next one tries again.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["BackgroundLoop"]

log = logging.getLogger("hangar.loops")


class BackgroundLoop:
    def __init__(self, name: str, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def round(self) -> float | None:
        """One round; return the seconds until the next is due, if sooner than the interval."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Run a round now: something it looks at just changed."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def in_loop(self) -> bool:
        """Whether the caller is this loop's own thread."""
        return threading.current_thread() is self._thread

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = self.interval
            try:
                due = self.round()
                if due is not None:
                    timeout = min(timeout, max(0.0, due))
            except Exception:
                log.exception("%s: round failed; continuing", self._thread.name)
            self._wake.wait(timeout)
            self._wake.clear()

"""Waking the server's background loops from a request."""

from __future__ import annotations

from fastapi import Request

__all__ = ["wake_loops"]


def wake_loops(request: Request) -> None:
    """Tell this host's loops that desired or observed state changed (no-op without them)."""
    wake = getattr(request.app.state, "wake", None)
    if wake is not None:
        wake()

"""WireGuard peers of a host: other hosts, and people's devices."""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

__all__ = ["Peer"]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Peer:
    host: str
    public_key: str
    endpoint: str  # "" for a device that only dials out
    allowed_ips: tuple[str, ...]

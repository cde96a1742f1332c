"""The .internal DNS records a host's resolver serves."""

from __future__ import annotations

import ipaddress

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

__all__ = ["Record"]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Record:
    """A started machine, as DNS tells of it."""

    app: str
    region: str
    machine_id: str
    address: ipaddress.IPv6Address

    @property
    def network(self) -> ipaddress.IPv6Network:
        """The machine's private network (its /48): who may resolve it."""
        return ipaddress.IPv6Network((int(self.address) >> 80 << 80, 48))

""".internal DNS: each host answers its machines' questions about their own network.

The resolver listens on UDP and TCP port 53 at one fixed private address,
``<installation prefix>::53`` (no network is numbered 0, so no machine ever
has it), added to the host's loopback. Every machine's ``/etc/resolv.conf``
names it, and the host's nftables table lets machines reach it and nothing
else of the host.

Answers depend on who asks: the question's source address says which
private network (/48) the asker is in, and only that network's apps exist:

* ``<app>.internal`` AAAA: the app's started machines;
* ``<region>.<app>.internal`` AAAA: those in one region;
* ``<machine-id>.vm.<app>.internal`` AAAA: one machine;
* ``_apps.internal`` TXT: the network's app names.

Any other name under ``.internal`` is NXDOMAIN — including another
organization's apps, so an asker learns nothing it could not already reach.
Names outside ``.internal`` are REFUSED: machines resolve the internet
through their own resolvers, if their app allows egress. ``answer`` is pure;
``InternalDns`` serves it with dnslib.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from dnslib import AAAA, QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

from hangar import hostcmd
from hangar.contract.names import Record

__all__ = ["Answer", "InternalDns", "answer", "resolver_address"]

log = logging.getLogger("hangar.dns")

TTL = 5  # seconds: machines come and go with deploys


def resolver_address(installation: ipaddress.IPv6Network) -> ipaddress.IPv6Address:
    return installation.network_address + 0x53


@dataclass(frozen=True)
class Answer:
    rcode: str  # NOERROR, NXDOMAIN, REFUSED
    addresses: tuple[ipaddress.IPv6Address, ...] = ()
    texts: tuple[str, ...] = ()


def answer(
    records: Iterable[Record],
    installation: ipaddress.IPv6Network,
    asker: ipaddress.IPv6Address,
    name: str,
    qtype: str,
) -> Answer:
    """What the resolver says to ``asker`` about ``name`` (pure)."""
    name = name.lower().rstrip(".")
    if not (name == "internal" or name.endswith(".internal")):
        return Answer("REFUSED")
    if asker not in installation:
        return Answer("REFUSED")
    network = ipaddress.IPv6Network((int(asker) >> 80 << 80, 48))
    mine = [r for r in records if r.network == network]
    labels = name.split(".")[:-1]  # without "internal"
    if labels == ["_apps"]:
        apps = sorted({r.app for r in mine})
        return Answer("NOERROR", texts=(",".join(apps),) if qtype in ("TXT", "ANY") else ())
    found: list[Record] = []
    if len(labels) == 1:
        found = [r for r in mine if r.app == labels[0]]
    elif len(labels) == 2:
        found = [r for r in mine if r.app == labels[1] and r.region == labels[0]]
    elif len(labels) == 3 and labels[1] == "vm":
        found = [r for r in mine if r.app == labels[2] and r.machine_id == labels[0]]
    if not found:
        # An app with no machine in that region is still a name; anything else is not.
        exists = len(labels) == 2 and any(r.app == labels[1] for r in mine)
        return Answer("NOERROR" if exists else "NXDOMAIN")
    addresses = tuple(sorted({r.address for r in found}))
    return Answer("NOERROR", addresses=addresses if qtype in ("AAAA", "ANY") else ())


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, owner: InternalDns) -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        try:
            asker = ipaddress.IPv6Address(str(handler.client_address[0]).split("%")[0])
        except ValueError:
            reply.header.rcode = RCODE.REFUSED
            return reply
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        result = answer(self.owner.records, self.owner.installation, asker, qname, qtype)
        reply.header.rcode = getattr(RCODE, result.rcode)
        for address in result.addresses:
            reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(str(address)), ttl=TTL))
        for text in result.texts:
            reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(text), ttl=TTL))
        return reply


class _QuietLogger:
    """dnslib logs every query by default; the agent logs none (they name machines)."""

    def log_recv(self, *args: object) -> None: ...
    def log_send(self, *args: object) -> None: ...
    def log_request(self, *args: object) -> None: ...
    def log_reply(self, *args: object) -> None: ...
    def log_truncated(self, *args: object) -> None: ...
    def log_error(self, handler: object, e: object) -> None:
        log.warning("dns: %s", e)

    def log_data(self, *args: object) -> None: ...


class InternalDns:
    """The resolver on this host: started once, fed new records every agent round."""

    def __init__(self, installation: ipaddress.IPv6Network, *, port: int = 53) -> None:
        self.installation = installation
        self.address = resolver_address(installation)
        self.port = port
        self.records: tuple[Record, ...] = ()
        self._servers: list[DNSServer] = []
        self._lock = threading.Lock()

    def update(self, records: Iterable[Record]) -> None:
        self.records = tuple(records)  # swapped whole: a query sees one version

    def start(self) -> None:
        """Put the address on the loopback and listen; CommandError/OSError if it cannot."""
        with self._lock:
            if self._servers:
                return
            hostcmd.run(
                ["ip", "-6", "addr", "replace", f"{self.address}/128", "dev", "lo"], timeout=15
            )
            resolver = _Resolver(self)
            servers = [
                DNSServer(
                    resolver,
                    address=str(self.address),
                    port=self.port,
                    tcp=tcp,
                    logger=_QuietLogger(),
                )
                for tcp in (False, True)
            ]
            for server in servers:
                server.start_thread()
            self._servers = servers
            log.info("internal DNS on [%s]:%d", self.address, self.port)

    @property
    def running(self) -> bool:
        return bool(self._servers)

    def stop(self) -> None:
        """Stop answering and take the address off the loopback."""
        with self._lock:
            for server in self._servers:
                server.stop()
                server.server.server_close()
            if self._servers:
                hostcmd.run(
                    ["ip", "-6", "addr", "del", f"{self.address}/128", "dev", "lo"], check=False
                )
            self._servers = []

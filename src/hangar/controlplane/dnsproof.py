"""Proof of control of a host name by a DNS TXT record.

To hold a name for an imported certificate (or a wildcard), an organization
publishes ``_hangar-challenge.<name>`` (for ``*.<name>``, the same record of
``<name>``) with a value Hangar gave it, and asks Hangar to look. The lookup
goes to one resolver the operator configures (``dns_proof_resolver``), over
UDP with a hard deadline, and the answer must carry the query's id.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

from dnslib import QTYPE, DNSRecord

from hangar.errors import ValidationError

__all__ = ["PROOF_LABEL", "new_token", "proof_name", "require_proof", "resolver_of", "txt_values"]

PROOF_LABEL = "_hangar-challenge"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def proof_name(hostname: str) -> str:
    """Where the TXT record for ``hostname`` lives (a wildcard's is its base name's)."""
    return f"{PROOF_LABEL}.{hostname.removeprefix('*.')}"


def resolver_of(setting: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``host`` from the settings, else this host's resolver."""
    text = setting.strip()
    if not text:
        try:
            for line in Path("/etc/resolv.conf").read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1], 53
        except OSError:
            pass
        return "127.0.0.1", 53
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, int(port or 53)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, 53


def txt_values(name: str, resolver: tuple[str, int], timeout: float = 3.0) -> list[str]:
    """The TXT values of ``name`` as ``resolver`` answers; [] if none or no answer in time."""
    query = DNSRecord.question(name, "TXT")
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in resolver[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(query.pack(), resolver)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data, _ = sock.recvfrom(4096)
                try:
                    reply = DNSRecord.parse(data)
                except Exception:  # noqa: S112 - not a DNS answer: keep waiting
                    continue
                if reply.header.id != query.header.id:
                    continue
                return [
                    b"".join(rr.rdata.data).decode(errors="replace")
                    for rr in reply.rr
                    if rr.rtype == QTYPE.TXT and str(rr.rname).rstrip(".").lower() == name.lower()
                ]
        except OSError:
            return []
    return []


def require_proof(hostname: str, token: str, resolver: tuple[str, int]) -> None:
    """Return if the TXT record proves control of ``hostname``; raise ValidationError if not."""
    name = proof_name(hostname)
    found = txt_values(name, resolver)
    if not any(secrets.compare_digest(v.strip().encode(), token.encode()) for v in found):
        raise ValidationError(
            f"no TXT record {name} with this name's proof value was found",
            hint=f'publish TXT {name} "{token}" and run `hangar certs verify {hostname}` again',
        )

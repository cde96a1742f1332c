"""The WireGuard mesh between hosts: one interface per host, a peer per other host.

Each host makes its key pair once (``wg genkey``; the private key stays in a
0600 file on the host) and tells the control plane its public key and
endpoint. The control plane answers every host with its peers: each other
host's key, endpoint, and allowed IPs = that host's slices of every private
network. The agent reconciles its interface to that list (``wg syncconf``,
which keeps live sessions) and routes each peer's slices through it.

Cryptokey routing is the cross-host anti-spoofing: a packet that arrives
from a peer with a source outside that peer's slices is dropped by
WireGuard itself. The kernel's WireGuard is used where it exists, else
``wireguard-go`` (its control sockets live in ``/var/run/wireguard``, so
interface names are unique per host: ``hwg`` and a digest of the host's id).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import secrets
from pathlib import Path

from hangar import hostcmd
from hangar.contract.mesh import Peer
from hangar.errors import CommandError, ValidationError
from hangar.hostfs import write_private
from hangar.net.netns import link_exists

__all__ = ["Mesh", "interface_name", "validate_endpoint", "validate_public_key"]

log = logging.getLogger("hangar.mesh")

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def interface_name(host_id: str) -> str:
    return "hwg" + hashlib.sha256(host_id.encode()).hexdigest()[:12]


def validate_public_key(text: str) -> str:
    """A WireGuard public key: base64 of 32 bytes; ValidationError otherwise."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError("the mesh public key is not base64") from exc
    if len(raw) != 32:
        raise ValidationError("the mesh public key is not 32 bytes")
    return text


def validate_endpoint(text: str) -> str:
    """``host:port``, ``[v6]:port`` or ``v4:port``; ValidationError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValidationError(f"mesh endpoint {text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ValidationError(f"mesh endpoint {text!r}: {host} is not an address") from exc
        return text
    try:
        ipaddress.IPv4Address(host)
        return text
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host) or ":" in host:
        raise ValidationError(f"mesh endpoint {text!r}: {host!r} is not a host name or address")
    return text


class Mesh:
    """This host's WireGuard interface, reconciled to the control plane's peer list."""

    def __init__(self, host_id: str, key_dir: Path, *, listen_port: int = 51820) -> None:
        self.interface = interface_name(host_id)
        self.key_file = key_dir / "mesh.key"
        self.listen_port = listen_port
        self._applied: tuple[Peer, ...] | None = None
        self._routes: set[str] = set()

    def public_key(self) -> str:
        """This host's public key, making the key pair on first use (0600, never sent)."""
        if not self.key_file.exists():
            self.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            private = hostcmd.run(["wg", "genkey"]).stdout
            write_private(self.key_file, private, exclusive=True)
        result = hostcmd.run(["wg", "pubkey"], input=self.key_file.read_bytes())
        return result.stdout.decode().strip()

    def _exists(self) -> bool:
        return link_exists(self.interface)

    def ensure_interface(self) -> None:
        if self._exists():
            return
        try:
            hostcmd.run(["ip", "link", "add", self.interface, "type", "wireguard"], timeout=15)
        except CommandError:
            # No kernel module: the userspace implementation, same configuration.
            hostcmd.run(
                ["wireguard-go", self.interface],
                env={**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"},
                timeout=15,
            )
        log.info("mesh interface %s created", self.interface)

    def _config(self, peers: tuple[Peer, ...]) -> str:
        private = self.key_file.read_text().strip()
        lines = ["[Interface]", f"PrivateKey = {private}", f"ListenPort = {self.listen_port}"]
        for peer in peers:
            lines += [
                "",
                "[Peer]",
                f"PublicKey = {peer.public_key}",
            ]
            if peer.endpoint:  # a person's device has none: it calls in
                lines += [f"Endpoint = {peer.endpoint}", "PersistentKeepalive = 25"]
            if peer.allowed_ips:
                lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
        return "\n".join(lines) + "\n"

    def apply(self, peers: list[Peer]) -> bool:
        """Make the interface carry exactly ``peers``; True if anything changed."""
        wanted = tuple(sorted(peers, key=lambda p: p.public_key))
        if wanted == self._applied and self._exists():
            return False
        self.public_key()
        self.ensure_interface()
        # The configuration holds the private key: a fresh 0600 file, gone after use.
        conf = self.key_file.with_name(f"mesh.{secrets.token_hex(8)}.conf")
        write_private(conf, self._config(wanted), exclusive=True)
        try:
            hostcmd.run(["wg", "syncconf", self.interface, str(conf)], timeout=15)
        finally:
            conf.unlink(missing_ok=True)
        hostcmd.run(["ip", "link", "set", self.interface, "up"], timeout=15)
        routes = {ip for peer in wanted for ip in peer.allowed_ips}
        for route in sorted(routes):
            hostcmd.run(["ip", "-6", "route", "replace", route, "dev", self.interface], timeout=15)
        for gone in sorted(self._stale_routes(routes)):
            with contextlib.suppress(CommandError):
                hostcmd.run(["ip", "-6", "route", "del", gone, "dev", self.interface], timeout=15)
        self._routes = routes
        self._applied = wanted
        log.info("mesh: %d peers", len(wanted))
        return True

    def _stale_routes(self, wanted: set[str]) -> set[str]:
        shown = hostcmd.run(["ip", "-6", "route", "show", "dev", self.interface], check=False)
        present = {line.split()[0] for line in shown.stdout.decode().splitlines() if line.strip()}
        return {r for r in present if r not in wanted and "/" in r and not r.startswith("fe80")}

    def peers(self) -> dict[str, int]:
        """Each peer's public key and its latest handshake (unix time, 0 for none)."""
        shown = hostcmd.run(["wg", "show", self.interface, "latest-handshakes"], check=False)
        out = {}
        for line in shown.stdout.decode().splitlines():
            key, _, when = line.partition("\t")
            if key:
                out[key] = int(when or 0)
        return out

    def remove(self) -> None:
        with contextlib.suppress(CommandError):
            hostcmd.run(["ip", "link", "del", self.interface], timeout=15)
        sock = Path("/var/run/wireguard") / f"{self.interface}.sock"
        sock.unlink(missing_ok=True)
        self._applied = None

"""Which parts of a routing table the edge leaves out, and why (pure but for a port probe).

One tenant's route must not take the edge down for every other: a route
HAProxy refuses (a value it cannot parse, a certificate it cannot load) or a
TCP port it cannot bind is *quarantined*, left out of the configuration,
while everything else is applied. A table is split into units, each of which
can be left out alone: an app's HTTP route (``http:<app>``), one TCP service
port (``tcp:<app>:<port>``), one certificate (``cert:<hostname>``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import shutil
import socket
import tempfile
from pathlib import Path

from hangar import hostcmd
from hangar.crypto.certs import self_signed_pem
from hangar.domain.routing import RoutingTable
from hangar.edge.render import EdgeConfig, render
from hangar.hostfs import write_private

__all__ = ["check_alone", "only", "ports_in_use", "units", "without"]


def units(table: RoutingTable) -> list[str]:
    """Every unit of ``table``, in a stable order."""
    return [
        *(f"http:{r.app}" for r in table.http),
        *(f"tcp:{r.app}:{r.port}" for r in table.tcp),
        *(f"cert:{c.hostname}" for c in table.certs),
    ]


def _keep(table: RoutingTable, keep: set[str]) -> RoutingTable:
    return dataclasses.replace(
        table,
        http=tuple(r for r in table.http if f"http:{r.app}" in keep),
        tcp=tuple(r for r in table.tcp if f"tcp:{r.app}:{r.port}" in keep),
        certs=tuple(c for c in table.certs if f"cert:{c.hostname}" in keep),
    )


def without(table: RoutingTable, left_out: set[str] | dict[str, str]) -> RoutingTable:
    """``table`` minus the units in ``left_out``."""
    return _keep(table, set(units(table)) - set(left_out))


def only(table: RoutingTable, kept: list[str]) -> RoutingTable:
    """``table`` with just the units in ``kept`` (and its ACME responder)."""
    return _keep(table, set(kept))


def ports_in_use(table: RoutingTable, bind_host: str, own: frozenset[int]) -> dict[str, str]:
    """TCP routes whose port something else on this host already listens on.

    ``own`` are the ports the running edge itself holds (they would look
    busy). A probe binds without SO_REUSEPORT, so any other listener counts.
    """
    busy: dict[str, str] = {}
    for route in table.tcp:
        if route.port in own:
            continue
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                probe.bind((bind_host, route.port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    busy[f"tcp:{route.app}:{route.port}"] = (
                        f"port {route.port} is already in use on this host"
                    )
    return busy


def check_alone(table: RoutingTable, binary: str = "haproxy") -> None:
    """``haproxy -c`` of ``table`` on its own; CommandError if refused (skipped without HAProxy).

    For a table without certificates (nothing secret is written): the control
    plane checks an app's routes this way before a release is made.
    """
    if shutil.which(binary) is None:
        return
    with tempfile.TemporaryDirectory(prefix="hangar-edge-check-") as tmp:
        conf = Path(tmp)
        cfg = EdgeConfig(directory=conf, bind_host="127.0.0.1", http_port=1, https_port=2)
        rendered = render(table, cfg, conf, with_state=True)
        write_private(conf / "default.pem", self_signed_pem("hangar-edge-check", days=1))
        for name, text in rendered.maps.items():
            write_private(conf / name, text)
        write_private(conf / "certs.list", rendered.crt_list)
        write_private(conf / "haproxy.cfg", rendered.config)
        hostcmd.run([binary, "-c", "-f", str(conf / "haproxy.cfg")], timeout=30)

"""HTTPS to an edge on loopback with a chosen SNI, resolving no names (tests only)."""

from __future__ import annotations

import http.client
import socket
import ssl

__all__ = ["EdgeConnection"]


class EdgeConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1:``port`` with ``name`` as SNI ("" for none)."""

    def __init__(self, name: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__("127.0.0.1", port, timeout=10, context=context)
        self.sni = name
        self.tls_context = context

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.sni or None)

"""``hangar server run``: the HTTPS API (and, later, agent and edge) on this host."""

from __future__ import annotations

import logging
import ssl

import uvicorn

from hangar.api.app import create_app
from hangar.config.settings import ServerSettings
from hangar.controlplane.state import ControlPlane

__all__ = ["serve"]

# Mozilla "intermediate": ECDHE with AEAD ciphers for TLS 1.2 (TLS 1.3's are all AEAD).
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


class _TLSConfig(uvicorn.Config):
    def load(self) -> None:
        super().load()
        assert self.ssl is not None
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2


def serve(settings: ServerSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cp = ControlPlane.open(settings)
    app = create_app(cp)
    config = _TLSConfig(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        ssl_certfile=str(settings.data_dir / "api.crt"),
        ssl_keyfile=str(settings.data_dir / "api.key"),
        ssl_ciphers=TLS12_CIPHERS,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    logging.getLogger("hangar").info(
        "Hangar API listening on https://%s:%d (data dir %s)",
        settings.listen_host,
        settings.listen_port,
        settings.data_dir,
    )
    try:
        server.run()
    finally:
        cp.close()

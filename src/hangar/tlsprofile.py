"""The TLS profile Hangar serves with: Mozilla "intermediate", version 6.0.

TLS 1.2 and 1.3 only; for TLS 1.2, ECDHE key exchange with AEAD ciphers only
(TLS 1.3's suites are all AEAD); curves X25519, P-256, P-384. The API, the
agents' listener and the edge all use these lists, so they change together.
"""

from __future__ import annotations

__all__ = ["CURVES", "TLS12_CIPHERS", "TLS13_SUITES"]

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
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
CURVES = "X25519:P-256:P-384"

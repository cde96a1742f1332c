"""The audit chains verified on a schedule, and the result as metrics.

``hangar audit verify`` checks a chain when a person asks; this loop checks
every chain on its own, so that an edited, removed or re-ordered event shows
on a dashboard and fires an alert without anyone asking. It is the same
check (``verify_stored_chain``: every event's link and hash, every signed
checkpoint against the installation's key).

The work is bounded: one round verifies at most ``CHAINS_PER_ROUND`` chains,
those verified longest ago first, and no chain is verified again within
``VERIFY_SECONDS``; the loop has its own thread, so a long chain never holds
up the deployer. Two series per chain, read at scrape time:
``hangar_audit_chain_verified`` (1 if the last check passed, 0 if it did
not) and ``hangar_audit_chain_verified_timestamp_seconds`` (when it ran).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from hangar.audit.chain import VerifyResult
from hangar.audit.log import chains, verify_stored_chain
from hangar.controlplane.background import BackgroundLoop
from hangar.controlplane.state import ControlPlane
from hangar.crypto.signing import public_key_from_pem

__all__ = ["CHAINS_PER_ROUND", "VERIFY_SECONDS", "AuditVerifier", "Verified"]

log = logging.getLogger("hangar.controlplane")

VERIFY_SECONDS = 300.0  # a chain is verified again at most this often
CHAINS_PER_ROUND = 4  # chains verified in one round, at most
ROUND_SECONDS = 30.0  # between two rounds, when no chain is due sooner


@dataclass(frozen=True)
class Verified:
    """The last check of one chain: whether it passed, when (Unix time), and why not."""

    ok: bool
    at: float
    reason: str = ""


class AuditVerifier(BackgroundLoop, Collector):
    """Verifies the audit chains a few at a time; exports each one's last result."""

    def __init__(self, cp: ControlPlane, clock: Callable[[], float] = time.time) -> None:
        super().__init__("hangar-audit-verify", ROUND_SECONDS)
        self.cp = cp
        self.clock = clock
        self._key = public_key_from_pem(cp.audit_public_pem)
        self.results: dict[str, Verified] = {}

    def round(self) -> float | None:
        self.verify_due()
        return None

    def verify_due(self) -> list[str]:
        """Verify up to ``CHAINS_PER_ROUND`` chains that are due; returns their names."""
        now = self.clock()
        with self.cp.db.read() as session:
            names = chains(session)
        for gone in set(self.results) - set(names):
            del self.results[gone]  # never happens to a sound store; keep no stale series
        due = [
            name
            for name in names
            if name not in self.results or now - self.results[name].at >= VERIFY_SECONDS
        ]
        due.sort(key=lambda name: self.results[name].at if name in self.results else -1.0)
        done = due[:CHAINS_PER_ROUND]
        for name in done:
            self.results[name] = self._verify(name)
        return done

    def _verify(self, chain: str) -> Verified:
        try:
            with self.cp.db.read() as session:
                result: VerifyResult = verify_stored_chain(session, chain, self._key)
        except SQLAlchemyError as exc:
            # A store that cannot be read is not a chain that verified.
            log.warning("audit chain %s could not be read to verify it: %s", chain, exc)
            return Verified(False, self.clock(), "the store could not be read")
        if not result.ok:
            log.error("audit chain %s does not verify: %s", chain, result.reason)
        return Verified(result.ok, self.clock(), result.reason)

    def collect(self) -> Iterator[Metric]:
        verified = GaugeMetricFamily(
            "hangar_audit_chain_verified",
            "Whether an audit chain passed its last scheduled verification (1) or not (0).",
            labels=["chain"],
        )
        when = GaugeMetricFamily(
            "hangar_audit_chain_verified_timestamp_seconds",
            "When an audit chain was last verified, as a Unix time.",
            labels=["chain"],
        )
        for chain, result in sorted(self.results.items()):
            verified.add_metric([chain], 1.0 if result.ok else 0.0)
            when.add_metric([chain], result.at)
        yield verified
        yield when

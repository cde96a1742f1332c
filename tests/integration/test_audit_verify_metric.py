"""The scheduled audit verification: every chain checked, its result exported, bounded work."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.core import Metric
from sqlalchemy import delete, update

from hangar.audit.log import chains
from hangar.controlplane import auditverify
from hangar.controlplane.auditverify import AuditVerifier
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import AuditEvent
from tests.conftest import Installation


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def samples(verifier: AuditVerifier) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    family: Metric
    for family in verifier.collect():
        for sample in family.samples:
            found.setdefault(sample.name, {})[sample.labels["chain"]] = sample.value
    return found


def org_chain(api: TestClient, installation: Installation, org: str = "acme") -> str:
    return str(api.get(f"/v1/orgs/{org}", headers=installation.headers).json()["id"])


def test_every_chain_verifies_and_an_edit_turns_its_series_to_zero(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    assert api.post("/v1/orgs", headers=h, json={"name": "other"}).status_code == 201
    for org, app in [("acme", "web"), ("acme", "api"), ("other", "mail")]:
        made = api.post("/v1/apps", headers=h, json={"name": app, "org": org})
        assert made.status_code == 201, made.text
    altered, cut = org_chain(api, installation), org_chain(api, installation, "other")
    with control_plane.db.read() as session:
        every = chains(session)
    assert {altered, cut} <= set(every)
    clock = Clock()
    verifier = AuditVerifier(control_plane, clock)
    while len(verifier.results) < len(every):
        assert verifier.verify_due()
    found = samples(verifier)
    assert found["hangar_audit_chain_verified"] == dict.fromkeys(every, 1.0)
    assert found["hangar_audit_chain_verified_timestamp_seconds"] == dict.fromkeys(every, clock.now)

    # Each kind of edit a tamperer could make, on its own chain: a field changed, an
    # event removed.
    with control_plane.db.write() as session:
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.chain == altered, AuditEvent.seq == 2)
            .values(target="other")
        )
        session.execute(delete(AuditEvent).where(AuditEvent.chain == cut, AuditEvent.seq == 1))
    # Not due yet: the last results stand until VERIFY_SECONDS have passed.
    assert verifier.verify_due() == []
    assert samples(verifier)["hangar_audit_chain_verified"] == dict.fromkeys(every, 1.0)
    clock.now += auditverify.VERIFY_SECONDS
    while any(r.at < clock.now for r in verifier.results.values()):
        verifier.verify_due()
    found = samples(verifier)
    bad = {altered: 0.0, cut: 0.0}
    assert found["hangar_audit_chain_verified"] == {**dict.fromkeys(every, 1.0), **bad}
    assert found["hangar_audit_chain_verified_timestamp_seconds"] == dict.fromkeys(every, clock.now)
    assert verifier.results[altered].reason == "event 2 was altered"
    assert verifier.results[cut].reason == "event 1 is missing"


def test_a_round_verifies_a_bounded_number_of_chains_oldest_first(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    for n in range(auditverify.CHAINS_PER_ROUND + 2):
        assert api.post("/v1/orgs", headers=h, json={"name": f"org{n}"}).status_code == 201
    with control_plane.db.read() as session:
        every = chains(session)
    assert len(every) > auditverify.CHAINS_PER_ROUND
    clock = Clock()
    verifier = AuditVerifier(control_plane, clock)
    first = verifier.verify_due()
    assert len(first) == auditverify.CHAINS_PER_ROUND
    started = clock.now
    clock.now += 1
    second = verifier.verify_due()
    assert second and not set(first) & set(second)  # the rest, not the same ones again
    while len(verifier.results) < len(every):
        clock.now += 1
        verifier.verify_due()
    # Only the chains verified longest ago are due again.
    clock.now = started + auditverify.VERIFY_SECONDS
    assert verifier.verify_due() == first
    assert verifier.verify_due() == []

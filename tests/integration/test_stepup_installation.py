"""Installation-wide sensitive actions beyond the KEK: identity providers, enabling users."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import update

from hangar.controlplane.state import ControlPlane
from hangar.store.tables import StepUp
from tests.conftest import Installation
from tests.integration.test_factors import _enrol_totp, client  # noqa: F401


def test_identity_providers_and_enabling_users_need_a_step_up(
    client: TestClient,  # noqa: F811
    installation: Installation,
    control_plane: ControlPlane,
) -> None:
    h = installation.headers
    _, totp = _enrol_totp(client, h)
    # The operator has a factor, and its last use is long past.
    with control_plane.db.write() as session:
        old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
        session.execute(update(StepUp).values(verified_at=old))
    idp = {"name": "corp", "issuer": "http://127.0.0.1:9/", "client_id": "x"}
    added = client.post("/v1/idps", headers=h, json=idp)
    assert added.status_code == 403 and added.json()["type"].endswith("step-up-required"), (
        added.text
    )
    assert client.get("/v1/idps", headers=h).json() == []
    assert client.post("/v1/users/admin@example.com/enable", headers=h).status_code == 403
    assert client.delete("/v1/idps/corp", headers=h).status_code == 403
    stepped = client.post(
        "/v1/me/step-up",
        headers=h,
        json={
            "method": "totp",
            "code": totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)),
        },
    )
    assert stepped.status_code == 200, stepped.text
    assert client.delete("/v1/idps/corp", headers=h).status_code == 404

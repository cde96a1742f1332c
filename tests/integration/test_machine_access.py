"""Who reads machines' output and runs commands in them, tried as an attacker would.

Reading logs and exec reach what machines hold (an exec reads every secret in
the machine's environment), so each is a permission of its own, not a
viewer's, and each organization chooses which roles hold it. What an exec
leaves behind (audit trail, server log, error answers) never carries its
arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.contract.execs import ExecResult
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.errors import CommandError, HangarError, WaitTimeout
from hangar.images.oci import build_layout, layer_tar
from hangar.store.tables import AuditEvent, OrgGrant
from tests.conftest import Installation, bearer, mint_token
from tests.uploads import upload_layout

CANARY = "pw-Canary-7f3a9c"


class FakeHost:
    """This process's own host: exec answers, or fails as ``fail`` says."""

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.fail: Callable[[list[str]], HangarError] | None = None

    def exec(self, machine_id: str, argv: list[str], *, timeout: float) -> ExecResult:
        if self.fail is not None:
            raise self.fail(argv)
        return ExecResult(0, b"DB_PASSWORD=" + CANARY.encode() + b"\n", b"")

    def logs(self, machine_id: str) -> list[dict[str, Any]]:
        return [{"ts": "t", "stream": "stdout", "line": f"connecting with {CANARY}"}]


@pytest.fixture
def setup(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> dict[str, Any]:
    """App web with one machine on this host; vic (viewer), mo (member), the admin."""
    with control_plane.db.write() as session:
        host_id = register_local_host(session, name="h1", region="local").id
    host = FakeHost(host_id)
    control_plane.local = host
    build_layout(tmp_path / "img", [layer_tar([])], tag="one")
    h = installation.headers
    assert api.post("/v1/apps", headers=h, json={"name": "web"}).status_code == 201
    made = api.post(
        "/v1/apps/web/machines",
        headers=h,
        json={"image": upload_layout(api, h, "web", tmp_path / "img", "one")},
    )
    assert made.status_code == 201, made.text
    tokens = {"admin": h}
    for name, role in (("vic", "viewer"), ("mo", "member")):
        email = f"{name}@example.com"
        r = api.post("/v1/orgs/acme/members", headers=h, json={"email": email, "role": role})
        assert r.status_code == 201
        tokens[role] = bearer(mint_token(control_plane, email, kind="org", org="acme"))
    return {"host": host, "machine": made.json()["id"], "tokens": tokens}


def _can_read_logs(api: TestClient, headers: dict[str, str]) -> bool:
    r = api.get("/v1/apps/web/logs", headers=headers)
    assert r.status_code in (200, 403), r.text
    if r.status_code == 200:
        assert CANARY in r.text
    return r.status_code == 200


def _can_exec(api: TestClient, headers: dict[str, str], machine: str) -> bool:
    r = api.post(
        f"/v1/apps/web/machines/{machine}/exec",
        headers=headers,
        json={"cmd": ["cat", "/proc/1/environ"]},
    )
    assert r.status_code in (200, 403), r.text
    return r.status_code == 200


def _who(api: TestClient, setup: dict[str, Any]) -> dict[str, tuple[bool, bool]]:
    """For each role: (reads logs, runs exec)."""
    return {
        role: (_can_read_logs(api, h), _can_exec(api, h, setup["machine"]))
        for role, h in setup["tokens"].items()
    }


def _set(api: TestClient, headers: dict[str, str], **body: list[str]) -> Any:
    as_items = {
        k: [dict(zip(("role", "permission"), v.split("="), strict=True)) for v in vs]
        for k, vs in body.items()
    }
    return api.patch("/v1/orgs/acme", headers=headers, json=as_items)


def test_defaults_keep_logs_from_viewers_and_exec_with_admins(
    api: TestClient, setup: dict[str, Any]
) -> None:
    assert _who(api, setup) == {
        "admin": (True, True),
        "member": (True, False),
        "viewer": (False, False),
    }
    # Every other way in is refused too: follow, one machine, an app-scoped
    # token of the viewer, a read-only token of the admin for exec.
    vic = setup["tokens"]["viewer"]
    machine = setup["machine"]
    for path in ("/v1/apps/web/logs?follow=true", f"/v1/apps/web/logs?machine={machine}"):
        assert api.get(path, headers=vic).status_code == 403


def test_readonly_and_app_tokens_never_exec_beyond_their_maker(
    api: TestClient, setup: dict[str, Any], control_plane: ControlPlane
) -> None:
    machine = setup["machine"]
    readonly = bearer(mint_token(control_plane, "admin@example.com", kind="readonly", org="acme"))
    assert not _can_exec(api, readonly, machine)
    assert _can_read_logs(api, readonly)
    # A member's app token, after members were given exec, still cannot reach
    # another app, nor change who holds exec.
    assert _set(api, setup["tokens"]["admin"], grant=["member=machines:exec"]).is_success
    member_app = bearer(
        mint_token(control_plane, "mo@example.com", kind="app", app="web", org="acme")
    )
    assert _can_exec(api, member_app, machine)
    assert _set(api, member_app, revoke=["admin=machines:exec"]).status_code == 403


def test_an_org_admin_grants_and_revokes_per_role(
    api: TestClient, setup: dict[str, Any], control_plane: ControlPlane
) -> None:
    admin = setup["tokens"]["admin"]
    r = _set(api, admin, grant=["member=machines:exec"], revoke=["member=logs:read"])
    assert r.status_code == 200, r.text
    assert r.json()["permissions"] == {"logs:read": ["admin"], "machines:exec": ["member", "admin"]}
    assert api.get("/v1/orgs/acme", headers=admin).json()["permissions"] == r.json()["permissions"]
    # Effective at once, for tokens minted before the change.
    assert _who(api, setup) == {
        "admin": (True, True),
        "member": (False, True),
        "viewer": (False, False),
    }
    # Granting to viewers reaches every role above them; revoking from admin leaves none.
    assert _set(api, admin, grant=["viewer=logs:read"], revoke=["admin=machines:exec"]).is_success
    assert _who(api, setup) == {
        "admin": (True, False),
        "member": (True, False),
        "viewer": (True, False),
    }
    refused = api.post(
        f"/v1/apps/web/machines/{setup['machine']}/exec", headers=admin, json={"cmd": ["id"]}
    )
    assert "granted to no role" in refused.json()["detail"]
    # Back to the defaults: the rows go away.
    assert _set(api, admin, grant=["admin=machines:exec"], revoke=["viewer=logs:read"]).is_success
    with control_plane.db.read() as session:
        assert session.execute(select(OrgGrant)).all() == []
    with control_plane.db.read() as session:
        events = session.execute(
            select(AuditEvent).where(AuditEvent.action == "org.set_grants")
        ).scalars()
        details = [json.loads(e.detail) for e in events]
    assert len(details) == 3
    assert details[0]["from"]["machines:exec"] == ["admin"]
    assert details[0]["to"]["machines:exec"] == ["member", "admin"]


def test_only_an_org_admin_changes_grants_and_only_the_configurable_ones(
    api: TestClient,
    setup: dict[str, Any],
    installation: Installation,
    control_plane: ControlPlane,
) -> None:
    tokens = setup["tokens"]
    for role in ("member", "viewer"):
        r = _set(api, tokens[role], grant=[f"{role}=machines:exec"])
        assert r.status_code == 403, r.text
    # An admin of another organization does not even see this one.
    h = installation.headers
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    eve = bearer(mint_token(control_plane, "eve@example.com", kind="org", org="globex"))
    assert _set(api, eve, grant=["viewer=machines:exec"]).status_code == 404
    admin = tokens["admin"]
    for bad in (
        {"grant": ["viewer=members:write"]},  # not configurable: no escalation through grants
        {"grant": ["viewer=orgs:write"]},
        {"grant": ["viewer=secrets:read"]},
        {"grant": ["viewer=no:such"]},
        {"grant": ["member=machines:exec"], "revoke": ["member=machines:exec"]},
        {"grant": ["member=logs:read"], "revoke": ["admin=logs:read"]},
        {},
    ):
        r = _set(api, admin, **bad)
        assert r.status_code == 422, (bad, r.text)
    r = api.patch(
        "/v1/orgs/acme",
        headers=admin,
        json={"grant": [{"role": "owner", "permission": "logs:read"}]},
    )
    assert r.status_code == 422
    with control_plane.db.read() as session:
        assert session.execute(select(OrgGrant)).all() == []
    assert _who(api, setup)["viewer"] == (False, False)


def _db_bytes(cp: ControlPlane) -> bytes:
    data = cp.settings.data_dir
    return b"".join(p.read_bytes() for p in data.glob("hangar.db*") if p.is_file())


def test_exec_audit_keeps_program_argc_and_digest_never_arguments(
    api: TestClient, setup: dict[str, Any], control_plane: ControlPlane
) -> None:
    admin = setup["tokens"]["admin"]
    cmd = ["psql", f"postgres://app:{CANARY}@db/app", "-c", "select 1"]
    r = api.post(f"/v1/apps/web/machines/{setup['machine']}/exec", headers=admin, json={"cmd": cmd})
    assert r.status_code == 200
    with control_plane.db.read() as session:
        (event,) = session.execute(
            select(AuditEvent).where(AuditEvent.action == "machine.exec")
        ).scalars()
    detail = json.loads(event.detail)
    digest = hashlib.sha256(
        json.dumps(cmd[1:], ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()
    assert detail == {"program": "psql", "argc": 4, "args_sha256": digest}
    listed = api.get("/v1/audit/events?org=acme&limit=1000", headers=admin).text
    assert CANARY not in listed and CANARY not in event.target
    if control_plane.db.is_sqlite:
        assert CANARY.encode() not in _db_bytes(control_plane)


def _runc_timeout(argv: list[str]) -> HangarError:
    return CommandError(["runc", "--root", "/run/x", "exec", "m", *argv], -1, "timed out after 1s")


def _echoing_timeout(argv: list[str]) -> HangarError:
    return WaitTimeout(f"{' '.join(argv)} did not finish", hint=f"retry {argv[-1]}")


def _agent_error(argv: list[str]) -> HangarError:
    return HangarError(f"exec failed: {argv!r}")


@pytest.mark.parametrize("failure", [_runc_timeout, _echoing_timeout, _agent_error])
def test_failed_exec_echoes_no_argument_into_answers_logs_or_audit(
    api: TestClient,
    setup: dict[str, Any],
    control_plane: ControlPlane,
    caplog: pytest.LogCaptureFixture,
    failure: Callable[[list[str]], HangarError],
) -> None:
    setup["host"].fail = failure
    admin = setup["tokens"]["admin"]
    caplog.set_level(logging.DEBUG)
    r = api.post(
        f"/v1/apps/web/machines/{setup['machine']}/exec",
        headers=admin,
        json={"cmd": ["sh", "-c", f"sleep 60; mysql -p{CANARY}"], "timeout": 1},
    )
    assert r.status_code >= 400
    assert CANARY not in r.text and "sh" in r.json()["detail"]
    assert CANARY not in caplog.text
    assert CANARY not in api.get("/v1/audit/events?org=acme&limit=1000", headers=admin).text
    if control_plane.db.is_sqlite:
        assert CANARY.encode() not in _db_bytes(control_plane)


def test_exec_relayed_to_another_host_echoes_no_argument(
    api: TestClient, setup: dict[str, Any], control_plane: ControlPlane
) -> None:
    """The machine's host answers with an error quoting the command; it is not passed on."""
    host_id = setup["host"].host_id
    control_plane.local = FakeHost("host_elsewhere")

    def agent() -> None:
        while not control_plane.execs.has_pending(host_id):
            threading.Event().wait(0.01)
        (order,) = control_plane.execs.pending(host_id)
        control_plane.execs.finish(host_id, order.id, None, f"`{' '.join(order.cmd)}` failed")

    relay = threading.Thread(target=agent)
    relay.start()
    r = api.post(
        f"/v1/apps/web/machines/{setup['machine']}/exec",
        headers=setup["tokens"]["admin"],
        json={"cmd": ["env", f"PGPASSWORD={CANARY}", "psql"], "timeout": 5},
    )
    relay.join()
    assert r.status_code == 409 and CANARY not in r.text

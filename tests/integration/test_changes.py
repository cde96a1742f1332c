"""One way to change state: the block's writes and their audit event commit together,
and the loops are woken only after the commit. Exec and logs reach this host's
machines in-process and other hosts' through their agents; leases hold."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hangar.audit.log import AuditContext
from hangar.contract.execs import ExecResult
from hangar.controlplane.changes import change
from hangar.controlplane.execs import run_in_machine
from hangar.controlplane.logs import log_sources
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.errors import StoreError
from hangar.images.oci import build_layout, layer_tar
from hangar.store.tables import App, AuditEvent, Org
from tests.conftest import Installation
from tests.uploads import upload_layout

CTX = AuditContext(actor="admin@example.com", token_id=None, request_id=None, client_addr=None)


def _orgs(cp: ControlPlane) -> set[str]:
    with cp.db.read() as session:
        return set(session.execute(select(Org.name)).scalars())


def _events(cp: ControlPlane, action: str) -> list[AuditEvent]:
    with cp.db.read() as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars()
        )


def _add_org(session: Any, name: str) -> None:
    import datetime as dt

    session.add(Org(id=f"org_{name}", name=name, created_at=dt.datetime.now(dt.UTC)))


def test_a_change_commits_with_its_event_then_wakes(control_plane: ControlPlane) -> None:
    seen: list[tuple[set[str], int]] = []
    # The loops must find the change and its event committed when they wake.
    control_plane.wake = lambda: seen.append(
        (_orgs(control_plane), len(_events(control_plane, "test.change")))
    )
    with change(control_plane, CTX, org_id=None, action="test.change") as (session, event):
        _add_org(session, "initech")
        event.target = "initech"
        event.detail["why"] = "a test"
    assert seen == [({"acme", "initech"}, 1)]
    (recorded,) = _events(control_plane, "test.change")
    assert recorded.target == "initech" and '"why": "a test"' in recorded.detail
    assert recorded.actor == "admin@example.com" and recorded.outcome == "success"


def test_a_failed_block_changes_nothing_and_records_nothing(control_plane: ControlPlane) -> None:
    woken: list[bool] = []
    control_plane.wake = lambda: woken.append(True)
    with (
        pytest.raises(RuntimeError),
        change(control_plane, CTX, org_id=None, action="test.change", target="x") as (session, _),
    ):
        _add_org(session, "initech")
        raise RuntimeError("refused")
    assert "initech" not in _orgs(control_plane)
    assert _events(control_plane, "test.change") == [] and woken == []


def test_no_event_no_change(control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[bool] = []
    control_plane.wake = lambda: woken.append(True)

    def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("the audit trail cannot be written")

    monkeypatch.setattr(control_plane.audit, "record", broken)
    with (
        pytest.raises(StoreError),
        change(control_plane, CTX, org_id=None, action="test.change", target="x") as (session, _),
    ):
        _add_org(session, "initech")
    assert "initech" not in _orgs(control_plane) and woken == []


def test_an_event_needs_a_target_and_quiet_changes_do_not_wake(
    control_plane: ControlPlane,
) -> None:
    woken: list[bool] = []
    control_plane.wake = lambda: woken.append(True)
    with (
        pytest.raises(ValueError, match="names no target"),
        change(control_plane, CTX, org_id=None, action="test.change") as (session, _),
    ):
        _add_org(session, "initech")
    assert "initech" not in _orgs(control_plane)
    with change(control_plane, CTX, org_id=None, action="test.quiet", target="q", wake=False) as (
        session,
        _,
    ):
        _add_org(session, "hooli")
    assert "hooli" in _orgs(control_plane) and len(_events(control_plane, "test.quiet")) == 1
    assert woken == []


class FakeHost:
    """The contract's HostMachines, standing in for this process's own agent."""

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.ran: list[tuple[str, list[str]]] = []

    def exec(self, machine_id: str, argv: list[str], *, timeout: float) -> ExecResult:
        self.ran.append((machine_id, argv))
        return ExecResult(0, b"here\n", b"")

    def logs(self, machine_id: str) -> list[dict[str, Any]]:
        return [{"ts": "t", "stream": "stdout", "line": f"{machine_id} here"}]

    def logs_since(
        self, machine_id: str, cursor: dict[str, int] | None, budget: int
    ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
        if cursor is not None:
            return [], cursor
        return self.logs(machine_id), {"inode": 0, "offset": 1}


@pytest.fixture
def one_machine(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> tuple[App, str, str]:
    """App web with one one-off machine on host h1: (app, machine id, host id)."""
    with control_plane.db.write() as session:
        host_id = register_local_host(session, name="h1", region="local").id
    build_layout(tmp_path / "img", [layer_tar([])], tag="one")
    h = installation.headers
    assert api.post("/v1/apps", headers=h, json={"name": "web"}).status_code == 201
    made = api.post(
        "/v1/apps/web/machines",
        headers=h,
        json={"image": upload_layout(api, h, "web", tmp_path / "img", "one")},
    )
    assert made.status_code == 201, made.text
    with control_plane.db.read() as session:
        app = session.execute(select(App).where(App.name == "web")).scalar_one()
    return app, made.json()["id"], host_id


def test_exec_and_logs_run_here_only_for_this_hosts_machines(
    control_plane: ControlPlane, one_machine: tuple[App, str, str]
) -> None:
    app, machine_id, host_id = one_machine
    here = FakeHost(host_id)
    control_plane.local = here
    result = run_in_machine(control_plane, CTX, app, machine_id, ["id"], timeout=5)
    assert result.stdout == b"here\n" and here.ran == [(machine_id, ["id"])]
    (source,) = log_sources(control_plane, app)
    assert source.read() == here.logs(machine_id)
    assert len(_events(control_plane, "machine.exec")) == 1

    # Another host's machine: the command waits for that host's agent.
    control_plane.local = FakeHost("host_elsewhere")

    def agent() -> None:
        while not control_plane.execs.has_pending(host_id):
            threading.Event().wait(0.01)
        (order,) = control_plane.execs.pending(host_id)
        control_plane.execs.finish(host_id, order.id, ExecResult(3, b"", b"there\n"))

    relay = threading.Thread(target=agent)
    relay.start()
    result = run_in_machine(control_plane, CTX, app, machine_id, ["id"], timeout=5)
    relay.join()
    assert (result.exit_code, result.stderr) == (3, b"there\n")
    (source,) = log_sources(control_plane, app)
    assert source.read() == []  # nothing shipped yet


def test_a_lease_holds_until_its_nonce_is_shown(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    one_machine: tuple[App, str, str],
) -> None:
    _, machine_id, _ = one_machine
    h = installation.headers
    url = f"/v1/apps/web/machines/{machine_id}"
    lease = api.post(f"{url}/lease", headers=h, json={"ttl": 60})
    assert lease.status_code == 201
    nonce = lease.json()["nonce"]
    refused = api.post(f"{url}/restart", headers=h)
    assert refused.status_code == 409 and "Hangar-Lease-Nonce" in refused.text
    wrong = api.post(f"{url}/restart", headers={**h, "Hangar-Lease-Nonce": nonce + "x"})
    assert wrong.status_code == 409
    held = {**h, "Hangar-Lease-Nonce": nonce}
    assert api.post(f"{url}/restart", headers=held).status_code == 200
    assert api.delete(f"{url}/lease", headers=held).status_code == 204
    assert api.post(f"{url}/restart", headers=h).status_code == 200
    with control_plane.db.read() as session:
        count = session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action.in_(("machine.lease", "machine.lease_release")))
        ).scalar_one()
    assert count == 2
